"""Issue 17's table, row by row, through both front doors (`conftest`), with raw bytes on
both sides: what each client got and what the upstream received."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from proxy.observe.logs import AccessLog
from proxy.request.app import PROXY, create_app
from tests.support import StubVerifier, make_config
from tests.support_raw import RawUpstream, exchange, parse_answers


@dataclass
class Rig:
    proxy: TestServer
    upstream: RawUpstream
    log: io.StringIO

    @property
    def port(self) -> int:
        assert self.proxy.port is not None
        return self.proxy.port

    def log_lines(self) -> list[dict[str, Any]]:
        self.proxy.app[PROXY].access_log.flush()
        return [json.loads(line) for line in self.log.getvalue().splitlines()]


@pytest.fixture
async def rig(aiohttp_server: Any) -> AsyncIterator[Rig]:
    upstream = await RawUpstream().start()
    config = make_config(
        upstream.url,
        upstream={"read_timeout": 1},
        logging={"level": "INFO", "access_log": True},
    )
    app = create_app(config, verifier=StubVerifier())
    log = io.StringIO()
    app[PROXY].access_log = AccessLog(log)
    proxy = await aiohttp_server(app)
    yield Rig(proxy, upstream, log)
    await upstream.close()


def get(target: str, *fields: str, version: str = "1.1", method: str = "GET") -> bytes:
    lines = [f"{method} {target} HTTP/{version}", "Host: proxy.test", *fields, "", ""]
    return "\r\n".join(lines).encode("latin-1")


def status(data: bytes) -> int:
    """The status of the first answer (aiohttp's parser refusals are `HTTP/1.0 400`)."""
    assert data[:7] == b"HTTP/1." and data[8:9] == b" ", data[:80]
    return int(data[9:12])


def field(fields: list[tuple[bytes, bytes]], name: str) -> list[bytes]:
    return [v for k, v in fields if k.lower() == name.lower().encode()]


# --- 1: an upstream's extra answer reaches nobody ---------------------------------------


async def test_row1_an_extra_answer_never_reaches_the_next_request(rig: Rig) -> None:
    got = await exchange(rig.port, get("/public/a/extra") + get("/public/b/ok"), limit=4)
    answers, rest = parse_answers(got.data, got.closed)
    assert [a.body for a in answers] == [b"ok /public/a/extra", b"ok /public/b/ok"]
    assert rest == ""
    assert b"STOLEN" not in got.data
    # The connection that answered twice is closed, never reused.
    first = rig.upstream.received[0].conn
    assert rig.upstream.conns[first].closed
    assert rig.upstream.received[1].conn != first


async def test_row1_extra_answers_go_to_nobody_across_clients(rig: Rig) -> None:
    for i in range(3):
        got = await exchange(rig.port, get(f"/public/{i}/extra"), idle=0.1)
        answers, _ = parse_answers(got.data, got.closed)
        assert [a.body for a in answers] == [f"ok /public/{i}/extra".encode()]
    for i in range(3):
        got = await exchange(rig.port, get(f"/public/{i}/ok"), idle=0.1)
        answers, _ = parse_answers(got.data, got.closed)
        assert [a.body for a in answers] == [f"ok /public/{i}/ok".encode()]


async def test_row1_a_connection_is_pooled_once(rig: Rig, front_door: str) -> None:
    for _ in range(3):
        await exchange(rig.port, get("/public/a/extra") + get("/public/b/ok"), idle=0.1)
    if front_door == "fast":
        pool = rig.proxy.app[PROXY].fast_pool
        idle = pool._idle  # the invariant under test
        assert len(idle) == len(set(map(id, idle)))
        assert all(conn.transport is not None and not conn.transport.is_closing() for conn in idle)


async def test_row1_an_answer_arriving_later_on_an_idle_connection_is_dropped(rig: Rig) -> None:
    got = await exchange(rig.port, get("/public/a/extra-later"), idle=0.2)
    assert [a.body for a in parse_answers(got.data, got.closed)[0]] == [b"ok /public/a/extra-later"]
    got = await exchange(rig.port, get("/public/b/ok"), idle=0.2)
    assert [a.body for a in parse_answers(got.data, got.closed)[0]] == [b"ok /public/b/ok"]
    assert b"STOLEN" not in got.data


# --- 2: Expect: 100-continue ---------------------------------------------------------------


async def test_row2_expect_continue_is_answered_by_the_proxy_and_stripped(rig: Rig) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", rig.port)
    try:
        writer.write(
            b"POST /public/e/ok HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
    finally:
        writer.close()
    (seen,) = rig.upstream.received
    assert seen.body == b"hello"
    assert field(seen.fields, "Expect") == []


async def test_row2_a_refused_request_gets_no_100(rig: Rig) -> None:
    got = await exchange(
        rig.port,
        b"POST /api/x HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: 5\r\n"
        b"Expect: 100-continue\r\n\r\n",
        idle=0.5,
    )
    assert got.data.startswith(b"HTTP/1.1 401")
    assert rig.upstream.received == []


# --- 3, 4: leading empty lines ----------------------------------------------------------


@pytest.mark.parametrize("prefix", [b"\n", b"\r\n", b"\r\n\r\n"])
async def test_row3_a_head_request_after_empty_lines_is_a_head(rig: Rig, prefix: bytes) -> None:
    # Read on past the upstream's read timeout (1 s): a door waiting for a body would
    # answer 504 then.
    got = await exchange(rig.port, prefix + get("/public/h/ok", method="HEAD"), idle=1.5, head=True)
    assert got.data.startswith(b"HTTP/1.1 200")
    assert got.data.endswith(b"\r\n\r\n")  # no body, and no 504 after it
    assert [r.method for r in rig.upstream.received] == ["HEAD"]


@pytest.mark.parametrize("prefix", [b"\n\n\r", b"\n", b"\r\n"])
async def test_row4_no_cr_or_lf_reaches_the_request_line_or_the_log(
    rig: Rig, prefix: bytes
) -> None:
    got = await exchange(rig.port, prefix + get("/public/l/ok"), idle=0.3)
    if got.data.startswith(b"HTTP/1.1 400"):
        assert rig.upstream.received == []
    else:
        assert got.data.startswith(b"HTTP/1.1 200")
        (conn,) = rig.upstream.conns
        assert bytes(conn.data).startswith(b"GET /public/l/ok HTTP/1.1\r\n")
    for line in rig.log_lines():
        assert line["method"] in ("GET", "")


# --- 5, 6: Host and the field count ---------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"GET /public/x/ok HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /public/x/ok HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
        b"GET /public/x/ok HTTP/1.1\r\nAccept: */*\r\n\r\n",
    ],
    ids=["two", "same-twice", "none"],
)
async def test_row5_not_exactly_one_host_is_400(rig: Rig, head: bytes) -> None:
    got = await exchange(rig.port, head, idle=0.3)
    assert status(got.data) == 400
    assert rig.upstream.received == []


