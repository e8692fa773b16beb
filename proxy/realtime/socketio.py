"""Engine.IO 4 / Socket.IO 5 codec and the CONNECT rewriter. Pure: strings and bytes in,
strings and bytes out; the only thing awaited is the `verify` callable handed in.

Only client→upstream CONNECT packets (`40`, `40/nsp,` + optional JSON) are ever decoded:
their `auth.token` is verified and removed, a client-sent `auth.principal` is dropped, and
the verified principal is injected. Every other packet is relayed as the very same bytes
(the fast path checks a two-byte prefix and nothing else). The namespace/id grammar
mirrors socket.io-parser 4 and python-socketio 5 so the upstream reads exactly what the
proxy read; what the proxy cannot see through is refused rather than relayed unread.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl

import cachetools

from proxy.core.errors import TOKEN_INVALID, ProxyError, bad_request
from proxy.core.principal import ANONYMOUS, FIELDS, Principal

log = logging.getLogger("proxy.socketio")

PATH_PREFIX = "/socket.io/"
RECORD_SEPARATOR = b"\x1e"
CONNECT = "40"  # Engine.IO MESSAGE (4) + Socket.IO CONNECT (0)
DISCONNECT = "41"
CONNECT_ERROR = "44"
_CONNECT_B = b"40"
_SEP_CONNECT = b"\x1e40"
TRANSPORTS = frozenset({"polling", "websocket"})

Verify = Callable[[str], Awaitable[Principal]]


def check_query(query: str) -> None:
    """Refuse handshakes whose traffic the rewriter could not read.

    EIO 3 frames packets differently (length-prefixed, binary payloads), JSONP (`j=`)
    wraps them in JavaScript, and an unknown transport (webtransport) is not relayed.
    `b64=1` is harmless under EIO 4: polling always carries binary as `b` + base64.
    """
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False)
    except ValueError:
        raise bad_request("malformed Socket.IO query string") from None
    seen: dict[str, list[str]] = {}
    for key, value in pairs:
        seen.setdefault(key, []).append(value)
    for key in ("EIO", "transport", "sid"):
        if len(seen.get(key, ())) > 1:
            raise bad_request(f"the Socket.IO query repeats {key}")
    if seen.get("EIO") != ["4"]:
        raise bad_request("only Engine.IO protocol 4 (Socket.IO v3/v4 clients) is supported")
    if "j" in seen:
        raise bad_request("JSONP polling is not supported")
    transport = seen.get("transport", [""])[0]
    if transport not in TRANSPORTS:
        raise bad_request("the Socket.IO transport must be polling or websocket")


def sid_of(query: str) -> str | None:
    """The Engine.IO session id of a request, once the handshake has assigned one."""
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == "sid":
            return value or None
    return None


# --- packets ---------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


@dataclass(frozen=True, slots=True)
class ConnectPacket:
    """One decoded CONNECT. `head` is the packet up to its payload, kept verbatim
    (`40`, `40/admin,`, `40/admin,7`) so only the payload is ever re-encoded."""

    head: str
    namespace: str
    auth: dict[str, Any]  # the client's auth minus `token` and `principal`
    token: str | None = field(default=None, repr=False)
    # `auth.token` was present but not a string (or null): an invalid token.
    token_malformed: bool = False


# ASCII only: str.isdigit() also accepts "²" or "٣", which socket.io-parser does not.
_DIGITS = frozenset("0123456789")


def _is_digits(text: str) -> bool:
    return bool(text) and all(c in _DIGITS for c in text)


def _split_head(packet: str) -> tuple[str, str, str]:
    """(head, namespace, payload) of a `4x…` packet, as socket.io-parser reads it."""
    i = 2
    namespace = "/"
    if packet[i : i + 1] == "/":
        comma = packet.find(",", i)
        end = len(packet) if comma == -1 else comma
        namespace = packet[i:end]
        i = end + 1 if comma != -1 else end
    while i < len(packet) and packet[i] in _DIGITS:
        i += 1
    # python-socketio drops a `?query` from the namespace; bookkeeping must match it.
    return packet[:i], namespace.partition("?")[0], packet[i:]


# The longest run of digits a count or ack id takes after a packet's type: more is no
# client library's packet.
MAX_PREFIX_DIGITS: Final = 10
AMBIGUOUS_PREFIX: Final = "bad_request: a Socket.IO packet's count or id is not ASCII digits"


def ambiguous_prefix(head: str) -> bool:
    """Whether the digits after a client packet's type (`4x`) could be read two ways:
    socket.io-parser (and this codec) take ASCII digits only, python-socketio any
    character `str.isdigit` accepts (`41٣-/admin,` is its DISCONNECT of /admin, ours of
    /). The proxy cannot know which parser its upstream runs, so such a packet is
    refused, never guessed at. `head` is the packet's start, as much as was read (the
    byte relay reads 13 bytes, latin-1: a non-ASCII character shows as one above 127):
    a run of ASCII digits that fills it is refused too."""
    i = 2
    end = min(len(head), 2 + MAX_PREFIX_DIGITS + 1)
    while i < end and head[i] in _DIGITS:
        i += 1
    if i - 2 > MAX_PREFIX_DIGITS:
        return True
    return i < len(head) and ord(head[i]) > 127


def namespace_of(packet: str) -> str:
    """The namespace of any Socket.IO packet (`4x[n-][/nsp,]…`), without decoding JSON."""
    body = packet[2:]
    dash = body.find("-")
    if 0 < dash <= 10 and _is_digits(body[:dash]):
        body = body[dash + 1 :]
    if not body.startswith("/"):
        return "/"
    comma = body.find(",")
    return (body if comma == -1 else body[:comma]).partition("?")[0]


def parse_connect(packet: str) -> ConnectPacket:
    """Decode a client CONNECT; raise 400 for anything but an absent or object payload."""
    head, namespace, payload = _split_head(packet)
    auth: dict[str, Any] = {}
    if payload:
        try:
            decoded = json.loads(payload, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            raise bad_request("the Socket.IO CONNECT payload is not valid JSON") from None
        if not isinstance(decoded, dict):
            raise bad_request("the Socket.IO CONNECT payload must be a JSON object")
        auth = decoded
    token = auth.pop("token", None)
    auth.pop("principal", None)
    if token is None or isinstance(token, str):
        return ConnectPacket(head, namespace, auth, token)
    return ConnectPacket(head, namespace, auth, None, token_malformed=True)


def principal_auth(principal: Principal, refusal: str | None = None) -> dict[str, Any]:
    """`auth.principal` as SPEC.md fixes it; an anonymous one names the refusal that made
    it anonymous, when a token was refused."""
    if principal.is_anonymous:
        return (
            {"type": "anonymous"} if refusal is None else {"type": "anonymous", "refusal": refusal}
        )
    auth: dict[str, Any] = {}
    for f in FIELDS:  # principal.FIELDS: which keys, in which order, when
        value = getattr(principal, f.name)
        if f.connect is not None and (value or f.connect_always):
            if f.kind == "scopes":
                value = sorted(value)
            elif f.kind == "claims":
                value = principal.claims()
            auth[f.connect] = value
    return auth


def encode_connect(packet: ConnectPacket, principal: Principal, refusal: str | None = None) -> str:
    auth = {**packet.auth, "principal": principal_auth(principal, refusal)}
    head = packet.head
    if head.startswith("40/") and "," not in head:
        head += ","  # `40/admin` had no payload; one is added now
    try:
        payload = json.dumps(auth, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (ValueError, RecursionError):
        raise bad_request("the Socket.IO CONNECT payload cannot be re-encoded") from None
    return head + payload


def _head_for(namespace: str) -> str:
    return "" if namespace == "/" else namespace + ","


def disconnect_packet(namespace: str) -> str:
    return DISCONNECT + _head_for(namespace)


def connect_error_packet(namespace: str, message: str, data: dict[str, Any]) -> str:
    body = json.dumps({"message": message, "data": data}, separators=(",", ":"))
    return CONNECT_ERROR + _head_for(namespace) + body


def binary_attachments(packet: str) -> int:
    """How many binary attachments follow a `45n-`/`46n-` BINARY_EVENT/BINARY_ACK text
    packet (0 for any other packet). Reads the count prefix only."""
    if not packet.startswith(("45", "46")):
        return 0
    dash = packet.find("-", 2, 13)
    digits = packet[2:dash] if dash > 2 else ""
    return int(digits) if _is_digits(digits) else 0


# --- authentication of one CONNECT ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Grant:
    """Who a namespace was connected as. `token` is kept (in memory only) when the
    CONNECT carried its own, so a live connection can be re-verified."""

    namespace: str
    principal: Principal
    token: str | None = field(default=None, repr=False)
    # Why an anonymous grant is anonymous: the code the REST answer would have had
    # (`token_id_not_secret`, `token_expired`, ...), for the upstream in `auth.principal`.
    refusal: str | None = None


@dataclass(frozen=True, slots=True)
class Watch:
    """When a grant must be looked at again: its token's expiry or the next re-verify."""

    grant: Grant
    recheck_at: float | None

    @property
    def due(self) -> float | None:
        times = [t for t in (self.grant.principal.expires_at, self.recheck_at) if t is not None]
        return min(times) if times else None


