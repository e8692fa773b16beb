"""Header rewriting for both legs of the proxy. Pure: headers in, headers out.

Order matters on the way up: hop-by-hop headers (including those a client names in
`Connection`) and every client-sent identity header are removed *before* the proxy adds
its own, so `Connection: X-Auth-Principal-Id` cannot delete what the proxy injects and a
client cannot smuggle a principal in under any spelling.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from multidict import CIMultiDict, istr

from proxy.core.principal import FIELDS, Kind, Principal
from proxy.http.http1 import (
    HOP_BY_HOP,
    PickedFields,
    RequestHead,
    encode_fields,
    field_values,
    parse_fields,
    picked_names,
    values_pattern,
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
# A Principal, its header pairs and the same as a field block.
Rendered = tuple[Principal, tuple[tuple[istr, str], ...], bytes]

X_FORWARDED_FOR = istr("X-Forwarded-For")
X_FORWARDED_PROTO = istr("X-Forwarded-Proto")
X_FORWARDED_HOST = istr("X-Forwarded-Host")
# Principal objects whose rendering is remembered, by identity.
RECENT_OBJECTS = 256


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


@dataclass(frozen=True, slots=True)
class PrincipalHeaders:
    """The injected header names for one configured prefix, built once per config from
    `principal.FIELDS`: each sent field's name, attribute and kind."""

    prefix_cmp: str
    fields: tuple[tuple[istr, str, Kind], ...]

    @classmethod
    def for_prefix(cls, prefix: str) -> PrincipalHeaders:
        return cls(
            prefix_cmp=identity_prefix(prefix),
            fields=tuple(
                (istr(prefix + f.header), f.name, f.kind) for f in FIELDS if f.header is not None
            ),
        )

    # The renderings of the Principal objects seen recently, by id: cache hits hand back
    # the same object, so a hit costs a pointer compare (9.6k instructions a request less
    # on realistic traffic, docs/performance.md). Each is kept beside its id so the id
    # cannot be reused while it is there, and the dict is emptied at RECENT_OBJECTS: every
    # re-verification builds a new, equal Principal, and a memo that kept every copy crept
    # (issue 19). A new object is rendered afresh, which costs no more than hashing it to
    # find an equal one's rendering.
    _recent: dict[int, Rendered] = field(default_factory=dict, compare=False, repr=False)

    def render(self, principal: Principal) -> tuple[tuple[istr, str], ...]:
        return self._rendered(principal)[1]

    def render_block(self, principal: Principal) -> bytes:
        """`render` as a field block (`http1`), for the fast path."""
        return self._rendered(principal)[2]

    def _rendered(self, principal: Principal) -> Rendered:
        recent = self._recent
        kept = recent.get(id(principal))
        if kept is not None and kept[0] is principal:
            return kept
        pairs = self._render(principal)
        if len(recent) >= RECENT_OBJECTS:
            recent.clear()
        kept = recent[id(principal)] = (principal, pairs, encode_fields(pairs))
        return kept

    def _render(self, principal: Principal) -> tuple[tuple[istr, str], ...]:
        out: list[tuple[istr, str]] = []
        for name, attribute, kind in self.fields:
            # None or empty is no field at all, not an empty one (sessions grant no scopes;
            # Clerk's principals name no issuer: today's bytes stay as they were).
            value = getattr(principal, attribute)
            if value:
                out.append((name, " ".join(sorted(value)) if kind == "scopes" else value))
        return tuple(out)


class ClientHop:
    """What the proxy knows about the connection the request arrived on. Immutable
    (`Final`). A plain class: the request path reads it on every request, and compiled,
    its fields are read directly where a NamedTuple's go through a descriptor lookup."""

    __slots__ = ("_forwarded", "host", "peer_ip", "scheme")

    def __init__(self, peer_ip: str, scheme: str, host: str | None) -> None:
        self.peer_ip: Final = peer_ip
        self.scheme: Final = scheme
        self.host: Final = host
        self._forwarded: bytes | None = None

    def forwarded(self) -> bytes:
        """The forwarding fields an untrusted peer's request goes up with (they depend on
        the hop alone), built at its first request: the fast path keeps one hop per
        connection, and building them per request cost 3k instructions (docs/performance.md)."""
        block = self._forwarded
        if block is None:
            text = f"\r\n{X_FORWARDED_FOR}: {self.peer_ip}\r\n{X_FORWARDED_PROTO}: {self.scheme}"
            if self.host:
                text += f"\r\n{X_FORWARDED_HOST}: {self.host}"
            block = self._forwarded = text.encode("latin-1")
        return block

    def __repr__(self) -> str:
        return f"ClientHop({self.peer_ip!r}, {self.scheme!r}, {self.host!r})"


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


