"""Forward-auth mode (`forward_auth:`, proxy/request/forward_auth.py) as an ingress uses
it: a real nginx (Debian's, `auth_request` + `auth_request_set`) serving the example
config the docs ship (deploy/nginx/forward-auth.conf) in front of a recording upstream,
asking a real `clerk-auth-proxy run` process, with the Clerk emulator as Clerk. And the
listener asked directly, as Traefik and ingress-nginx describe a request."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import unused_port
from multidict import CIMultiDictProxy

from proxy.config.load import ConfigError, Listen
from proxy.core.principal import FIELDS
from proxy.emulator.app import ClerkEmulator
from proxy.request.forward_auth import ENVOY_PREFIX, ENVOY_REMOVE_FIELD
from tests.support import Recorder, header_values, make_config
from tests.support_nginx import Nginx
from tests.support_raw import exchange, parse_answers
from tests.test_process import ROOT, Running, start, upstream, write_config

__all__ = ["upstream"]  # the fixture, used by name

EXAMPLE = ROOT / "deploy" / "nginx" / "forward-auth.conf"
NGINX_HTTP = """
  upstream api {{ server 127.0.0.1:{api}; keepalive 8; }}
  upstream clerk_auth_proxy {{ server 127.0.0.1:{forward_auth}; keepalive 8; }}
  server {{
    listen 127.0.0.1:{{port}};
    include {example};
  }}
"""
PRINCIPAL_FIELDS = tuple("X-Auth-" + f.header for f in FIELDS if f.header is not None)


@dataclass
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Stack:
    emulator: ClerkEmulator
    recorder: Recorder
    proxy: Running
    nginx: Nginx
    forward_auth_port: int
    client: aiohttp.ClientSession

    async def _get(self, url: str, token: str | None, headers: dict[str, str]) -> Answer:
        sent = dict(headers)
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        async with self.client.get(url, headers=sent) as resp:
            return Answer(resp.status, resp.headers, await resp.read())

    async def via_nginx(self, path: str, token: str | None = None, **headers: str) -> Answer:
        return await self._get(f"http://127.0.0.1:{self.nginx.port}{path}", token, headers)

    async def ask(self, token: str | None = None, **headers: str) -> Answer:
        """The forward-auth listener itself, as an asking proxy would."""
        url = f"http://127.0.0.1:{self.forward_auth_port}/auth"
        return await self._get(url, token, {k.replace("_", "-"): v for k, v in headers.items()})

    def upstream_fields(self) -> list[tuple[str, str]]:
        return self.recorder.last.headers


Build = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def stack(
    tmp_path: Path, aiohttp_server: Any, upstream: tuple[str, Recorder]
) -> AsyncIterator[Build]:
    url, recorder = upstream
    opened: list[tuple[Running, Nginx, aiohttp.ClientSession]] = []

    async def build(**overrides: Any) -> Stack:
        emulator = ClerkEmulator("sk_test_e2e")
        clerk = await aiohttp_server(emulator.app)
        forward_auth_port = unused_port()
        config = tmp_path / "c.yaml"
        port, admin = write_config(
            config,
            url,
            clerk={"api_url": str(clerk.make_url("")).rstrip("/"), "secret_key": "sk_test_e2e"},
            forward_auth={"enabled": True, "host": "127.0.0.1", "port": forward_auth_port},
            trusted_proxies=["127.0.0.1/32"],
            **overrides,
        )
        running = await start(config, port, admin)
        api_port = int(url.rsplit(":", 1)[1])
        nginx = Nginx(
            NGINX_HTTP.format(api=api_port, forward_auth=forward_auth_port, example=EXAMPLE)
        )
        client = aiohttp.ClientSession()
        opened.append((running, nginx, client))
        await nginx.start()
        return Stack(emulator, recorder, running, nginx, forward_auth_port, client)

    yield build
    for running, nginx, client in opened:
        await client.close()
        nginx.stop()
        if running.proc.returncode is None:
            running.proc.terminate()
            await running.proc.wait()


def m2m(emulator: ClerkEmulator) -> tuple[str, str, str]:
    """A partner's M2M token: (secret, token id, machine id)."""
    api = emulator.create_machine("scores-api")
    partner = emulator.create_machine("partner", scoped_machines=[api.id])
    token = emulator.create_m2m_token(partner.id, claims={"tier": "gold"})
    return token.secret, token.id, partner.id