async def test_row5_an_http10_request_without_host_goes_up_with_the_upstreams(rig: Rig) -> None:
    got = await exchange(rig.port, b"GET /public/x/ok HTTP/1.0\r\n\r\n", idle=0.3)
    assert status(got.data) == 200
    (seen,) = rig.upstream.received
    assert field(seen.fields, "Host") == [f"127.0.0.1:{rig.upstream.port}".encode()]


@pytest.mark.parametrize(("count", "expected"), [(127, 200), (128, 200), (129, 400), (200, 400)])
async def test_row6_more_than_128_fields_is_400(rig: Rig, count: int, expected: int) -> None:
    fields = [f"X-F{i}: {i}" for i in range(count - 1)]
    got = await exchange(rig.port, get("/public/f/ok", *fields), idle=0.3)
    assert status(got.data) == expected
    assert len(rig.upstream.received) == (1 if expected == 200 else 0)


# --- 7: underscore spellings --------------------------------------------------------------


async def test_row7_underscore_spellings_of_special_fields_are_dropped(rig: Rig) -> None:
    spellings = [
        "Transfer_Encoding: chunked",
        "Content_Length: 5",
        "X_HTTP_Method_Override: DELETE",
        "X_Forwarded_For: 10.9.9.9",
        "X_Forwarded_Host: evil.test",
        "Proxy_Connection: keep-alive",
        "X_Auth_Principal_Id: mallory",
    ]
    got = await exchange(rig.port, get("/public/u/ok", *spellings, "X_Custom_Thing: kept"))
    assert got.data.startswith(b"HTTP/1.1 200")
    (seen,) = rig.upstream.received
    names = [k.lower() for k, _ in seen.fields]
    for spelling in spellings:
        assert spelling.split(":")[0].lower().encode() not in names
    assert field(seen.fields, "X_Custom_Thing") == [b"kept"]
    assert field(seen.fields, "X-Forwarded-For") == [b"127.0.0.1"]