# Fields the proxy drops, frames by or answers itself. Spelt with `_` for any `-`, a
# client's copy is dropped whoever sends it: upstreams that fold `_` into `-` (several
# WSGI/CGI servers) would read it as the real field. nginx drops every underscored name.
SPECIAL: frozenset[str] = (
    HOP_BY_HOP | METHOD_OVERRIDE | FORWARDING | {"content-length", "expect", "http2-settings"}
)


# What is always dropped on the way up, by (peer is a trusted proxy, forward Authorization).
# `Expect` too: the proxy answers `100 Continue` itself (`dispatch`), as nginx does.
_UPSTREAM_DROP: dict[tuple[bool, bool], frozenset[str]] = {
    (trusted, keep_auth): HOP_BY_HOP
    | METHOD_OVERRIDE
    | {"expect"}
    | (frozenset() if trusted else FORWARDING)
    | (frozenset() if keep_auth else frozenset({"authorization"}))
    for trusted in (False, True)
    for keep_auth in (False, True)
}


def _kept(
    items: Iterable[tuple[str, str]],
    drop: frozenset[str],
    prefix: str | None,
    xff: list[str] | None,
) -> list[tuple[str, str, str]]:
    """The fields of `items` that stay, as (name, value, lower-case name): neither in
    `drop` (with an identity `prefix`: `_dropped_name`) nor named in a `Connection` field.
    With `xff`, X-Forwarded-For goes there instead (a trusted hop's chain, extended)."""
    kept: list[tuple[str, str, str]] = []
    connection: list[str] = []
    for name, value in items:
        lname = name.lower()
        if lname in drop if prefix is None else _dropped_name(lname, drop, prefix):
            if lname == "connection":
                connection.append(value)
            continue
        if xff is not None and lname == "x-forwarded-for":
            xff.append(value)
            continue
        kept.append((name, value, lname))
    if not connection:
        return kept
    # A client may not name Host away: the upstream would get none, or the proxy's own.
    named = connection_tokens(connection) - {"host"}
    return [item for item in kept if item[2] not in named]


def upstream_items(
    incoming: CIMultiDict[str] | Iterable[tuple[str, str]],
    *,
    principal: Principal,
    names: PrincipalHeaders,
    hop: ClientHop,
    trusted: Sequence[Network],
    forward_authorization: bool,
    default_host: str | None = None,
) -> list[tuple[str, str]]:
    """Headers to send upstream: cleaned of hop-by-hop, identity, override and (from
    untrusted peers) forwarding headers; then the principal and X-Forwarded-* added.
    One pass over the client's headers: this runs on every request."""
    items = incoming.items() if isinstance(incoming, CIMultiDict) else incoming
    from_trusted = is_trusted(hop.peer_ip, trusted)
    drop = _UPSTREAM_DROP[(from_trusted, forward_authorization)]
    prior_xff: list[str] = []
    has_proto = has_host = has_fwd_host = False
    out: list[tuple[str, str]] = []
    for name, value, lname in _kept(items, drop, names.prefix_cmp, prior_xff):
        if lname == "host":
            has_host = True
        elif lname == "x-forwarded-proto":
            has_proto = True
        elif lname == "x-forwarded-host":
            has_fwd_host = True
        out.append((name, value))
    out.extend(names.render(principal))
    out.append((X_FORWARDED_FOR, ", ".join([*prior_xff, hop.peer_ip])))
    if not has_proto:
        out.append((X_FORWARDED_PROTO, hop.scheme))
    if not has_fwd_host and hop.host:
        out.append((X_FORWARDED_HOST, hop.host))
    if not has_host and default_host is not None:
        out.append(("Host", default_host))
    return out


