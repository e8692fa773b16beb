"""Route policy: which route a request is, and whether its principal may pass. Pure.

The path is normalized *before* matching and the normalized form is what gets forwarded,
so the upstream always receives exactly the path the policy judged. Anything that two
parsers could read two ways (encoded `/` or `\\`, NUL, `;`, `#`, climbing above root)
is refused rather than guessed at.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from proxy.config.model import IssuerRule, Route
from proxy.config.routes import MACHINE_PREFIX
from proxy.core import errors
from proxy.core.errors import ProxyError, bad_request
from proxy.core.principal import Principal

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
# Escapes that would change how the path splits into segments, or that downstream
# parsers disagree on: refused instead of decoded.
_REFUSED_ESCAPES = frozenset({"2F", "5C", "00", "3B", "23"})
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f\\;#]")


def _decode_unreserved(m: re.Match[str]) -> str:
    hexpair = m.group(1).upper()
    if hexpair in _REFUSED_ESCAPES:
        raise bad_request("the path contains an encoded character that is not allowed")
    char = chr(int(hexpair, 16))
    return char if char in _UNRESERVED else f"%{hexpair}"


def normalize_path(raw_path: str) -> str:
    """RFC 3986 normalization of an origin-form path, refusing ambiguity."""
    if not raw_path.startswith("/"):
        raise bad_request("the request target must be an absolute path")
    if _BAD_CHARS.search(raw_path):
        raise bad_request("the path contains a character that is not allowed")
    if "%" in raw_path:
        if re.search(r"%(?![0-9A-Fa-f]{2})", raw_path):
            raise bad_request("the path contains a malformed percent-escape")
        raw_path = _PCT.sub(_decode_unreserved, raw_path)
    out: list[str] = []
    segments = raw_path.split("/")[1:]
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == "" and not last:
            continue  # merge repeated slashes
        if segment == ".":
            if last:
                out.append("")
            continue
        if segment == "..":
            if not out or out == [""]:
                raise bad_request("the path climbs above the root")
            out.pop()
            if last:
                out.append("")
            continue
        out.append(segment)
    return "/" + "/".join(out)


def compile_glob(pattern: str) -> re.Pattern[str]:
    """`*` within one segment, `**` any number of whole segments (including none)."""
    parts = pattern.split("/")[1:]
    regex = ""
    for i, part in enumerate(parts):
        if part == "**":
            # `/a/**` matches `/a`, `/a/` and `/a/x/y`.
            regex += "(?:/.*)?" if i == len(parts) - 1 else "(?:/[^/]*)*"
            continue
        regex += "/" + "[^/]*".join(re.escape(p) for p in part.split("*"))
    return re.compile(f"^{regex or '/'}$" if regex else "^/$")


class Resolved:
    """Where a request target goes. Immutable (`Final`). A plain class: compiled, it is
    made and read directly, where a NamedTuple's fields go through a descriptor lookup."""

    __slots__ = ("path", "query", "route")

    def __init__(self, route: Route, path: str, query: str | None) -> None:
        self.route: Final = route
        self.path: Final = path  # normalized; this is what is forwarded
        self.query: Final = query  # raw, untouched; None when the target had no '?'

    def __repr__(self) -> str:
        return f"Resolved({self.route.name!r}, {self.path!r}, {self.query!r})"


# Distinct (method, path) resolutions remembered; an API has few, a scanner many, so
# the memo is simply emptied when full.
MEMO_SIZE = 4096
MEMO_KEY_MAX = 256  # longer paths are resolved afresh: the memo stays under ~2 MB


