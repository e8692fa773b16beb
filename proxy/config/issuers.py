"""`issuers:` entries → `Issuer`s: OAuth 2.0 issuers beside Clerk, with presets for the
common ones so most users write three lines (docs/configuration.md, "Other issuers").

The presets hold what each issuer really puts in its client-credentials access tokens
(sources in docs/verification.md): where the client id is, how a machine token is
marked, which claim holds the granted scopes, and the header `typ` it sends.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any, Final

from proxy.config.keys import one_of
from proxy.config.model import ClaimMapping, Issuer, MachineRule
from proxy.config.reader import Reader
from proxy.config.values import issuer_url, str_list

__all__ = ["ALGORITHMS", "CLERK_PREFIXES", "PRESETS", "issuer_url", "parse_issuers"]

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

_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_PRESET: Final = one_of(*PRESETS, what="preset")


def _machine_rules(r: Reader, raw: Any, key: str) -> tuple[MachineRule, ...] | None:
    if not isinstance(raw, list) or not raw:
        r.problem(key, "expected a non-empty list of {sub: …} or {claim: …, value?: …}")
        return None
    rules: list[MachineRule] = []
    for i, item in enumerate(raw):
        k = f"{key}[{i}]"
        rule = r.read(MachineRule, item, k)
        if not isinstance(item, dict):
            continue
        sub, claim, value = rule.sub, rule.claim, rule.value
        if (sub is None) == (claim is None) or (sub is not None and value is not None):
            r.problem(k, "give either sub (a template with {client_id}) or claim (and value)")
        elif sub is not None and "{client_id}" not in sub:
            r.problem(f"{k}.sub", "must be a string containing {client_id}")
        else:
            rules.append(rule)
    return tuple(rules)


def _claims(r: Reader, raw: Any, key: str, base: ClaimMapping) -> ClaimMapping:
    sec = raw if isinstance(raw, dict) else {}
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
    out = r.read(ClaimMapping, raw, key, base=base, machine=machine, require=require)
    for name in ("client_id", "scopes"):
        if not getattr(out, name):
            r.problem(f"{key}.{name}", "must name at least one claim")
    return out


def parse_issuer(r: Reader, raw: Any, key: str) -> Issuer | None:
    if not isinstance(raw, dict):
        r.problem(key, f"expected a mapping, got {type(raw).__name__}")
        return None
    preset_name = r.get(raw, key, "preset", _PRESET.parse, "rfc9068")
    preset = PRESETS[preset_name]
    found = r.read(
        Issuer,
        raw,
        key,
        preset=preset_name,
        algorithms=r.get(raw, key, "algorithms", str_list, preset["algorithms"]),
        token_types=r.get(raw, key, "token_types", str_list, preset["token_types"]),
        claims=_claims(r, raw.get("claims"), f"{key}.claims", preset["claims"]),
    )
    if found.name and (not _NAME.fullmatch(found.name) or found.name == "clerk"):
        r.problem(f"{key}.name", "must be lowercase letters, digits, - or _, and not 'clerk'")
    if preset_name == "auth0" and found.issuer and not found.issuer.endswith("/"):
        r.problem(
            f"{key}.issuer",
            f"Auth0's tokens say iss {found.issuer + '/'!r} (with the trailing slash); "
            "write it exactly as the tokens do",
        )
    if not found.audiences:
        r.problem(
            f"{key}.audiences",
            "is required: the identifiers of this API at the issuer (a token for another "
            "API of the same issuer must not pass)",
        )
    bad = [a for a in found.algorithms if a not in ALGORITHMS]
    if bad or not found.algorithms:
        r.problem(
            f"{key}.algorithms",
            f"not allowed: {', '.join(bad) or '(empty)'}; choose from {', '.join(ALGORITHMS)} "
            "(never none or HS*)",
        )
    refetch, cache = found.jwks_min_refetch_seconds, found.jwks_cache_seconds
    if refetch <= 0 or cache < refetch:
        r.problem(key, "need 0 < jwks_min_refetch_seconds <= jwks_cache_seconds")
    spec = found.introspection
    if spec is not None and spec.token_prefix.startswith(CLERK_PREFIXES):
        r.problem(f"{key}.introspection.token_prefix", "mt_, oat_ and ak_ tokens are Clerk's")
    return replace(found, algorithms=tuple(a for a in found.algorithms if a in ALGORITHMS))


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