def assert_refused_intact(answer: Answer, status: int, code: str) -> dict[str, Any]:
    """The proxy's own refusal, as its sidecar door answers it (errors.ProxyError)."""
    assert answer.status == status, (answer.status, answer.body)
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.headers.getall("Cache-Control") == ["no-store"]
    body: dict[str, Any] = answer.json()
    assert body["error"]["code"] == code
    return body


async def assert_as_asked(s: Stack, answer: Answer, path: str, token: str | None) -> None:
    """`answer` (through nginx) is what the listener answers the same question: status,
    body and the fields a refusal carries."""
    direct = await s.ask(token, X_Original_URI=path, X_Original_Method="GET")
    assert (answer.status, answer.body) == (direct.status, direct.body)
    for name in ("Content-Type", "Cache-Control", "WWW-Authenticate", "Retry-After"):
        assert answer.headers.getall(name, []) == direct.headers.getall(name, []), name


# --- through nginx ------------------------------------------------------------------------


async def test_nginx_passes_the_verified_principal_and_nothing_a_client_sent(stack: Build) -> None:
    s = await stack()
    secret, token_id, machine_id = m2m(s.emulator)
    forged = {"X-Auth-Principal-Id": "user_forged", "X-Auth-Issuer": "forged"}
    answer = await s.via_nginx("/api/v1/matches?day=1", secret, **forged)
    assert answer.status == 200, answer.body
    seen = s.upstream_fields()
    assert s.recorder.last.raw_path == "/api/v1/matches?day=1"
    assert header_values(seen, "X-Auth-Principal-Type") == ["machine"]
    assert header_values(seen, "X-Auth-Principal-Id") == [machine_id]
    assert header_values(seen, "X-Auth-Token-Type") == ["m2m_token"]
    assert header_values(seen, "X-Auth-Token-Id") == [token_id]
    assert header_values(seen, "X-Auth-Claims") == ['{"tier":"gold"}']
    assert header_values(seen, "X-Auth-Issuer") == []  # Clerk's: absent, forged copy gone
    assert header_values(seen, "Authorization") == []
    assert secret not in json.dumps(seen)
    # The second time from the cache: Clerk is asked once.
    assert (await s.via_nginx("/api/v1/matches", secret)).status == 200
    assert s.emulator.calls["m2m_verify"] == 1


async def test_nginx_anonymous_routes_carry_the_anonymous_principal_only(stack: Build) -> None:
    s = await stack()
    forged = {"X-Auth-Principal-Type": "machine", "X-Auth-Principal-Id": "mch_forged"}
    for path, token in (("/public/x", None), ("/optional/x", "not-a-token"), ("/optional/y", None)):
        answer = await s.via_nginx(path, token, **forged)
        assert answer.status == 200, (path, answer.body)
        seen = s.upstream_fields()
        assert header_values(seen, "X-Auth-Principal-Type") == ["anonymous"], path
        for name in PRINCIPAL_FIELDS[1:]:
            assert header_values(seen, name) == [], (path, name)