def watch_for(grant: Grant, now: float, reverify_seconds: float) -> Watch | None:
    if grant.principal.is_anonymous:
        return None
    recheck = now + reverify_seconds if grant.token and reverify_seconds > 0 else None
    watch = Watch(grant, recheck)
    return watch if watch.due is not None else None


def same_identity(a: Principal, b: Principal) -> bool:
    return a.replace(expires_at=None) == b.replace(expires_at=None)


class GrantBook:
    """Grants of CONNECTs rewritten in polling POSTs, by Engine.IO sid, until the session
    upgrades to a WebSocket that takes them over. In memory only, and briefly: a session
    that never upgrades is forgotten after `ttl` seconds."""

    def __init__(self, *, ttl: float = 60.0, max_sessions: int = 100_000) -> None:
        self._by_sid: cachetools.TTLCache[str, list[Grant]] = cachetools.TTLCache(
            maxsize=max_sessions, ttl=ttl
        )
        # When each polling session's tokens were last re-verified.
        self._checked: cachetools.TTLCache[str, float] = cachetools.TTLCache(
            maxsize=max_sessions, ttl=ttl
        )

    def remember(self, sid: str, grants: list[Grant]) -> None:
        self._by_sid[sid] = [*self._by_sid.get(sid, ()), *grants]

    def take(self, sid: str | None) -> list[Grant]:
        if not sid:
            return []
        self._checked.pop(sid, None)
        return self._by_sid.pop(sid, [])

    async def sweep(
        self, sid: str | None, now: float, *, reverify_seconds: float, verify: Verify
    ) -> list[str]:
        """The namespaces of a polling session whose principal must go: token expired, or
        (every `reverify_seconds`) the token no longer verifies. The grants that stay are
        stored again, which keeps a session that only polls remembered while it polls."""
        grants = self._by_sid.get(sid) if sid else None
        if not sid or not grants:
            return []
        recheck = bool(reverify_seconds) and now - self._checked.get(sid, now) >= reverify_seconds
        if sid not in self._checked or recheck:
            self._checked[sid] = now
        keep: list[Grant] = []
        ended: list[str] = []
        for grant in grants:
            if await _still_valid(grant, now, recheck=recheck, verify=verify):
                keep.append(grant)
            else:
                ended.append(grant.namespace)
        self._by_sid[sid] = keep
        return ended