def client_items(upstream: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Response headers to send back: hop-by-hop (and `Connection`-named) removed.

    Content-Length stays: the proxy streams the body with the upstream's framing."""
    return [(name, value) for name, value, _ in _kept(upstream, HOP_BY_HOP, None, None)]


def for_client(upstream: CIMultiDict[str] | Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    items = upstream.items() if isinstance(upstream, CIMultiDict) else upstream
    return CIMultiDict(client_items(items))


_X_FORWARDED_FOR: Final = values_pattern("x-forwarded-for")
_X_FORWARDED_PROTO: Final = values_pattern("x-forwarded-proto")
_X_FORWARDED_HOST: Final = values_pattern("x-forwarded-host")
_HOST: Final = values_pattern("host")


def _dropped_name(lname: str, drop: frozenset[str], prefix: str) -> bool:
    """Whether a field named `lname` (lower-case) goes, not to come back: named in `drop`,
    an identity field in any spelling, or a special field spelt with `_` for `-`."""
    if lname in drop:
        return True
    folded = lname.replace("_", "-")
    return folded.startswith(prefix) or (folded != lname and folded in SPECIAL)


def _cut(block: bytes, cut: tuple[bytes, ...], drop: frozenset[str] | None, prefix: str) -> bytes:
    """`block` without the fields named in `cut` (`RequestHead.cut`: names as spelt, in
    order) that go: all of them from an untrusted peer (`drop` None: the parser picked
    exactly those), those `_dropped_name` says from a trusted one. A field starts at a
    CRLF and ends at the next (no value holds a CR), so the first `CRLF name:` from the
    end of the last cut is the one the parser reported."""
    # `partition` takes its one argument without the argument parsing that costs `find`
    # with a start index ~1k instructions under CPython 3.11.
    pieces: list[bytes] = []
    rest = block
    for name in cut:
        if drop is not None and not _dropped_name(name.decode("latin-1").lower(), drop, prefix):
            continue  # a forwarding field from a trusted proxy
        before, _, field = rest.partition(b"\r\n" + name + b":")
        pieces.append(before)
        _, cr, rest = field.partition(b"\r")
        rest = cr + rest  # from the next field's CRLF on, as `rest` starts
    if not pieces:
        return block
    pieces.append(rest)
    return b"".join(pieces)


class UpstreamRewrite:
    """`upstream_items` for the fast path, on a raw field block (`http1`).

    The same rules with the same result, without a pass over the fields: while llhttp
    reads the head, the parser lists the names of the fields that may go (`picked`, built
    here: the drop rule's names in any spelling with `_` for `-`, and the identity
    prefix), those that do are cut out of the block, from the CRLF before each to the
    next, the kept ones go up byte for byte, then the principal and the forwarding fields
    are appended. A `Connection` field that names anything not dropped anyway (rare), or a
    head read by another config's `picked`, takes `upstream_items` itself. Built once per
    config."""

    def __init__(
        self,
        names: PrincipalHeaders,
        *,
        trusted: Sequence[Network],
        forward_authorization: bool,
        request_id: str = "X-Request-Id",
    ) -> None:
        self._names = names
        self._trusted = tuple(trusted)
        self._forward_authorization = forward_authorization
        self._dropped = {
            from_trusted: _UPSTREAM_DROP[(from_trusted, forward_authorization)]
            | {"x-forwarded-for"}
            for from_trusted in (False, True)
        }
        untrusted = self._dropped[False]
        picked = picked_names(request_id)
        self.picked = PickedFields(
            request_id,
            cut=untrusted | {"content-length", "http2-settings"},
            prefix=names.prefix_cmp,
            cut_picked=frozenset(
                name for name in picked if _dropped_name(name, untrusted, names.prefix_cmp)
            ),
        )

    def items(
        self,
        incoming: CIMultiDict[str] | Iterable[tuple[str, str]],
        principal: Principal,
        hop: ClientHop,
        default_host: str | None = None,
    ) -> list[tuple[str, str]]:
        """`upstream_items` under this config: aiohttp's door, and the rare head `block`
        leaves to it."""
        return upstream_items(
            incoming,
            principal=principal,
            names=self._names,
            hop=hop,
            trusted=self._trusted,
            forward_authorization=self._forward_authorization,
            default_host=default_host,
        )

    def block(
        self,
        head: RequestHead,
        *,
        principal: Principal,
        hop: ClientHop,
        default_host: str | None = None,
    ) -> bytes:
        from_trusted = is_trusted(hop.peer_ip, self._trusted)
        block = head.block
        connection = head.connection
        dropped = self._dropped[from_trusted]
        if head.picked is not self.picked or (
            connection and not connection_tokens(connection) <= dropped
        ):
            items = self.items(parse_fields(block), principal, hop, default_host)
            return encode_fields(items)
        kept = block
        if head.cut:
            kept = _cut(block, head.cut, dropped if from_trusted else None, self._names.prefix_cmp)
        if not from_trusted:
            forwarded = hop.forwarded()
        else:
            xff = ", ".join([*field_values(block, _X_FORWARDED_FOR), hop.peer_ip])
            text = f"\r\n{X_FORWARDED_FOR}: {xff}"
            if _X_FORWARDED_PROTO.search(kept) is None:
                text += f"\r\n{X_FORWARDED_PROTO}: {hop.scheme}"
            if hop.host and _X_FORWARDED_HOST.search(kept) is None:
                text += f"\r\n{X_FORWARDED_HOST}: {hop.host}"
            forwarded = text.encode("latin-1")
        rendered = self._names.render_block(principal)
        if default_host is not None and _HOST.search(kept) is None:
            return b"".join(
                (kept, rendered, forwarded, f"\r\nHost: {default_host}".encode("latin-1"))
            )
        return b"".join((kept, rendered, forwarded))