async def test_nginx_refusals_reach_the_client_intact(stack: Build) -> None:
    s = await stack()
    secret, token_id, _ = m2m(s.emulator)

    body = assert_refused_intact(await s.via_nginx("/api/v1/matches"), 401, "token_missing")
    missing = await s.via_nginx("/api/v1/matches")
    assert missing.headers.getall("WWW-Authenticate") == ["Bearer"]
    assert "requires a bearer token" in body["error"]["message"]
    await assert_as_asked(s, missing, "/api/v1/matches", None)

    answer = await s.via_nginx("/api/v1/matches", token_id)
    body = assert_refused_intact(answer, 401, "token_id_not_secret")
    assert "secret" in body["error"]["message"]
    (challenge,) = answer.headers.getall("WWW-Authenticate")
    assert challenge.startswith('Bearer error="invalid_token"')
    await assert_as_asked(s, answer, "/api/v1/matches", token_id)

    answer = await s.via_nginx("/admin/x", secret)
    assert_refused_intact(answer, 403, "insufficient_scope")
    assert answer.headers.getall("WWW-Authenticate") == [
        'Bearer error="insufficient_scope", scope="scores:admin"'
    ]
    await assert_as_asked(s, answer, "/admin/x", secret)

    # A target the policy refuses to normalize: an encoded '/'.
    answer = await s.via_nginx("/public/a%2Fb", secret)
    assert_refused_intact(answer, 400, "bad_request")
    await assert_as_asked(s, answer, "/public/a%2Fb", secret)

    s.emulator.set_fault("down")
    fresh = s.emulator.create_m2m_token(s.emulator.create_machine("other").id)
    answer = await s.via_nginx("/api/v1/matches", fresh.secret)
    assert_refused_intact(answer, 503, "verification_unavailable")
    assert int(answer.headers["Retry-After"]) >= 0
    s.emulator.clear_faults()

    assert s.recorder.seen == []  # none of them reached the upstream

    # Another proxy's description from the client is cleared, not judged (nor refused).
    others = {
        "X-Forwarded-Uri": "/public/x",
        "X-Forwarded-Method": "GET",
        "X-Original-URL": "http://h/public/x",
    }
    assert_refused_intact(await s.via_nginx("/api/v1/matches", **others), 401, "token_missing")
    assert (await s.via_nginx("/api/v1/matches", secret, **others)).status == 200
    assert s.recorder.last.raw_path == "/api/v1/matches"
    assert sum(s.emulator.calls.values()) >= 1  # the 503 was Clerk's doing


async def test_nginx_budget_refusal_reaches_the_client_as_429(stack: Build) -> None:
    s = await stack(verification_budget={"per_ip": {"rate": 0.001, "burst": 1}})
    first = s.emulator.create_m2m_token(s.emulator.create_machine("a").id)
    second = s.emulator.create_m2m_token(s.emulator.create_machine("b").id)
    assert (await s.via_nginx("/api/v1/matches", first.secret)).status == 200
    answer = await s.via_nginx("/api/v1/matches", second.secret)
    assert_refused_intact(answer, 429, "verification_budget_exceeded")
    assert int(answer.headers["Retry-After"]) >= 1
    assert len(s.recorder.seen) == 1


async def test_nginx_leaves_the_apis_own_answers_alone_and_judges_what_it_routes(
    stack: Build,
) -> None:
    """`error_page` catches nginx's own 401/403/500 (auth_request's), not the API's; and
    an absolute-form target is judged by the path nginx routes, not by its host part."""
    s = await stack()
    secret, _, _ = m2m(s.emulator)
    for code in (401, 403, 500):
        answer = await s.via_nginx(f"/public/status/{code}")
        assert (answer.status, answer.body) == (code, b""), code
        assert "X-Forward-Auth-Refusal" not in answer.headers
    s.recorder.seen.clear()
    head = f"GET http://h/public/../admin/x HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {secret}\r\n"
    got = await exchange(s.nginx.port, (head + "Connection: close\r\n\r\n").encode())
    (answer,), _ = parse_answers(got.data, got.closed)
    assert answer.status == 403, answer
    assert json.loads(answer.body)["error"]["code"] == "insufficient_scope"
    assert s.recorder.seen == []


# --- the listener asked directly -----------------------------------------------------------


