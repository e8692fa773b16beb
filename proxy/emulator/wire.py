"""Clerk's Backend API wire format, as the emulator speaks it. Pure: no I/O, no clock.

Answers are snake_case JSON with millisecond timestamps; every refusal is Clerk's error
envelope `{"errors": [{"message", "long_message", "code", "meta"?}], "clerk_trace_id"}`.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

TokenKind = Literal["m2m", "oauth", "api_key"]


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: Mapping[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)


class Refused(Exception):
    """A refusal found before the answer: raised from any depth, answered by the route."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.status)
        self.answer = answer


@dataclass(slots=True)
class TokenRecord:
    """One opaque token. Mutable: revocation and `last_used_at` change it in place."""

    kind: TokenKind
    id: str
    subject: str
    scopes: list[str]
    claims: dict[str, Any] | None
    expiration_ms: int | None
    created_ms: int
    updated_ms: int
    revoked: bool = False
    revocation_reason: str | None = None
    last_used_ms: int | None = None
    client_id: str = ""
    name: str = ""
    created_by: str | None = None

    def body(self, now_ms: int) -> dict[str, Any]:
        """The answer's object, with exactly the fields the spec's schema allows."""
        common: dict[str, Any] = {
            "id": self.id,
            "subject": self.subject,
            "scopes": list(self.scopes),
            "claims": self.claims,
            "revoked": self.revoked,
            "revocation_reason": self.revocation_reason,
            "expired": self.expiration_ms is not None and self.expiration_ms <= now_ms,
            "expiration": self.expiration_ms,
            "last_used_at": self.last_used_ms,
            "created_at": self.created_ms,
            "updated_at": self.updated_ms,
        }
        if self.kind == "m2m":
            return {"object": "machine_to_machine_token", **common}
        if self.kind == "oauth":
            # The OAuth answer has neither claims nor last_used_at (additionalProperties: false).
            del common["claims"], common["last_used_at"]
            return {"object": "clerk_idp_oauth_access_token", "client_id": self.client_id, **common}
        return {
            "object": "api_key",
            "type": "api_key",
            "name": self.name,
            "description": None,
            "created_by": self.created_by,
            **common,
        }


def clerk_error(
    status: int,
    code: str,
    message: str,
    long_message: str,
    *,
    meta: Mapping[str, Any] | None = None,
) -> Answer:
    error: dict[str, Any] = {"message": message, "long_message": long_message, "code": code}
    if meta:
        error["meta"] = dict(meta)
    return Answer(status, {"errors": [error], "clerk_trace_id": secrets.token_hex(16)})


NOT_FOUND: Final = ("resource_not_found", "not found", "Resource not found")


def not_found() -> Answer:
    return clerk_error(404, *NOT_FOUND)


def unauthenticated(long_message: str) -> Answer:
    return clerk_error(401, "authentication_invalid", "Invalid authentication", long_message)


def bad_instance_key() -> Answer:
    return unauthenticated(
        "The provided Clerk Secret Key is invalid. Make sure that your Clerk Secret Key is correct."
    )


def bad_machine_key() -> Answer:
    return clerk_error(
        401,
        "machine_secret_key_invalid",
        "Invalid machine secret key",
        "The provided Machine Secret Key is invalid. Make sure that your Machine Secret Key is correct.",
    )


def _param(name: str, code: str, message: str, long_message: str | None = None) -> Answer:
    return clerk_error(400, code, message, long_message or message, meta={"param_name": name})


def param_missing(name: str) -> Answer:
    return _param(name, "form_param_missing", f"{name} must be included.")


def param_invalid(name: str, why: str) -> Answer:
    return _param(name, "form_param_format_invalid", f"{name} is invalid.", f"{name} {why}.")


def param_unknown(name: str) -> Answer:
    return _param(name, "form_param_unknown", f"{name} is not a valid parameter for this request.")


def forbidden(long_message: str) -> Answer:
    return clerk_error(403, "authorization_invalid", "Unauthorized request", long_message)


def machine_key_required() -> Answer:
    return unauthenticated(
        "This endpoint must be authenticated with a Machine Secret Key, not an instance key."
    )


def parse_body(raw: bytes, allowed: frozenset[str] | None = None) -> dict[str, Any]:
    """A JSON object body; an empty body is an empty object (Clerk treats it as no params).
    `allowed`: the body schema has additionalProperties: false, and these are its keys."""
    try:
        body = json.loads(raw) if raw.strip() else {}
        why = "" if isinstance(body, dict) else "not a JSON object"
    except ValueError:
        why = "not valid JSON"
    if why:
        raise Refused(
            clerk_error(
                400,
                "form_param_format_invalid",
                "malformed request body",
                f"The request body is {why}.",
            )
        )
    unknown = sorted(set(body) - allowed) if allowed is not None else []
    if unknown:
        raise Refused(param_unknown(unknown[0]))
    return body


def bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, key = authorization.strip().partition(" ")
    return key.strip() or None if scheme.lower() == "bearer" else None
