"""A validator for the subset of OpenAPI 3.0 Schema Objects that Clerk's pinned excerpt uses.

Why not `jsonschema`: OpenAPI 3.0 schemas are not JSON Schema (`nullable`, boolean
`exclusiveMinimum`), so a converter would be needed anyway; the excerpt uses a dozen
keywords, and a keyword this module does not know is an error, never silently skipped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

EXCERPT = Path(__file__).parent / "clerk_openapi" / "bapi-2026-05-12.excerpt.json"

# Keywords that say nothing about validity.
_ANNOTATIONS = frozenset({"default", "deprecated", "format", "title", "x-speakeasy-name-override"})
_KNOWN = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "enum",
        "pattern",
        "nullable",
        "items",
        "anyOf",
        "oneOf",
        "allOf",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "$ref",
    }
)


class SchemaError(Exception):
    """The schema uses something this validator does not implement."""


def load_spec(path: Path = EXCERPT) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def _resolve(spec: Mapping[str, Any], ref: str) -> Any:
    if not ref.startswith("#/"):
        raise SchemaError(f"only local $ref is supported: {ref}")
    node: Any = spec
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    raise SchemaError(f"unknown type {kind!r}")


def errors(
    spec: Mapping[str, Any], schema: Mapping[str, Any], value: Any, at: str = "$"
) -> list[str]:
    """Every way `value` breaks `schema` (empty: valid)."""
    unknown = set(schema) - _KNOWN - _ANNOTATIONS
    if unknown:
        raise SchemaError(f"{at}: unsupported keywords {sorted(unknown)}")
    if "$ref" in schema:
        return errors(spec, _resolve(spec, schema["$ref"]), value, at)
    if value is None:
        # OpenAPI 3.0: null is valid only where the schema says nullable (or has no type).
        ok = schema.get("nullable", False) or not ({"type", "enum"} & set(schema))
        return [] if ok else [f"{at}: null is not allowed"]
    found: list[str] = []
    kind = schema.get("type")
    if kind is not None and not _type_ok(kind, value):
        return [f"{at}: expected {kind}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{at}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            found.append(f"{at}: {value!r} does not match {schema['pattern']}")
        if len(value) < schema.get("minLength", 0):
            found.append(f"{at}: shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            found.append(f"{at}: longer than {schema['maxLength']}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema:
            low = schema["minimum"]
            if value < low or (schema.get("exclusiveMinimum") is True and value == low):
                found.append(f"{at}: {value} is below the minimum {low}")
        if "maximum" in schema:
            high = schema["maximum"]
            if value > high or (schema.get("exclusiveMaximum") is True and value == high):
                found.append(f"{at}: {value} is above the maximum {high}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                found.append(f"{at}: required property {name!r} is missing")
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in props:
                found += errors(spec, props[name], item, f"{at}.{name}")
            elif extra is False:
                found.append(f"{at}: property {name!r} is not allowed")
            elif isinstance(extra, dict):
                found += errors(spec, extra, item, f"{at}.{name}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            found += errors(spec, schema["items"], item, f"{at}[{i}]")
    for sub in schema.get("allOf", []):
        found += errors(spec, sub, value, at)
    if "anyOf" in schema:
        branches = [errors(spec, sub, value, at) for sub in schema["anyOf"]]
        if all(branches):
            found.append(f"{at}: matches no anyOf branch ({'; '.join(b[0] for b in branches)})")
    if "oneOf" in schema:
        matching = sum(not errors(spec, sub, value, at) for sub in schema["oneOf"])
        if matching != 1:
            found.append(f"{at}: matches {matching} oneOf branches, not exactly one")
    return found


def operation(spec: Mapping[str, Any], method: str, path: str) -> Mapping[str, Any]:
    return dict(spec["paths"][path][method.lower()])


def response_schema(
    spec: Mapping[str, Any], method: str, path: str, status: int
) -> Mapping[str, Any]:
    """The JSON schema of one documented answer; KeyError when the status is not documented."""
    response = operation(spec, method, path)["responses"][str(status)]
    if "$ref" in response:
        response = _resolve(spec, response["$ref"])
    return dict(response["content"]["application/json"]["schema"])


def request_schema(spec: Mapping[str, Any], method: str, path: str) -> Mapping[str, Any]:
    return dict(
        operation(spec, method, path)["requestBody"]["content"]["application/json"]["schema"]
    )