async def test_each_asking_proxys_description_is_judged(stack: Build) -> None:
    s = await stack()
    secret, _, machine_id = m2m(s.emulator)
    descriptions = [
        {"X_Original_URI": "/api/v1/matches", "X_Original_Method": "GET"},
        {"X_Original_URL": "https://api.example/api/v1/matches?x=1", "X_Original_Method": "GET"},
        {  # ingress-nginx with `auth-method`: the URL and the target, naming the same
            "X_Original_URL": "https://api.example/api/v1/matches?x=1",
            "X_Original_URI": "/api/v1/matches?x=1",
            "X_Original_Method": "GET",
        },
        {"X_Forwarded_Uri": "/api/v1/matches", "X_Forwarded_Method": "GET"},
    ]
    for described in descriptions:
        answer = await s.ask(secret, **described)
        assert answer.status == 200, (described, answer.body)
        assert answer.headers["X-Auth-Principal-Id"] == machine_id
        assert answer.body == b""
        assert not [k for k in answer.headers if k.lower().startswith("x-auth-") and k not in PRINCIPAL_FIELDS]
        admin = await s.ask(secret, **{k: v.replace("/api/v1/matches", "/admin/x") for k, v in described.items()})
        assert_refused_intact(admin, 403, "insufficient_scope")
        assert json.loads(admin.headers["X-Forward-Auth-Refusal"]) == admin.json()


async def test_a_second_description_is_refused_not_chosen(stack: Build) -> None:
    """Asking proxies pass the client's fields along: a Traefik client adding an
    X-Original-URI that names a public path must not get /admin judged as public."""
    s = await stack()
    secret, _, _ = m2m(s.emulator)
    attack = {
        "X_Forwarded_Uri": "/admin/x",
        "X_Forwarded_Method": "GET",
        "X_Original_URI": "/public/x",
        "X_Original_Method": "GET",
    }
    assert_refused_intact(await s.ask(secret, **attack), 400, "bad_request")
    no_method = {"X_Original_URI": "/public/x"}
    assert_refused_intact(await s.ask(secret, **no_method), 400, "bad_request")
    assert_refused_intact(await s.ask(secret), 400, "bad_request")
    relative = {"X_Original_URL": "/public/x", "X_Original_Method": "GET"}
    assert_refused_intact(await s.ask(secret, **relative), 400, "bad_request")
    disagreeing = {
        "X_Original_URL": "https://h/admin/x",
        "X_Original_URI": "/public/x",
        "X_Original_Method": "GET",
    }
    assert_refused_intact(await s.ask(secret, **disagreeing), 400, "bad_request")


async def test_the_judged_method_picks_the_route(stack: Build) -> None:
    """`health` is GET-only and public: a POST to /healthz falls to the default route."""
    s = await stack()
    get = await s.ask(None, X_Original_URI="/healthz", X_Original_Method="GET")
    assert get.status == 200 and get.headers["X-Auth-Principal-Type"] == "anonymous"
    post = await s.ask(None, X_Original_URI="/healthz", X_Original_Method="POST")
    assert_refused_intact(post, 401, "token_missing")


async def test_forward_auth_decisions_are_counted_and_logged_as_requests(stack: Build) -> None:
    s = await stack()
    await s.ask(None, X_Original_URI="/public/x", X_Original_Method="GET")
    await s.ask(None, X_Original_URI="/api/v1/matches", X_Original_Method="GET")
    async with s.client.get(s.proxy.admin_url("/metrics")) as resp:
        metrics = await resp.text()
    assert 'authproxy_requests_total{code="200",method="GET",route="public"} 1.0' in metrics
    assert 'authproxy_requests_total{code="401",method="GET",route="default"} 1.0' in metrics
    s.proxy.proc.terminate()  # the access log is written in batches; the last at exit
    await s.proxy.wait_log("stopped")
    assert await s.proxy.proc.wait() == 0  # both listeners drained
    access = [line for line in s.proxy.lines if line.get("msg") == "request"]
    assert [(line["route"], line["status"]) for line in access] == [("public", 200), ("default", 401)]


async def test_a_question_in_flight_is_answered_through_the_drain(stack: Build) -> None:
    s = await stack()
    secret, _, _ = m2m(s.emulator)
    s.emulator.set_fault("slow", seconds=0.5)
    question = asyncio.create_task(
        s.ask(secret, X_Original_URI="/api/v1/matches", X_Original_Method="GET")
    )
    for _ in range(500):
        if s.emulator.calls["m2m_verify"]:  # asked of Clerk: the question is in flight
            break
        await asyncio.sleep(0.01)
    s.proxy.proc.send_signal(signal.SIGTERM)
    answer = await question
    assert answer.status == 200, answer.body
    assert await s.proxy.proc.wait() == 0