# --- 8, 9, 10 ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["2.0", "3.0", "0.9"])
async def test_row8_a_version_other_than_1x_is_505(rig: Rig, version: str) -> None:
    got = await exchange(rig.port, get("/public/v/chunked", version=version), idle=0.3)
    assert status(got.data) in (505, 400)
    if version == "2.0":
        assert status(got.data) == 505
        body = json.loads(got.data.split(b"\r\n\r\n", 1)[1])
        assert body["error"]["code"] == "http_version_not_supported"
    assert rig.upstream.received == []


async def test_row8_a_505_ends_the_connection_and_what_follows_is_never_read(rig: Rig) -> None:
    # `make conformance` (generated head, nginx as the reference): a request line in a
    # version the proxy does not speak, then a well-formed request. The first line's
    # framing is unknowable, so nothing after it can be told apart from its body: nginx
    # answers 505 and closes; so must both doors, forwarding nothing. (Without
    # `keep-alive` llhttp itself refuses the bytes after such a head.)
    got = await exchange(
        rig.port,
        get("/public/v/ok", "Connection: keep-alive", version="2.0") + get("/public/after/ok"),
        idle=0.3,
    )
    answers, _ = parse_answers(got.data, got.closed)
    assert [a.status for a in answers] == [505]
    assert got.closed
    assert rig.upstream.received == []


async def test_row8_an_http10_request_with_transfer_encoding_is_400_and_closed(
    rig: Rig,
) -> None:
    # RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing (an
    # HTTP/1.0 hop in front may read it without a body, and "0\r\n\r\n" as the next
    # request). nginx refuses it (400, closed); found by `make conformance`.
    head = get("/public/t/ok", "Connection: keep-alive", "Transfer-Encoding: chunked", version="1.0")
    got = await exchange(rig.port, head + b"0\r\n\r\n" + get("/public/after/ok"), idle=0.3)
    answers, _ = parse_answers(got.data, got.closed)
    assert [a.status for a in answers] == [400]
    assert json.loads(answers[0].body)["error"]["code"] == "bad_request"
    assert got.closed
    assert rig.upstream.received == []


async def test_row8_two_authorization_fields_are_400_on_a_public_route_too(rig: Rig) -> None:
    # docs/spec.md: two Authorization headers are 400. A public route reads no token,
    # but forwarding both would leave the upstream to pick one (nginx refuses a second
    # Authorization line everywhere); found by `make conformance`.
    got = await exchange(
        rig.port, get("/public/a/ok", "Authorization: Basic Zm9vOmJhcg==", "Authorization: Bearer x")
    )
    answers, _ = parse_answers(got.data, got.closed)
    assert [a.status for a in answers] == [400]
    assert json.loads(answers[0].body)["error"]["code"] == "bad_request"
    assert rig.upstream.received == []


async def test_row8_a_400_ends_the_connection_as_nginx_does(rig: Rig) -> None:
    # A malformed request is answered and the connection ends: what follows it is not
    # read (nginx closes after a 400; `make conformance` found the proxy answering the
    # request pipelined behind a refused one). A refused token (401) keeps it: a
    # partner retries with a new token on the same connection.
    refused = get("/public/a/ok", "Authorization: Basic eDp5", "Authorization: Bearer x")
    got = await exchange(rig.port, refused + get("/public/after/ok"), idle=0.3)
    answers, _ = parse_answers(got.data, got.closed)
    assert [a.status for a in answers] == [400]
    assert got.closed
    assert rig.upstream.received == []
    got = await exchange(rig.port, get("/api/x") + get("/public/after/ok"), idle=0.3)
    answers, _ = parse_answers(got.data, got.closed)
    assert [a.status for a in answers] == [401, 200]


async def test_row8_two_expect_fields_are_400(rig: Rig) -> None:
    # The proxy answers `100 Continue` itself: which of two Expect fields holds? nginx
    # refuses a second Expect line; so does the proxy (found by `make conformance`).
    got = await exchange(
        rig.port, get("/public/e/ok", "Expect: 100-continue", "Expect: nothing"), idle=0.3
    )
    answers, _ = parse_answers(got.data, got.closed)
    assert [a.status for a in answers] == [400]
    assert got.closed
    assert rig.upstream.received == []


async def test_row9_an_http10_keep_alive_client_can_find_the_end(rig: Rig) -> None:
    got = await exchange(
        rig.port, get("/public/k/chunked", "Connection: keep-alive", version="1.0"), limit=3
    )
    head, _, body = got.data.partition(b"\r\n\r\n")
    lowered = head.lower()
    assert b"transfer-encoding" not in lowered
    assert b"content-length" in lowered or (b"\r\nconnection: close" in lowered and got.closed)
    assert body == b"ok /public/k/chunked"


