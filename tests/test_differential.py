"""One behaviour, whichever door: the same raw bytes through the fast path's listener and
through aiohttp's server alone (each with its own recording upstream), compared on what
the client received and what the upstream received (`support_differential`).

Seeded with the pinned public corpora (tests/corpus) and a hypothesis generator of heads,
pipelines, upstream framings and misbehaving upstreams; `make fuzz` runs the generator far
longer and keeps what fails in tests/corpus/regressions.json, which this suite replays."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.support_differential import (
    CORPUS,
    Case,
    Doors,
    corpus_cases,
    explain,
    regression_cases,
    tagged,
)

BATCH = 100
EXAMPLES = int(os.environ.get("DIFFERENTIAL_EXAMPLES", "16"))
FUZZING = os.environ.get("DIFFERENTIAL_FUZZ") == "1"
# Tags unique across examples: each example's upstream records are its own.
_TAGS = itertools.count()


@pytest.fixture
async def doors() -> AsyncIterator[Doors]:
    started = await Doors.start()
    yield started
    await started.close()


def unexplained(results: list[tuple[Case, object, object]]) -> list[str]:
    out = []
    for case, fast, aio in results:
        if fast == aio or explain(case, fast, aio) is not None:  # type: ignore[arg-type]
            continue
        out.append(f"{case.source} {case.raw[:200]!r}\n  fast: {fast.brief()}\n  aio:  {aio.brief()}")  # type: ignore[attr-defined]
    return out


async def test_public_corpora_through_both_doors(doors: Doors) -> None:
    cases = [*corpus_cases(), *regression_cases()]
    assert len(cases) > 3500
    results = await doors.run(cases)
    problems = unexplained(results)
    assert not problems, f"{len(problems)} unexplained differences:\n" + "\n".join(problems[:20])


# --- the generator ------------------------------------------------------------------------

# Not "extra-later": an unsolicited answer that arrives after the connection was taken
# again races the next request's answer in either door (docs/security.md); the rows'
# tests (test_front_door_rows) cover it where the order is known.
BEHAVIOURS = ["ok", "ok", "ok", "chunked", "close", "extra", "early", "continue", "switch",
              "reset", "never", "nocontent", "badframe"]
FIELDS = [
    "Accept: */*", "Authorization: Bearer good-machine", "Authorization: Bearer bad",
    "Authorization: Basic Zm9vOmJhcg==", "Connection: close", "Connection: keep-alive",
    "Connection: Host", "Connection: X-Drop", "X-Drop: 1", "X-Auth-Principal-Id: mallory",
    "X_Auth_Principal_Id: mallory", "Transfer_Encoding: chunked", "Content_Length: 3",
    "X-HTTP-Method-Override: DELETE", "X_HTTP_Method_Override: PUT", "X-Forwarded-For: 1.2.3.4",
    "X_Forwarded_For: 1.2.3.4", "Forwarded: for=1.2.3.4", "Upgrade: h2c", "Upgrade: websocket",
    "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA", "Expect: 100-continue", "Expect: nothing",
    "TE: trailers", "Keep-Alive: timeout=5", "Proxy-Connection: keep-alive", "Cookie: a=1",
    "Host: other.test", "X-Long: " + "v" * 300, "X-Empty:", "x-lower: v", "X-Tab:\tv",
]
PATHS = ["/public/{b}", "/api/x/{b}", "/public/a/../{b}", "/public/%2e%2e/{b}", "//public/{b}",
         "/public/x?q=1#frag/{b}", "/public/x;p/{b}", "/healthz", "/public/{b}?a=%00",
         "/socket.io/?EIO=4&transport=polling&t={b}", "*"]


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(["GET", "GET", "DELETE", "OPTIONS", "HEAD", "POST", "PUT"]))
    path = draw(st.sampled_from(PATHS)).format(b=draw(st.sampled_from(BEHAVIOURS)))
    version = draw(st.sampled_from(["1.1", "1.1", "1.1", "1.0", "2.0", "1.2"]))
    fields = draw(st.lists(st.sampled_from(FIELDS), max_size=5))
    if draw(st.integers(0, 9)) > 0:
        fields.insert(draw(st.integers(0, len(fields))), f"Host: {'proxy.test'}")
    body = b""
    if method in ("POST", "PUT") or draw(st.integers(0, 5)) == 0:
        body = draw(st.sampled_from([b"", b"abc", b"x" * 100]))
        framing = draw(st.sampled_from(["length", "chunked", "none"]))
        if framing == "length":
            fields.append(f"Content-Length: {len(body)}")
        elif framing == "chunked":
            fields.append("Transfer-Encoding: chunked")
            body = (b"%x\r\n%b\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
        else:
            body = b""
    lead = draw(st.sampled_from([b"", b"", b"", b"\r\n", b"\n"]))
    return lead + f"{method} {path} HTTP/{version}\r\n".encode() + "".join(
        f"{f}\r\n" for f in fields
    ).encode("latin-1") + b"\r\n" + body


@st.composite
def cases(draw: st.DrawFn) -> tuple[bytes, bool]:
    pipeline = b"".join(draw(st.lists(heads(), min_size=1, max_size=3)))
    tail = draw(st.sampled_from([b"", b"", b"", b"garbage\r\n\r\n", b"GET /public/x", b"\x00"]))
    return pipeline + tail, draw(st.integers(0, 9)) == 0


RUN = f"{os.getpid()}-{next(_TAGS)}"


def keep_failing(failing: list[tuple[bytes, bool]]) -> None:
    """`make fuzz`: the cases a failing batch disagreed on join the regressions the suite
    replays. Each failing run of a batch replaces this fuzz run's earlier ones, so what
    stays is the last — hypothesis ends on the shrunk example."""
    path = CORPUS / "regressions.json"
    data = json.loads(path.read_text())
    kept = [entry for entry in data["cases"] if entry.get("run") != RUN]
    kept += [{"raw": raw.decode("latin-1"), "half_close": half_close, "run": RUN}
             for raw, half_close in failing]
    data["cases"] = kept
    path.write_text(json.dumps(data, indent=1) + "\n")


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not FUZZING,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
    database=None if not FUZZING else settings.default.database,
    # In `make test` a failure is reported as found (shrinking a batch takes minutes);
    # `make fuzz` shrinks it to the case that differs.
    phases=[Phase.explicit, Phase.generate, *([Phase.shrink] if FUZZING else [])],
)
@given(batch=st.lists(cases(), min_size=BATCH, max_size=BATCH))
async def test_generated_heads_pipelines_and_upstreams(
    doors: Doors, batch: list[tuple[bytes, bool]]
) -> None:
    tags = [f"g{next(_TAGS)}" for _ in batch]
    run = [Case(tag, tagged(raw, tag), half_close, "generated")
           for tag, (raw, half_close) in zip(tags, batch, strict=True)]
    problems, failing = [], []
    for case, fast, aio in await doors.run(run):
        if fast != aio and explain(case, fast, aio) is None:
            failing.append(batch[tags.index(case.tag)])
            problems.append(f"{case.raw!r} half_close={case.half_close}\n  fast: {fast.brief()}"
                            f"\n  aio:  {aio.brief()}")
    if failing and FUZZING:
        keep_failing(failing)
    assert not problems, f"{len(problems)} unexplained differences:\n" + "\n".join(problems[:10])
