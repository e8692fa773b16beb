"""What one relayed socket knows about who it acts as: the grant of each namespace (a plain
WebSocket is watched under ""), when each must be looked at again (token expiry, the
re-verification interval), and the rewrite of the CONNECTs that earn grants.

Framing-free, so both relays use it: the byte relay (`splice`) and the framing relay
(`websocket`, for sockets that negotiate compression or a heartbeat). The owner is told
through `namespace_over(namespace)` when a namespace's principal must go. No task lives here while
nothing is due: a place in the app's one timer (`relays.Rechecks`), a short task only
while re-verifying.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Protocol

from proxy.core.errors import ProxyError
from proxy.core.principal import Principal
from proxy.realtime import socketio as sio
from proxy.realtime.relays import POLICY_VIOLATION, Caller, RelayContext
from proxy.realtime.socketio import Grant, Watch, same_identity, watch_for


class Owner(Protocol):
    def namespace_over(self, namespace: str) -> None:
        """The principal of `namespace` must go."""


class Refused(Exception):
    """The socket must be closed with `code` (a client packet the proxy will not relay)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


class Namespaces:
    def __init__(
        self,
        ctx: RelayContext,
        caller: Caller,
        sid: str | None,
        owner: Owner,
    ) -> None:
        self.ctx = ctx
        self.caller = caller  # the handshake's: what a CONNECT without a token acts as
        self.sid = sid
        self.watches: dict[str, Watch] = {}
        # The socket itself, not a bound method of it: one object fewer per socket; let
        # go when it stops (the two held each other: a cycle once the socket is gone),
        # so None also says it stopped.
        self._owner: Owner | None = owner
        self._slot = -1  # where it waits in `ctx.registry.rechecks`, or -1
        self._checking = False
        self._task: asyncio.Future[None] | None = None

    async def verify(self, token: str) -> Principal:
        return await self.ctx.verifier.verify(token, self.caller.ip)

    def adopt(self, grants: list[Grant]) -> None:
        now = self.ctx.clock()
        for grant in grants:
            watch = watch_for(grant, now, self.ctx.reverify_seconds)
            if watch is None:
                self.watches.pop(grant.namespace, None)
            else:
                self.watches[grant.namespace] = watch
        self._schedule()

    def adopt_polling(self) -> None:
        """The client's `5` (upgrade) packet: every CONNECT it sent over polling has been
        rewritten and remembered by now (the POST/upgrade race)."""
        self.adopt(self.ctx.registry.grants.take(self.sid))

    def forget(self, packet: str) -> None:
        """A `41`/`44` packet (either way): that namespace is no longer connected."""
        if self.watches:
            self.watches.pop(sio.namespace_of(packet), None)

    def stop(self) -> None:
        self._unschedule()
        self._owner = None

    def _unschedule(self) -> None:
        if self._slot >= 0:
            self.ctx.registry.rechecks.remove(self, self._slot)
            self._slot = -1

    async def connect(self, text: str) -> tuple[str | None, str | None]:
        """A client CONNECT: (the packet for the upstream, None), or (None, a
        CONNECT_ERROR for the client) when Clerk is unavailable. Raises `Refused`."""
        caller = self.caller
        try:
            out, grant = await sio.rewrite_connect(
                text,
                header_principal=caller.principal,
                header_token=caller.token,
                verify=self.verify,
                header_refusal=caller.refusal,
            )
        except ProxyError as error:
            if not sio.is_unavailable(error):
                raise Refused(POLICY_VIOLATION, f"{error.code}: {error.message}") from None
            # Clerk is down: a partner must not be silently downgraded to anonymous.
            data: dict[str, object] = {"code": error.code}
            if error.retry_after is not None:
                data["retry_after"] = error.retry_after
            namespace = sio.namespace_of(text)
            return None, sio.connect_error_packet(namespace, error.message, data)
        self.ctx.metrics.socketio_connects.labels(grant.principal.type).inc()
        self.adopt([grant])
        return out, None

    # -- expiry ---------------------------------------------------------------------------

    def _schedule(self) -> None:
        self._unschedule()
        if self._owner is None or self._checking:
            return
        due = min((w.due for w in self.watches.values() if w.due is not None), default=None)
        if due is None:
            return
        self._slot = self.ctx.registry.rechecks.add(self, due - self.ctx.clock())

    def due(self) -> None:
        self._slot = -1
        self._checking = True
        self._task = asyncio.ensure_future(self._check())

    async def _check(self) -> None:
        try:
            now = self.ctx.clock()
            for namespace, watch in list(self.watches.items()):
                if watch.due is not None and watch.due <= now and self._owner is not None:
                    await self._recheck(namespace, watch, now)
        finally:
            self._checking = False
            self._task = None  # a finished task keeps its coroutine: not per socket
            self._schedule()

    async def _recheck(self, namespace: str, watch: Watch, now: float) -> None:
        old = watch.grant.principal
        if (old.expires_at is None or old.expires_at > now) and watch.grant.token:
            fresh: Principal | None
            try:
                fresh = await self.verify(watch.grant.token)
            except ProxyError as error:
                # Clerk unavailable: keep the socket and try again later.
                fresh = old if sio.is_unavailable(error) else None
            if fresh is not None and same_identity(fresh, old):
                if self.watches.get(namespace) is watch:
                    grant = dataclasses.replace(watch.grant, principal=fresh)
                    self.watches[namespace] = Watch(grant, now + self.ctx.reverify_seconds)
                return
        if self.watches.get(namespace) is not watch:
            return  # reconnected meanwhile
        owner = self._owner
        if owner is None:
            return  # the socket ended while its token was verified again
        del self.watches[namespace]
        self.ctx.metrics.socketio_disconnects.inc()
        owner.namespace_over(namespace)
