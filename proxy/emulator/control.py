"""What the emulators share beside the API they emulate: call counts, switchable faults
and the control routes over both (`/__emulator/…`).

A fault hits a set of endpoints, until cleared or for the next N requests only; several
on at once apply in a fixed order (a dropped answer is nothing; a slow one can still be an
error).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Generic, TypeVar

from aiohttp import web


@dataclass(frozen=True, slots=True)
class Fault:
    """One switched-on fault. `times`: how many more requests it hits (None: until cleared)."""

    kind: str
    seconds: float = 1.0  # slow
    status: int = 500  # error
    retry_after: int = 1  # rate_limit
    endpoints: tuple[str, ...] = ()
    times: int | None = None


class Faults(dict[str, Fault]):
    """The active faults of one emulator, by kind. `order`: the kinds, in the order they
    apply; `endpoints`: those a fault hits unless told; `options`: the emulator's own
    switches, each adding endpoints (Clerk's `jwks=True`)."""

    def __init__(
        self,
        order: tuple[str, ...],
        endpoints: Iterable[str],
        options: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        super().__init__()
        self.order = order
        self.default = tuple(endpoints)
        self.options = options or {}

    def switch_on(self, kind: str, params: Mapping[str, Any]) -> None:
        """Validate `set_fault` arguments (from Python or a control route), then switch on."""
        if kind not in self.order:
            raise ValueError(f"unknown fault {kind!r}; one of {sorted(self.order)}")
        allowed = {"seconds", "status", "retry_after", "times", "endpoints", *self.options}
        unknown = set(params) - allowed
        if unknown:
            raise ValueError(f"unknown fault parameters {sorted(unknown)}")
        values = {k: v for k, v in params.items() if k not in self.options}
        endpoints = tuple(values.pop("endpoints", self.default))
        known = {*self.default, *(e for extra in self.options.values() for e in extra)}
        if not set(endpoints) <= known:
            raise ValueError(f"endpoints are {sorted(known)}")
        for option, extra in self.options.items():
            if params.get(option):
                endpoints += extra
        fault = Fault(kind, endpoints=endpoints, **values)
        if not 500 <= fault.status <= 599:
            raise ValueError("error status must be 5xx")
        if (
            fault.seconds < 0
            or fault.retry_after < 0
            or (fault.times is not None and fault.times < 1)
        ):
            raise ValueError("seconds, retry_after and times must not be negative")
        self[kind] = fault

    def take(self, endpoint: str) -> list[Fault]:
        """The faults this request on `endpoint` meets, in order, each counted down."""
        hit = [f for k in self.order if (f := self.get(k)) and endpoint in f.endpoints]
        for fault in hit:
            if fault.times is not None:
                if fault.times <= 1:
                    del self[fault.kind]
                else:
                    self[fault.kind] = replace(fault, times=fault.times - 1)
        return hit


class Emulated:
    """An emulator's call counts by endpoint (every request that reached a route, faulted
    or not) and its faults; its own docs say which kinds and parameters `set_fault` takes."""

    calls: Counter[str]
    faults: Faults

    def set_fault(self, kind: str, **params: Any) -> None:
        self.faults.switch_on(kind, params)

    def clear_faults(self) -> None:
        self.faults.clear()

    async def faulted(
        self, request: web.Request, endpoint: str, answer: Callable[[Fault], web.Response]
    ) -> web.StreamResponse | None:
        """Count a request on `endpoint`; its faulted answer (`answer` writes the emulator's
        own error bodies), or None: answer it as usual."""
        self.calls[endpoint] += 1
        for fault in self.faults.take(endpoint):
            if fault.kind == "down":
                # Closed with no HTTP answer: the client sees a disconnect, as when the
                # service is unreachable mid-request.
                if request.transport is not None:
                    request.transport.close()
                # aiohttp cannot write to a closed transport and drops the response quietly.
                return web.Response(status=500)
            if fault.kind == "slow":
                await asyncio.sleep(fault.seconds)
            else:
                return answer(fault)
        return None


E = TypeVar("E", bound=Emulated)


class Control(Generic[E]):
    """`/__emulator/…`: not the emulated API but its Python API over HTTP, for other
    processes; nothing here needs a key or is counted in `calls`."""

    def __init__(self, emu: E, app: web.Application) -> None:
        self.emu = emu
        app.router.add_get("/__emulator/calls", self.calls)
        app.router.add_get("/__emulator/faults", self.get_faults)
        app.router.add_post("/__emulator/faults", self.set_fault)
        app.router.add_delete("/__emulator/faults", self.clear_faults)

    async def _body(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(
                text=json.dumps({"error": "body must be a JSON object"}),
                content_type="application/json",
            )
        return body

    async def calls(self, request: web.Request) -> web.Response:
        return web.json_response(dict(self.emu.calls))

    async def get_faults(self, request: web.Request) -> web.Response:
        return web.json_response({k: asdict(f) for k, f in self.emu.faults.items()})

    async def set_fault(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        kind = body.pop("kind", None)
        if not isinstance(kind, str):
            return bad('"kind" is required')
        try:
            self.emu.set_fault(kind, **body)
        except (TypeError, ValueError) as exc:
            return bad(str(exc))
        return await self.get_faults(request)

    async def clear_faults(self, request: web.Request) -> web.Response:
        self.emu.clear_faults()
        return web.json_response({})


def json_answer(status: int, body: Mapping[str, Any], headers: Mapping[str, str]) -> web.Response:
    """An emulated API's answer. Exactly `application/json`, no charset: Clerk's JS SDK
    parses nothing else as JSON."""
    return web.Response(
        body=json.dumps(dict(body)).encode(),
        status=status,
        headers=headers,
        content_type="application/json",
    )


def bad(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)