async def test_a_kept_alive_asking_connection_is_timed_per_question(stack: Build) -> None:
    """The ingress keeps its connections to the listener open: between questions the
    connection is idle (`connections.idle_timeout`), not a head still arriving
    (`head_timeout`, which would cut it with a 408)."""
    s = await stack(connections={"head_timeout": 1, "idle_timeout": 30})
    reader, writer = await asyncio.open_connection("127.0.0.1", s.forward_auth_port)
    question = (
        b"GET /auth HTTP/1.1\r\nHost: fa\r\n"
        b"X-Original-URI: /public/x\r\nX-Original-Method: GET\r\n\r\n"
    )
    try:
        for _ in range(2):
            writer.write(question)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200 "), head
            assert b"X-Auth-Principal-Type: anonymous" in head
            await asyncio.sleep(1.6)  # past head_timeout (the sweep looks every 0.25 s)
    finally:
        writer.close()


async def test_workers_share_the_forward_auth_port(stack: Build) -> None:
    """`workers: 2`: each worker listens on the forward-auth port too (SO_REUSEPORT);
    without it the second could not, and the parent would stop them both."""
    s = await stack(workers=2)
    for _ in range(200):
        if len([line for line in s.proxy.lines if line.get("msg") == "serving"]) == 2:
            break
        await asyncio.sleep(0.05)
    serving = [line for line in s.proxy.lines if line.get("msg") == "serving"]
    assert [line["forward_auth"] for line in serving] == [f"127.0.0.1:{s.forward_auth_port}"] * 2
    secret, _, machine_id = m2m(s.emulator)
    for _ in range(4):
        answer = await s.ask(secret, X_Original_URI="/api/v1/matches", X_Original_Method="GET")
        assert answer.headers["X-Auth-Principal-Id"] == machine_id
    assert s.proxy.proc.returncode is None


# --- asked as Envoy's ext_authz HTTP service asks ------------------------------------------


@dataclass
class EnvoyAnswer:
    status: int
    fields: list[tuple[str, str]]
    body: bytes

    def get(self, name: str) -> list[str]:
        return header_values(self.fields, name)

    def removals(self) -> set[str]:
        (value,) = self.get(ENVOY_REMOVE_FIELD)
        return {name.strip() for name in value.split(",") if name.strip()}