def is_unavailable(error: ProxyError) -> bool:
    """Clerk down or the budget spent: not the caller's fault, never a downgrade."""
    return error.status >= 500 or error.status == 429


async def _still_valid(grant: Grant, now: float, *, recheck: bool, verify: Verify) -> bool:
    principal = grant.principal
    if principal.is_anonymous:
        return True
    if principal.expires_at is not None and principal.expires_at <= now:
        return False
    if not (recheck and grant.token):
        return True
    try:
        fresh = await verify(grant.token)
    except ProxyError as error:
        return is_unavailable(error)  # Clerk down: keep the socket, look again later
    return same_identity(fresh, principal)


def _fallback(namespace: str, code: str, token_type: str | None) -> Grant:
    # The partner sees a connected socket either way: this line (and the upstream's
    # `auth.principal.refusal`) is where "why am I anonymous" is answered.
    log.info(
        "socket.io connect fell back to anonymous",
        extra={"code": code, "namespace": namespace, "token_type": token_type},
    )
    return Grant(namespace, ANONYMOUS, None, code)


async def rewrite_connect(
    packet: str,
    *,
    header_principal: Principal,
    header_token: str | None,
    verify: Verify,
    header_refusal: str | None = None,
) -> tuple[str, Grant]:
    """The CONNECT for the upstream, and the principal it acts as. A bad `auth.token`
    means anonymous (the documented Socket.IO fallback), with the refusal's code; an
    unavailable verifier re-raises its ProxyError. `header_refusal`: why the handshake's
    own token (its Authorization field) left it anonymous."""
    parsed = parse_connect(packet)
    token = parsed.token
    if parsed.token_malformed:
        grant = _fallback(parsed.namespace, TOKEN_INVALID, None)
    elif token is None:
        grant = Grant(parsed.namespace, header_principal, header_token, header_refusal)
    else:
        if header_token is not None and not hmac.compare_digest(
            header_token.encode(), token.encode()
        ):
            raise bad_request(
                "two different tokens: the Authorization header and the CONNECT auth.token"
            )
        try:
            principal = await verify(token)
        except ProxyError as error:
            if is_unavailable(error):
                raise
            grant = _fallback(parsed.namespace, error.code, error.token_type)
        else:
            grant = Grant(parsed.namespace, principal, token)
    return encode_connect(parsed, grant.principal, grant.refusal), grant


async def rewrite_polling_grants(
    body: bytes,
    *,
    header_principal: Principal,
    verify: Verify,
    header_token: str | None = None,
    header_refusal: str | None = None,
) -> tuple[bytes, list[Grant]]:
    """Rewrite every CONNECT in a polling POST body (`\\x1e`-joined packets)."""
    if not body.startswith(_CONNECT_B) and _SEP_CONNECT not in body:
        return body, []
    packets = body.split(RECORD_SEPARATOR)
    grants: list[Grant] = []
    for i, raw in enumerate(packets):
        if not raw.startswith(_CONNECT_B):
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise bad_request("the Socket.IO CONNECT packet is not UTF-8") from None
        rewritten, grant = await rewrite_connect(
            text,
            header_principal=header_principal,
            header_token=header_token,
            verify=verify,
            header_refusal=header_refusal,
        )
        packets[i] = rewritten.encode("ascii")
        grants.append(grant)
    return RECORD_SEPARATOR.join(packets), grants