class Policy:
    def __init__(self, routes: Sequence[Route], default_route: Route) -> None:
        self._routes = tuple((route, compile_glob(route.path)) for route in routes)
        self._default = default_route
        self._memo: dict[tuple[str, str], Resolved] = {}

    def match(self, method: str, path: str) -> Route:
        for route, regex in self._routes:
            if route.methods is not None and method not in route.methods:
                continue
            if regex.match(path):
                return route
        return self._default

    def resolve(self, method: str, raw_target: str) -> Resolved:
        path, sep, query = raw_target.partition("?")
        if sep and "#" in query:
            # A fragment is never part of a request target (RFC 9112 §3.2): aiohttp would
            # drop it, the fast path forward it; neither, it is refused.
            raise bad_request("a request target has no fragment ('#')")
        # Pure in (method, path), so memoized: only accepted paths are remembered, and
        # without a query the Resolved itself is the answer.
        known = self._memo.get((method, path))
        if known is None:
            normalized = normalize_path(path)
            known = Resolved(self.match(method, normalized), normalized, None)
            if len(path) <= MEMO_KEY_MAX:
                if len(self._memo) >= MEMO_SIZE:
                    self._memo.clear()
                self._memo[(method, path)] = known
        return Resolved(known.route, known.path, query) if sep else known

    def authorize(
        self, route: Route, principal: Principal, *, token_error: ProxyError | None = None
    ) -> None:
        if route.auth == "public":
            return
        if principal.is_anonymous:
            if route.auth == "required":
                raise token_error or ProxyError(
                    errors.TOKEN_MISSING, "this route requires a bearer token"
                )
            return
        rule = None
        if principal.issuer is not None or route.issuers is not None:
            rule = _issuer_rule(route, principal)
        listed: frozenset[str] | None = None
        if rule is not None:
            types = rule.principal_types or route.principal_types
            listed, held, what = rule.clients, principal.client_id, f"{principal.issuer} client"
            scopes = rule.scopes
        else:
            types, scopes = route.principal_types, route.scopes
            # Allow-lists name what Clerk asserts (a machine's id, an OAuth application's
            # client id); each narrows its own kind only.
            if principal.type == "machine":
                listed, held, what = route.machines, principal.id, "machine"
            elif principal.type == "oauth":
                listed, held, what = route.oauth_clients, principal.client_id, "OAuth application"
        if types is not None and principal.type not in types:
            raise ProxyError(
                errors.INSUFFICIENT_SCOPE,
                f"this route is for {', '.join(sorted(types))} principals, not {principal.type}",
                token_type=principal.token_type,
            )
        if listed is not None and held not in listed:
            raise ProxyError(
                errors.INSUFFICIENT_SCOPE,
                f"{what} {held} is not on this route's list of {what}s",
                token_type=principal.token_type,
            )
        if scopes and not principal.scopes.issuperset(scopes):
            missing = [s for s in scopes if s not in principal.scopes]
            raise ProxyError(
                errors.INSUFFICIENT_SCOPE,
                _lacking(principal, missing),
                scope=" ".join(scopes),
                token_type=principal.token_type,
            )


def _lacking(principal: Principal, missing: list[str]) -> str:
    """A scope refusal that fits the token: a Clerk M2M token's scopes are the ids of the
    machines it may call, so asking it for `scores:admin` is asking for what it can never
    carry — say that, not "lacks the scope" (which sends partners to the wrong fix)."""
    if principal.token_type == "m2m_token" and principal.issuer is None:
        foreign = [s for s in missing if not s.startswith(MACHINE_PREFIX)]
        if foreign:
            return (
                f"this route asks for {' '.join(foreign)}, which a Clerk M2M token never "
                "carries (its scopes are the ids of the machines it may call, mch_…): use an "
                "OAuth token or API key with that scope"
            )
    of = "" if principal.issuer is None else f" {principal.issuer}"
    return f"the token lacks the{of} scope(s): {' '.join(missing)}"


_NO_RULES: Final = IssuerRule()


def _issuer_rule(route: Route, principal: Principal) -> IssuerRule | None:
    """The route's rule for the principal's issuer; None for a Clerk principal (Clerk's
    route-level rules apply). Raises 403 where the route does not accept the issuer, or
    has only Clerk's rules: the same scope word from two issuers is not one permission."""
    name = principal.issuer or "clerk"
    rule: IssuerRule | None = None
    if route.issuers is not None:
        for listed, listed_rule in route.issuers:
            if listed == name:
                rule = listed_rule
                break
        else:
            accepted = ", ".join(n for n, _ in route.issuers)
            raise ProxyError(
                errors.ISSUER_NOT_ALLOWED,
                f"this route does not accept tokens of {name} (it accepts: {accepted})",
                token_type=principal.token_type,
            )
    if principal.issuer is None:
        return None
    if rule is None:
        if route.scopes or route.machines is not None or route.oauth_clients is not None:
            raise ProxyError(
                errors.INSUFFICIENT_SCOPE,
                f"this route's scopes and allow-lists are Clerk's; a token of {name} needs the "
                f"route to name its own (routes[].issuers.{name})",
                scope=" ".join(route.scopes) or None,
                token_type=principal.token_type,
            )
        return _NO_RULES
    return rule
