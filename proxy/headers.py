"""Header rewriting for both legs of the proxy. Pure: headers in, headers out.

Order matters on the way up: hop-by-hop headers (including those a client names in
`Connection`) and every client-sent identity header are removed *before* the proxy adds
its own, so `Connection: X-Auth-Principal-Id` cannot delete what the proxy injects and a
client cannot smuggle a principal in under any spelling.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from multidict import CIMultiDict, istr

from .principal import Principal

# RFC 9110 §7.6.1 plus the legacy ones every proxy strips.
HOP_BY_HOP: frozenset[str] = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

# A client must not be able to turn a GET-only route into a POST (or vice versa) behind
# the policy's back: the upstream framework may honour these.
METHOD_OVERRIDE: frozenset[str] = frozenset(
    {"x-http-method-override", "x-http-method", "x-method-override"}
)

# Only meaningful from a trusted hop; from anyone else they are spoofable.
FORWARDING: frozenset[str] = frozenset(
    {"forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-real-ip"}
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

X_FORWARDED_FOR = istr("X-Forwarded-For")
X_FORWARDED_PROTO = istr("X-Forwarded-Proto")
X_FORWARDED_HOST = istr("X-Forwarded-Host")


def connection_tokens(values: Iterable[str]) -> frozenset[str]:
    """Header names listed in (possibly several) `Connection` headers, lower-cased."""
    names: set[str] = set()
    for value in values:
        for token in value.split(","):
            token = token.strip().lower()
            if token:
                names.add(token)
    return frozenset(names)


def identity_prefix(prefix: str) -> str:
    """The comparison form of the configured prefix: lower-case, `_` read as `-`."""
    return prefix.lower().replace("_", "-")


def is_identity_header(name: str, prefix_cmp: str) -> bool:
    return name.lower().replace("_", "-").startswith(prefix_cmp)


def _hop_by_hop_names(headers: CIMultiDict[str] | Iterable[tuple[str, str]]) -> frozenset[str]:
    items = headers.items() if isinstance(headers, CIMultiDict) else headers
    return HOP_BY_HOP | connection_tokens(v for k, v in items if k.lower() == "connection")


@dataclass(frozen=True, slots=True)
class PrincipalHeaders:
    """The injected header names for one configured prefix, built once per config."""

    prefix_cmp: str
    type: istr
    id: istr
    token_type: istr
    token_id: istr
    scopes: istr
    claims: istr

    @classmethod
    def for_prefix(cls, prefix: str) -> PrincipalHeaders:
        return cls(
            prefix_cmp=identity_prefix(prefix),
            type=istr(prefix + "Principal-Type"),
            id=istr(prefix + "Principal-Id"),
            token_type=istr(prefix + "Token-Type"),
            token_id=istr(prefix + "Token-Id"),
            scopes=istr(prefix + "Scopes"),
            claims=istr(prefix + "Claims"),
        )

    def render(self, principal: Principal) -> list[tuple[istr, str]]:
        out: list[tuple[istr, str]] = [(self.type, principal.type)]
        if principal.id:
            out.append((self.id, principal.id))
        if principal.token_type:
            out.append((self.token_type, principal.token_type))
        if principal.token_id:
            out.append((self.token_id, principal.token_id))
        if not principal.is_anonymous:
            out.append((self.scopes, " ".join(sorted(principal.scopes))))
        if principal.claims_json:
            out.append((self.claims, principal.claims_json))
        return out


@dataclass(frozen=True, slots=True)
class ClientHop:
    """What the proxy knows about the connection the request arrived on."""

    peer_ip: str
    scheme: str
    host: str | None


def is_trusted(ip: str, trusted: Sequence[Network]) -> bool:
    if not trusted:
        return False
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in net for net in trusted)


def client_ip(hop: ClientHop, xff_values: Sequence[str], trusted: Sequence[Network]) -> str:
    """The address the request is attributed to (per-IP budget, logs).

    Walk X-Forwarded-For from the right while hops are trusted proxies; the first
    untrusted address is the client. Without trusted proxies this is the peer.
    """
    if not is_trusted(hop.peer_ip, trusted):
        return hop.peer_ip
    chain = [p.strip() for v in xff_values for p in v.split(",") if p.strip()]
    for candidate in reversed(chain):
        if not is_trusted(candidate, trusted):
            return candidate
    return chain[0] if chain else hop.peer_ip


def for_upstream(
    incoming: CIMultiDict[str] | Iterable[tuple[str, str]],
    *,
    principal: Principal,
    names: PrincipalHeaders,
    hop: ClientHop,
    trusted: Sequence[Network],
    forward_authorization: bool,
) -> CIMultiDict[str]:
    """Headers to send upstream: cleaned of hop-by-hop, identity, override and (from
    untrusted peers) forwarding headers; then the principal and X-Forwarded-* added."""
    items = list(incoming.items() if isinstance(incoming, CIMultiDict) else incoming)
    drop = _hop_by_hop_names(items) | METHOD_OVERRIDE
    from_trusted = is_trusted(hop.peer_ip, trusted)
    if not from_trusted:
        drop = drop | FORWARDING
    if not forward_authorization:
        drop = drop | {"authorization"}
    out: CIMultiDict[str] = CIMultiDict()
    prior_xff: list[str] = []
    for name, value in items:
        lname = name.lower()
        if lname in drop or is_identity_header(lname, names.prefix_cmp):
            continue
        if lname == "x-forwarded-for":
            prior_xff.append(value)
            continue
        out.add(name, value)
    for name, value in names.render(principal):
        out.add(name, value)
    out[X_FORWARDED_FOR] = ", ".join([*prior_xff, hop.peer_ip])
    if X_FORWARDED_PROTO not in out:
        out[X_FORWARDED_PROTO] = hop.scheme
    if X_FORWARDED_HOST not in out and hop.host:
        out[X_FORWARDED_HOST] = hop.host
    return out


def for_client(upstream: CIMultiDict[str] | Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    """Response headers to send back: hop-by-hop (and `Connection`-named) removed.

    Content-Length stays: the proxy streams the body with the upstream's framing.
    """
    items = list(upstream.items() if isinstance(upstream, CIMultiDict) else upstream)
    drop = _hop_by_hop_names(items)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in items:
        if name.lower() not in drop:
            out.add(name, value)
    return out
