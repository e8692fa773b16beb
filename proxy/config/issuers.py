"""`issuers:` entries → `Issuer`s: OAuth 2.0 issuers beside Clerk, with presets for the
common ones so most users write three lines (docs/configuration.md, "Other issuers").

The presets hold what each issuer really puts in its client-credentials access tokens
(sources in docs/verification.md): where the client id is, how a machine token is
marked, which claim holds the granted scopes, and the header `typ` it sends.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Final
from urllib.parse import urlsplit

from proxy.config.model import ClaimMapping, Introspection, Issuer, MachineRule
from proxy.config.values import Reader, parse_duration, str_list, str_value

# What `proxy.auth.jws` can verify (kept equal to its table by a test).
ALGORITHMS: Final = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
CLERK_PREFIXES: Final = ("mt_", "oat_", "ak_")
AUTH_METHODS: Final = ("client_secret_basic", "client_secret_post")

PRESETS: Final[dict[str, dict[str, Any]]] = {
    # RFC 9068: typ at+jwt, client_id claim, sub = client_id when no user is involved.
    "rfc9068": {
        "algorithms": ("RS256", "PS256", "ES256", "EdDSA"),
        "token_types": ("at+jwt", "application/at+jwt"),
        "claims": ClaimMapping(),
    },
    # authgear-server EncodeClientAccessToken: typ at+jwt, RS256, client_id, scope,
    # sub = "client_id_" + client_id, aud = the resource URI.
    "authgear": {
        "algorithms": ("RS256",),
        "token_types": ("at+jwt",),
        "claims": ClaimMapping(
            client_id=("client_id",),
            machine=(MachineRule(sub="client_id_{client_id}"),),
            scopes=("scope",),
        ),
    },
    # Auth0's default profile (typ JWT, azp, gty "client-credentials", sub "<id>@clients")
    # and its RFC 9068 profile (typ at+jwt, client_id).
    "auth0": {
        "algorithms": ("RS256", "PS256"),
        "token_types": ("JWT", "at+jwt"),
        "claims": ClaimMapping(
            client_id=("client_id", "azp"),
            machine=(
                MachineRule(claim="gty", value="client-credentials"),
                MachineRule(sub="{client_id}@clients"),
            ),
            scopes=("scope",),
            forward=("org_id",),
        ),
    },
    # Keycloak service accounts: azp = client, a client id claim set only for service
    # accounts (`client_id`, `clientId` before), payload typ "Bearer" (ID tokens say "ID").
    "keycloak": {
        "algorithms": ("RS256",),
        "token_types": ("JWT", "at+jwt"),
        "claims": ClaimMapping(
            client_id=("client_id", "clientId", "azp"),
            machine=(MachineRule(claim="client_id"), MachineRule(claim="clientId")),
            scopes=("scope",),
            require=(("typ", "Bearer"),),
        ),
    },
    # Kinde M2M: azp = client, gty ["client_credentials"]; `scope` is what was granted
    # (`scp` only what was requested), org_code for org-scoped apps.
    "kinde": {
        "algorithms": ("RS256",),
        "token_types": ("JWT", ""),
        "claims": ClaimMapping(
            client_id=("azp",),
            machine=(MachineRule(claim="gty", value="client_credentials"),),
            scopes=("scope",),
            forward=("org_code",),
        ),
    },
}

_ISSUER_KEYS = {
    "name",
    "preset",
    "issuer",
    "audiences",
    "jwks_url",
    "algorithms",
    "token_types",
    "leeway_seconds",
    "claims",
    "jwks_cache_seconds",
    "jwks_min_refetch_seconds",
    "timeout",
    "introspection",
}
_CLAIM_KEYS = {"client_id", "machine", "scopes", "forward", "require"}
_INTROSPECTION_KEYS = {
    "endpoint",
    "client_id",
    "client_secret",
    "client_secret_file",
    "auth_method",
    "token_prefix",
}
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def issuer_url(value: Any, *, strip: bool = True) -> str:
    """An https URL (http only to a loopback host: tests and the emulator), no query or
    fragment. `strip=False` keeps it byte for byte (an `iss` is compared exactly)."""
    s = str_value(value)
    parts = urlsplit(s)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"bad URL {s!r}: expected https:// with a host")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ValueError(f"bad URL {s!r}: https is required (http only to a loopback address)")
    if parts.query or parts.fragment:
        raise ValueError(f"bad URL {s!r}: no query or fragment allowed")
    return s.rstrip("/") if strip else s


def _machine_rules(r: Reader, raw: Any, key: str) -> tuple[MachineRule, ...] | None:
    if not isinstance(raw, list) or not raw:
        r.problem(key, "expected a non-empty list of {sub: …} or {claim: …, value?: …}")
        return None
    rules: list[MachineRule] = []
    for i, item in enumerate(raw):
        k = f"{key}[{i}]"
        sec = r.section(item, k, {"sub", "claim", "value"})
        if not isinstance(item, dict):
            continue
        sub, claim = sec.get("sub"), sec.get("claim")
        value = sec.get("value")
        if (sub is None) == (claim is None) or (sub is not None and value is not None):
            r.problem(k, "give either sub (a template with {client_id}) or claim (and value)")
            continue
        if sub is not None and (not isinstance(sub, str) or "{client_id}" not in sub):
            r.problem(f"{k}.sub", "must be a string containing {client_id}")
            continue
        rules.append(
            MachineRule(
                sub=sub,
                claim=None if claim is None else str(claim),
                value=None if value is None else str(value),
            )
        )
    return tuple(rules)


def _claims(r: Reader, raw: Any, key: str, base: ClaimMapping) -> ClaimMapping:
    sec = r.section(raw, key, _CLAIM_KEYS)
    machine = base.machine
    if "machine" in sec:
        machine = _machine_rules(r, sec["machine"], f"{key}.machine") or base.machine
    require = base.require
    if "require" in sec:
        req = sec["require"]
        if isinstance(req, dict) and all(isinstance(v, str) for v in req.values()):
            require = tuple((str(k), v) for k, v in req.items())
        else:
            r.problem(f"{key}.require", "expected a mapping of claim names to string values")
    out = ClaimMapping(
        client_id=r.get(sec, key, "client_id", str_list, base.client_id),
        machine=machine,
        scopes=r.get(sec, key, "scopes", str_list, base.scopes),
        forward=r.get(sec, key, "forward", str_list, base.forward),
        require=require,
    )
    for name in ("client_id", "scopes"):
        if not getattr(out, name):
            r.problem(f"{key}.{name}", "must name at least one claim")
    return out


def _introspection(r: Reader, raw: Any, key: str) -> Introspection | None:
    if raw is None:
        return None
    sec = r.section(raw, key, _INTROSPECTION_KEYS)
    endpoint = r.get(sec, key, "endpoint", issuer_url, "")
    method = r.get(sec, key, "auth_method", str_value, "client_secret_basic")
    if method not in AUTH_METHODS:
        r.problem(f"{key}.auth_method", f"must be one of {', '.join(AUTH_METHODS)}")
    prefix = r.get(sec, key, "token_prefix", str_value, "")
    if prefix.startswith(CLERK_PREFIXES):
        r.problem(f"{key}.token_prefix", "mt_, oat_ and ak_ tokens are Clerk's")
    client_id = r.required(sec, key, "client_id")
    return Introspection(
        client_id=str_value(client_id) if client_id is not None else "",
        client_secret=r.secret(sec, key, "client_secret", required=True),
        endpoint=endpoint,
        auth_method=method,
        token_prefix=prefix,
    )


def parse_issuer(r: Reader, raw: Any, key: str) -> Issuer | None:
    if not isinstance(raw, dict):
        r.problem(key, f"expected a mapping, got {type(raw).__name__}")
        return None
    sec = r.section(raw, key, _ISSUER_KEYS)
    name = str(r.required(sec, key, "name") or "")
    if name and (not _NAME.fullmatch(name) or name == "clerk"):
        r.problem(f"{key}.name", "must be lowercase letters, digits, - or _, and not 'clerk'")
    preset_name = r.get(sec, key, "preset", str_value, "rfc9068")
    if preset_name not in PRESETS:
        r.problem(f"{key}.preset", f"unknown preset; one of {', '.join(sorted(PRESETS))}")
        preset_name = "rfc9068"
    preset = PRESETS[preset_name]
    raw_issuer = r.required(sec, key, "issuer")
    issuer = ""
    if raw_issuer is not None:
        try:
            issuer = issuer_url(raw_issuer, strip=False)
        except (ValueError, TypeError) as exc:
            r.problem(f"{key}.issuer", str(exc))
    if preset_name == "auth0" and issuer and not issuer.endswith("/"):
        r.problem(
            f"{key}.issuer",
            f"Auth0's tokens say iss {issuer + '/'!r} (with the trailing slash); "
            "write it exactly as the tokens do",
        )
    audiences: tuple[str, ...] = r.get(sec, key, "audiences", str_list, ())
    if not audiences:
        r.problem(
            f"{key}.audiences",
            "is required: the identifiers of this API at the issuer (a token for another "
            "API of the same issuer must not pass)",
        )
    algorithms = r.get(sec, key, "algorithms", str_list, preset["algorithms"])
    bad = [a for a in algorithms if a not in ALGORITHMS]
    if bad or not algorithms:
        r.problem(
            f"{key}.algorithms",
            f"not allowed: {', '.join(bad) or '(empty)'}; choose from {', '.join(ALGORITHMS)} "
            "(never none or HS*)",
        )
    cache = r.get(sec, key, "jwks_cache_seconds", parse_duration, 3600.0)
    refetch = r.get(sec, key, "jwks_min_refetch_seconds", parse_duration, 30.0)
    if refetch <= 0 or cache < refetch:
        r.problem(key, "need 0 < jwks_min_refetch_seconds <= jwks_cache_seconds")
    return Issuer(
        name=name,
        issuer=issuer,
        audiences=audiences,
        preset=preset_name,
        jwks_url=r.get(sec, key, "jwks_url", lambda v: issuer_url(v, strip=False), ""),
        algorithms=tuple(a for a in algorithms if a in ALGORITHMS),
        token_types=r.get(sec, key, "token_types", str_list, preset["token_types"]),
        leeway_seconds=r.get(sec, key, "leeway_seconds", parse_duration, 5.0),
        claims=_claims(r, sec.get("claims"), f"{key}.claims", preset["claims"]),
        jwks_cache_seconds=cache,
        jwks_min_refetch_seconds=refetch,
        timeout=r.get(sec, key, "timeout", parse_duration, 5.0),
        introspection=_introspection(r, sec.get("introspection"), f"{key}.introspection"),
    )


def parse_issuers(r: Reader, raw: Any, clerk_issuer: str) -> tuple[Issuer, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        r.problem("issuers", f"expected a list, got {type(raw).__name__}")
        return ()
    out: list[Issuer] = []
    names: set[str] = set()
    urls: set[str] = set()
    catch_all = 0
    for i, item in enumerate(raw):
        key = f"issuers[{i}]"
        issuer = parse_issuer(r, item, key)
        if issuer is None:
            continue
        if issuer.name in names:
            r.problem(f"{key}.name", f"duplicate issuer name {issuer.name!r}")
        if issuer.issuer in urls:
            r.problem(f"{key}.issuer", "another entry already serves this issuer")
        if clerk_issuer and issuer.issuer.rstrip("/") == clerk_issuer:
            r.problem(f"{key}.issuer", "this is clerk.issuer: Clerk's tokens go to clerk")
        names.add(issuer.name)
        urls.add(issuer.issuer)
        if issuer.introspection is not None and not issuer.introspection.token_prefix:
            catch_all += 1
            if catch_all > 1:
                r.problem(
                    f"{key}.introspection.token_prefix",
                    "only one issuer may take opaque tokens without a prefix (an opaque "
                    "token must never be sent to an issuer that did not make it)",
                )
        out.append(issuer)
    return tuple(out)