class EnvoyAsker:
    """Envoy's ext_authz filter with an `http_service` (`path_prefix: /ext_authz`), as its
    HTTP client writes a check request (Envoy itself is not installable here): the client
    request's own method, and its path and query behind the prefix, as the request line;
    its authority as `host`; the allowed fields in lower case (Authorization always, here
    also x-request-id and whatever a test passes as a permissive `allowed_headers` would);
    `content-length: 0` and no body; one kept-alive connection for every question."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def check(
        self,
        method: str,
        path: str,
        token: str | None = None,
        *,
        prefix: str = ENVOY_PREFIX,
        fields: tuple[tuple[str, str], ...] = (),
    ) -> EnvoyAnswer:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        head = f"{method} {prefix}{path} HTTP/1.1\r\nhost: api.example.com\r\n"
        if token is not None:
            head += f"authorization: Bearer {token}\r\n"
        head += "x-request-id: 5b3c1e0e-envoy\r\n"
        head += "".join(f"{name.lower()}: {value}\r\n" for name, value in fields)
        self.writer.write((head + "content-length: 0\r\n\r\n").encode("latin-1"))
        raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        status_line, *lines = raw.decode("latin-1").split("\r\n")[:-2]
        parsed = [(k, v.strip()) for k, _, v in (line.partition(":") for line in lines)]
        (length,) = header_values(parsed, "Content-Length")
        body = await asyncio.wait_for(self.reader.readexactly(int(length)), 10)
        return EnvoyAnswer(int(status_line.split()[1]), parsed, body)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def envoy_upstream(
    client: list[tuple[str, str]], answer: EnvoyAnswer, allowed: str = "x-auth-"
) -> list[tuple[str, str]]:
    """The fields the upstream gets once Envoy applied an OK answer: each answer field
    matching `allowed_upstream_headers` (`prefix: x-auth-`) replaces the client's, then
    the names in x-envoy-auth-headers-to-remove are removed."""
    setting = [(k, v) for k, v in answer.fields if k.lower().startswith(allowed)]
    replaced = {k.lower() for k, _ in setting}
    kept = [(k, v) for k, v in client if k.lower() not in replaced]
    return [(k, v) for k, v in kept + setting if k.lower() not in answer.removals()]


async def test_envoy_ext_authz_judges_the_check_requests_own_line(stack: Build) -> None:
    s = await stack()
    secret, token_id, machine_id = m2m(s.emulator)
    envoy = EnvoyAsker(s.forward_auth_port)
    try:
        ok = await envoy.check("GET", "/api/v1/matches?day=1", secret)
        assert ok.status == 200, ok.body
        assert ok.body == b""
        assert ok.get("X-Auth-Principal-Id") == [machine_id]
        assert ok.get("X-Auth-Token-Id") == [token_id]
        assert ok.get("X-Forward-Auth-Refusal") == []
        # What the upstream gets: the principal, no forged copy, no token.
        client = [
            ("Authorization", f"Bearer {secret}"),
            ("X-Auth-Issuer", "forged"),
            ("X-Auth-Principal-Id", "user_forged"),
            ("Accept", "application/json"),
        ]
        upstream = envoy_upstream(client, ok)
        assert header_values(upstream, "X-Auth-Principal-Id") == [machine_id]
        assert header_values(upstream, "X-Auth-Issuer") == []
        assert header_values(upstream, "Authorization") == []
        assert header_values(upstream, "Accept") == ["application/json"]
        absent = {n.lower() for n in PRINCIPAL_FIELDS if not ok.get(n)}
        assert ok.removals() == absent | {"authorization"}
        assert "x-auth-issuer" in absent

        # The same question again, from the cache; the method comes from the line.
        assert (await envoy.check("GET", "/api/v1/matches", secret)).status == 200
        assert s.emulator.calls["m2m_verify"] == 1
        health = await envoy.check("GET", "/healthz")
        assert health.status == 200 and health.get("X-Auth-Principal-Type") == ["anonymous"]
        assert health.removals() == {n.lower() for n in PRINCIPAL_FIELDS[1:]} | {"authorization"}
        post = await envoy.check("POST", "/healthz")
        assert post.status == 401 and json.loads(post.body)["error"]["code"] == "token_missing"

        # Denials: status, JSON body and fields, as the sidecar answers (Envoy passes a
        # denial's status, body and fields on); no X-Forward-Auth-Refusal copy.
        admin = await envoy.check("GET", "/admin/x", secret)
        assert admin.status == 403
        assert json.loads(admin.body)["error"]["code"] == "insufficient_scope"
        assert admin.get("WWW-Authenticate") == [
            'Bearer error="insufficient_scope", scope="scores:admin"'
        ]
        assert admin.get("Cache-Control") == ["no-store"]
        assert admin.get("X-Forward-Auth-Refusal") == []
        missing = await envoy.check("GET", "/api/v1/matches")
        assert missing.status == 401 and missing.get("WWW-Authenticate") == ["Bearer"]
        slash = await envoy.check("GET", "/public/a%2Fb", secret)
        assert slash.status == 400 and json.loads(slash.body)["error"]["code"] == "bad_request"
        assert s.recorder.seen == []  # nothing is forwarded by the listener
    finally:
        envoy.close()


async def test_envoy_questions_never_read_description_fields(stack: Build) -> None:
    """Envoy passes whatever fields its allowed_headers match, a client's included (and
    an ingress-nginx in front sets X-Original-URI on every request): under the prefix the
    request line is the description, whatever fields say — a client naming a public path
    in them still has /admin judged."""
    s = await stack()
    secret, _, _ = m2m(s.emulator)
    claims_public = (
        ("X-Original-URI", "/public/x"),
        ("X-Original-Method", "GET"),
        ("X-Forwarded-Uri", "/public/x"),
        ("X-Forwarded-Method", "GET"),
        ("X-Original-URL", "https://api.example.com/public/x"),
    )
    envoy = EnvoyAsker(s.forward_auth_port)
    try:
        admin = await envoy.check("GET", "/admin/x", secret, fields=claims_public)
        assert admin.status == 403, admin.body
        anonymous = await envoy.check("GET", "/api/v1/matches", fields=claims_public)
        assert anonymous.status == 401
        claims_admin = (("X-Forwarded-Uri", "/admin/x"), ("X-Forwarded-Method", "GET"))
        public = await envoy.check("GET", "/public/x", fields=claims_admin)
        assert public.status == 200 and public.get("X-Auth-Principal-Type") == ["anonymous"]
    finally:
        envoy.close()


async def test_an_envoy_question_outside_the_prefix_is_refused(stack: Build) -> None:
    """Envoy without `path_prefix: /ext_authz` (or another prefix) asks with the client's
    path alone: nothing describes it, so it is refused (Envoy answers the client 400),
    never judged as the path it happens to have."""
    s = await stack()
    secret, _, _ = m2m(s.emulator)
    envoy = EnvoyAsker(s.forward_auth_port)
    try:
        for prefix in ("", "/ext_authzz", "/check"):
            answer = await envoy.check("GET", "/public/x", secret, prefix=prefix)
            assert answer.status == 400, (prefix, answer.body)
            assert json.loads(answer.body)["error"]["code"] == "bad_request"
    finally:
        envoy.close()


async def test_envoy_keeps_authorization_when_the_config_forwards_it(stack: Build) -> None:
    s = await stack(forward_authorization=True)
    secret, _, _ = m2m(s.emulator)
    envoy = EnvoyAsker(s.forward_auth_port)
    try:
        ok = await envoy.check("GET", "/api/v1/matches", secret)
        assert ok.status == 200
        assert "authorization" not in ok.removals()
        upstream = envoy_upstream([("Authorization", f"Bearer {secret}")], ok)
        assert header_values(upstream, "Authorization") == [f"Bearer {secret}"]
    finally:
        envoy.close()


async def test_envoy_hears_a_clerk_outage_as_the_sidecar_answers_it(stack: Build) -> None:
    """503 with its body and Retry-After (Envoy treats an authorization server's 5xx as an
    error: `status_on_error` decides what the client gets, docs/deploy.md)."""
    s = await stack()
    s.emulator.set_fault("down")
    fresh = s.emulator.create_m2m_token(s.emulator.create_machine("other").id)
    envoy = EnvoyAsker(s.forward_auth_port)
    try:
        answer = await envoy.check("GET", "/api/v1/matches", fresh.secret)
        assert answer.status == 503
        assert json.loads(answer.body)["error"]["code"] == "verification_unavailable"
        assert int(answer.get("Retry-After")[0]) >= 0
    finally:
        envoy.close()


# --- the config key ----------------------------------------------------------------------


def test_forward_auth_is_off_unless_enabled() -> None:
    assert make_config().forward_auth is None
    assert make_config(forward_auth={"port": 9000}).forward_auth is None
    on = make_config(forward_auth={"enabled": True})
    assert on.forward_auth == Listen("0.0.0.0", 8081, fast_path=False)


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"enabled": True, "host": "127.0.0.1", "port": 0}, None),
        ({"enabled": True, "host": "127.0.0.1", "port": 7001}, "forward_auth.port"),
        ({"enabled": True, "path": "/auth"}, "forward_auth.path"),
        ({"enabled": "sometimes"}, "forward_auth.enabled"),
    ],
)
def test_forward_auth_config_problems_name_the_key(section: dict[str, Any], key: str | None) -> None:
    overrides = {"listen": {"host": "127.0.0.1", "port": 7001}, "forward_auth": section}
    if key is None:
        assert make_config(**overrides).forward_auth is not None
        return
    with pytest.raises(ConfigError) as raised:
        make_config(**overrides)
    assert [issue.key for issue in raised.value.issues] == [key]