async def test_row10_connection_cannot_name_host_away(rig: Rig) -> None:
    got = await exchange(rig.port, get("/public/c/ok", "Connection: Host, X-Drop", "X-Drop: 1"))
    assert got.data.startswith(b"HTTP/1.1 200")
    (seen,) = rig.upstream.received
    assert field(seen.fields, "Host") == [b"proxy.test"]
    assert field(seen.fields, "X-Drop") == []


# --- 2 with real clients -----------------------------------------------------------------


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_row2_curl_sends_a_large_body_with_expect(rig: Rig, tmp_path: Path) -> None:
    """curl sends `Expect: 100-continue` on its own for a body over 1 MiB (over 1 KiB in
    older versions) and waits (here up to 30 s) for the 100: `-v` shows whether it came."""
    body = tmp_path / "body"
    body.write_bytes(b"x" * 2_000_000)
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sv", "--expect100-timeout", "30", "--data-binary", f"@{body}",
        "-H", "Content-Type: application/octet-stream",
        f"http://127.0.0.1:{rig.port}/public/curl/ok",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err
    assert b"> Expect: 100-continue" in err
    assert b"< HTTP/1.1 100 Continue" in err
    assert out == b"ok /public/curl/ok"
    (seen,) = rig.upstream.received
    assert len(seen.body) == 2_000_000
    assert field(seen.fields, "Expect") == []


async def test_row2_aiohttp_client_with_expect100(rig: Rig) -> None:
    async with aiohttp.ClientSession() as client:
        async with client.post(
            f"http://127.0.0.1:{rig.port}/public/aio/ok", data=b"y" * 5000, expect100=True,
            timeout=aiohttp.ClientTimeout(total=10),
        ) as resp:
            assert resp.status == 200
            assert await resp.read() == b"ok /public/aio/ok"
    (seen,) = rig.upstream.received
    assert seen.body == b"y" * 5000
    assert field(seen.fields, "Expect") == []


# --- the differences the issue saw where nothing reached the upstream ---------------------


async def test_a_fragment_in_the_query_is_refused(rig: Rig) -> None:
    got = await exchange(rig.port, get("/public/q/ok?a=1#frag"), idle=0.3)
    assert status(got.data) == 400
    assert rig.upstream.received == []


async def test_an_unasked_101_is_502_and_the_tunnel_reaches_nobody(rig: Rig) -> None:
    got = await exchange(rig.port, get("/public/s/switch") + get("/public/s/ok"), limit=4)
    answers, _ = parse_answers(got.data, got.closed)
    assert [a.status for a in answers][:1] == [502]
    assert b"RAW-TUNNEL" not in got.data


async def test_a_head_in_pieces_is_answered_as_aiohttp_would(rig: Rig) -> None:
    """Bare-LF heads never show CRLFCRLF: refused at once, not waited on."""
    got = await exchange(rig.port, b"GET /public/p/ok HTTP/1.1\nHost: proxy.test\n\n", idle=0.3)
    assert status(got.data) == 400
    assert got.closed


# --- issue 26, row 17: a request line without a version -----------------------------------


@pytest.mark.parametrize(
    "line",
    [b"GET /public/n/ok\r\n", b"GET /public/n/ok\n", b"GET /\r\n", b"GET /public/n/ok \r\n"],
)
async def test_a_request_line_without_a_version_is_400_at_once(rig: Rig, line: bytes) -> None:
    """HTTP/0.9's simple request (`GET /path` and the line's end, nothing more): the client
    waits for an answer, so one must come now, not when the head timeout (30 s) ends the
    connection. `limit` is far under that timeout: this is not a timing claim."""
    got = await exchange(rig.port, line, idle=0.3, limit=5.0)
    assert got.data, "no answer before the client gave up"
    assert status(got.data) == 400
    assert got.closed
    assert rig.upstream.received == []


async def test_a_versionless_line_in_pieces_and_after_a_request_is_400_too(
    rig: Rig, front_door: str
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", rig.port)
    try:
        writer.write(b"GET /public/n/o")
        await writer.drain()
        await asyncio.sleep(0.05)  # two reads, not one
        writer.write(b"k\r\n")
        got = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert status(got) == 400
    if front_door == "fast":
        # Pipelined behind a request: that one answered, then the 400. (aiohttp's door
        # parses a read whole, and waits for the rest of the second head as for any.)
        got = await exchange(rig.port, get("/public/a/ok") + b"GET /public/b/ok\r\n", limit=5)
        answers, _ = parse_answers(got.data, got.closed)
        assert [a.status for a in answers] == [200, 400] and got.closed
        assert [r.target for r in rig.upstream.received] == ["/public/a/ok"]
