"""The differential harness: the same raw bytes through both front doors (the fast path's
listener and aiohttp's server alone), each door with its own recording upstream
(`support_raw`), compared on what each client received and what each upstream received.

A case is bytes plus a tag. Every request target in a case is rewritten to
`/public/<tag>/...` (or `/api/<tag>/...`), so what an upstream received is attributed to
its case even when many cases run at once and when a request was smuggled inside another.
A difference is a failure unless `explain` names it: each explanation is written down in
docs/security.md ("Where the two doors differ") with why.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestServer

from proxy.request.app import create_app
from tests.support import FastPathServer, StubVerifier, make_config
from tests.support_raw import Exchange, RawUpstream, Received, exchange, parse_answers

CORPUS = Path(__file__).resolve().parent / "corpus"
HOST = "proxy.test"
_TARGET = re.compile(rb"(^|\n)([A-Z]{3,10}) (/[^ \r\n]*)")


@dataclass(frozen=True)
class Case:
    tag: str
    raw: bytes
    half_close: bool = False
    source: str = ""


def tagged(raw: bytes, tag: str) -> bytes:
    """`raw` with every origin-form target of a request line moved under `/public/<tag>`
    (`/api/...` keeps its required route: `/api/<tag>/...`)."""

    def move(m: re.Match[bytes]) -> bytes:
        target = m.group(3)
        if target.startswith(b"/api/"):
            target = b"/api/" + tag.encode() + target[4:]
        else:
            target = b"/public/" + tag.encode() + target
        return m.group(1) + m.group(2) + b" " + target

    return _TARGET.sub(move, raw)


def _follow(tag: str) -> bytes:
    return f"GET /public/{tag}/after HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()


def corpus_cases() -> Iterator[Case]:
    data = json.loads((CORPUS / "smuggling.json").read_text())
    for n, entry in enumerate(data["cases"]):
        tag = f"c{n}"
        source = f"{entry['source']}:{entry['id']}"
        if "te_line" in entry:
            gadget = entry["te_line"].encode("latin-1")
            hidden = f"GET /public/{tag}/smuggled HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
            # CL.TE: the length covers a chunked end and a request hidden behind it.
            body = b"0\r\n\r\n" + hidden
            yield Case(tag, (
                f"POST /public/{tag}/clte HTTP/1.1\r\nHost: {HOST}\r\n".encode() + gadget
                + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body + _follow(tag)
            ), source=source + ":CL.TE")
            # TE.CL: the length stops inside a chunk that holds a request.
            chunk = b"GPOST /public/" + tag.encode() + b"/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
            yield Case(tag + "t", (
                f"POST /public/{tag}t/tecl HTTP/1.1\r\nHost: {HOST}\r\n".encode() + gadget
                + b"\r\nContent-Length: 4\r\n\r\n%x\r\n%b\r\n0\r\n\r\n" % (len(chunk), chunk)
                + _follow(tag + "t")
            ), source=source + ":TE.CL")
        elif "cl_line" in entry:
            body = b"0123456789"
            line = entry["cl_line"].replace("{n}", str(len(body))).encode("latin-1")
            yield Case(tag, (
                f"POST /public/{tag}/cl HTTP/1.1\r\nHost: {HOST}\r\n".encode() + line
                + b"\r\n\r\n" + body + _follow(tag)
            ), source=source)
        elif "raw" in entry:
            yield Case(tag, tagged(entry["raw"].encode("latin-1"), tag), source=source)
        else:
            fields = entry["fields"].encode("latin-1")
            for suffix, behaviour in (("", "ok"), ("s", "switch")):
                yield Case(tag + suffix, (
                    f"GET /public/{tag}{suffix}/{behaviour} HTTP/1.1\r\nHost: {HOST}\r\n".encode()
                    + fields + b"\r\n\r\n" + _follow(tag + suffix)
                ), source=source)


def regression_cases() -> Iterator[Case]:
    data = json.loads((CORPUS / "regressions.json").read_text())
    for n, entry in enumerate(data["cases"]):
        tag = f"r{n}"
        yield Case(tag, tagged(entry["raw"].encode("latin-1"), tag),
                   half_close=entry.get("half_close", False), source="regression")


@dataclass
class Outcome:
    """What one door made of one case."""

    answers: list[tuple[int, bytes]]
    rest: str
    closed: bool
    upstream: list[tuple[Any, ...]]

    def brief(self) -> str:
        return (f"answers={[(s, b[:60]) for s, b in self.answers]} rest={self.rest!r} "
                f"closed={self.closed} upstream={self.upstream}")


_MADE_ID = re.compile(rb"[0-9a-f]{32}")


def _field(name: bytes, value: bytes, authority: bytes) -> tuple[bytes, bytes]:
    # The Host aiohttp's client gives a request that came without one is its upstream's,
    # a port of its own per door; a request id each door made is its own random one.
    if value == authority:
        return name, b"<upstream>"
    if name == b"x-request-id" and _MADE_ID.fullmatch(value):
        return name, b"<made>"
    return name, value


def _seen(req: Received, authority: bytes) -> tuple[Any, ...]:
    fields = sorted(_field(k.lower(), v, authority) for k, v in req.fields)
    return (req.method, req.target, req.version, tuple(fields), req.body)


@dataclass
class Doors:
    """Both doors, each with its own upstream; `run` a batch of cases concurrently."""

    fast: TestServer
    aio: TestServer
    up_fast: RawUpstream
    up_aio: RawUpstream
    limit: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(200))

    @classmethod
    async def start(cls) -> Doors:
        up_fast, up_aio = await RawUpstream().start(), await RawUpstream().start()
        servers = []
        for up, kind in ((up_fast, FastPathServer), (up_aio, TestServer)):
            config = make_config(up.url, upstream={"read_timeout": 0.5},
                                 logging={"level": "WARNING", "access_log": False})
            server = kind(create_app(config, verifier=StubVerifier()))
            await server.start_server()
            servers.append(server)
        return cls(servers[0], servers[1], up_fast, up_aio)

    async def close(self) -> None:
        for server in (self.fast, self.aio):
            await server.close()
        for up in (self.up_fast, self.up_aio):
            await up.close()

    async def _one(self, server: TestServer, case: Case) -> Exchange:
        assert server.port is not None
        async with self.limit:
            return await exchange(server.port, case.raw, idle=0.5, limit=4,
                                  half_close=case.half_close)

    async def run(self, cases: Iterable[Case]) -> list[tuple[Case, Outcome, Outcome]]:
        cases = list(cases)
        got = await asyncio.gather(*[
            self._one(server, case) for case in cases for server in (self.fast, self.aio)
        ])
        await asyncio.sleep(0.05)  # the upstreams' last reads
        out = []
        for i, case in enumerate(cases):
            pair = []
            for ex, up in ((got[2 * i], self.up_fast), (got[2 * i + 1], self.up_aio)):
                answers, rest = parse_answers(ex.data, ex.closed)
                authority = f"127.0.0.1:{up.port}".encode()
                mine = [_seen(r, authority) for r in up.received if _case_of(r.target) == case.tag]
                pair.append(Outcome([(a.status, a.body) for a in answers], rest, ex.closed, mine))
            out.append((case, pair[0], pair[1]))
        return out


def _parser_refusal(answer: tuple[int, bytes]) -> bool:
    """aiohttp's parser's plain-text 400 (the proxy's own refusals are JSON)."""
    return answer[0] == 400 and not answer[1].startswith(b"{")


def _trimmed(seen: tuple[Any, ...]) -> tuple[Any, ...]:
    fields = tuple((k, v.strip(b" \t\x85\xa0")) for k, v in seen[3])
    return (*seen[:3], fields, seen[4])


def _case_of(target: str) -> str:
    parts = target.split("/")
    return parts[2] if len(parts) > 2 else ""


def explain(case: Case, fast: Outcome, aio: Outcome) -> str | None:
    """Why the doors may differ on this case (a key of docs/security.md's table), or None
    when they may not. Each rule is narrow: it names what must hold for the difference
    to be the documented one, not merely that the outcomes differ."""
    # (a) Whole requests, then bytes aiohttp's parser refuses: aiohttp reads the whole
    # read at once and answers only its 400; the fast path answers each whole request as
    # it comes (as nginx does), then hands the rest to aiohttp, which answers the 400.
    k = len(fast.answers) - len(aio.answers)
    if (
        k > 0 and aio.answers and _parser_refusal(aio.answers[0])
        and fast.answers[k:] == aio.answers
        and fast.upstream[: len(aio.upstream)] == aio.upstream and fast.closed == aio.closed
    ):
        return "answered-before-refusal"
    # (d) Bytes after a request with `Connection: close`: the fast path answers that
    # request and closes, leaving them unread (as nginx does); aiohttp's parser refuses
    # them with a 400 that names the reason, and answers nothing else.
    if (
        len(aio.answers) == 1 and _parser_refusal(aio.answers[0])
        and b"data after `connection: close`" in aio.answers[0][1].lower()
        and not aio.upstream and fast.closed and aio.closed
        and len(fast.answers) <= len(fast.upstream) + 1
    ):
        return "bytes-after-close"
    # (e) Whole requests, the last refused as malformed (the proxy's own 400 or 505,
    # which ends the connection, as nginx's do), then more bytes: the fast path answers
    # up to that refusal and reads no further; aiohttp's parser, reading the whole read
    # at once, refuses something later in it first and answers only its 400.
    if (
        len(aio.answers) == 1 and _parser_refusal(aio.answers[0])
        and fast.answers and fast.answers[-1][0] in (400, 505)
        and fast.answers[-1][1].startswith(b"{")
        and fast.closed and aio.closed and not aio.upstream
        and len(fast.upstream) < len(fast.answers)
    ):
        return "refused-then-closed"
    # (c) A client that half-closes after its requests: the fast path answers the request
    # it had begun, then closes; aiohttp's server closes at once and answers nothing (a
    # request its handler had begun may still reach the upstream, its answer dropped).
    if case.half_close and not aio.answers and aio.closed and fast.closed:
        mine, theirs = [s[:3] for s in fast.upstream], [s[:3] for s in aio.upstream]
        shorter = min(len(mine), len(theirs))
        if mine[:shorter] == theirs[:shorter] and (fast.answers or len(theirs) <= 1):
            return "half-close"
    if fast.upstream != aio.upstream:
        # (b) aiohttp's parser reads field values as text and trims Unicode whitespace
        # (NEL \x85, NBSP \xa0) from their ends; the fast path forwards the bytes.
        if (fast.answers, fast.rest, fast.closed) == (aio.answers, aio.rest, aio.closed) and [
            _trimmed(seen) for seen in fast.upstream
        ] == [_trimmed(seen) for seen in aio.upstream]:
            return "obs-text-trimmed"
        return None  # otherwise, what reaches the upstream never differs
    return None
