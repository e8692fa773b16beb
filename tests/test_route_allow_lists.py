# ruff: noqa: F811 (tests take the imported `stack_factory` fixture as a parameter)
"""Route allow-lists of what Clerk asserts: machine ids and OAuth client ids — parsing,
the policy's decision as a table, and the configuration.md worked example end to end."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config.load import ConfigError, Route, build_config
from proxy.core.errors import ProxyError
from proxy.core.principal import Principal
from proxy.request.policy import Policy
from tests.support import header_values
from tests.test_auth_e2e import Stack, stack_factory  # noqa: F401 (a fixture)

PARTNER, OTHER = "mch_2partner000000000000000001", "mch_2other00000000000000000001"
API = "mch_2scoresapi0000000000000001"


def routes(*entries: dict[str, Any]) -> tuple[Route, ...]:
    raw = {"upstream": {"url": "http://127.0.0.1:1"}, "clerk": {"secret_key": "sk_test_x"}}
    return build_config({**raw, "routes": list(entries)}, file="r.yaml").routes


def test_parsed_allow_lists_and_the_kinds_they_admit() -> None:
    only, both, mixed = routes(
        {"name": "a", "path": "/a/**", "machines": [PARTNER]},
        {"name": "b", "path": "/b/**", "machines": [PARTNER], "oauth_clients": ["client_1"]},
        {
            "name": "c",
            "path": "/c/**",
            "machines": [PARTNER],
            "principal_types": ["machine", "user"],
        },
    )
    assert (only.machines, only.oauth_clients, only.principal_types) == (
        {PARTNER},
        None,
        {"machine"},  # an allow-list admits its own kind only, unless principal_types says
    )
    assert (both.oauth_clients, both.principal_types) == ({"client_1"}, {"machine", "oauth"})
    assert mixed.principal_types == {"machine", "user"}


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"machines": ["partner"]}, "routes[0].machines: expected Clerk machine ids"),
        ({"machines": ["user_2abc"]}, "routes[0].machines: expected Clerk machine ids"),
        ({"machines": []}, "routes[0].machines: an empty list would admit no machine"),
        ({"oauth_clients": ["a b"]}, "routes[0].oauth_clients: expected OAuth client ids"),
        ({"oauth_clients": []}, "routes[0].oauth_clients: an empty list would admit no client"),
        (
            {"machines": [PARTNER], "principal_types": ["user"]},
            "routes[0].machines: has no effect: principal_types does not admit machine",
        ),
        ({"auth": "public", "machines": [PARTNER]}, "routes[0]: a public route cannot require"),
    ],
)
def test_bad_allow_lists_are_named(entry: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        routes({"name": "x", "path": "/x/**", **entry})
    assert expected in str(info.value)


MACHINE = Principal(type="machine", id=PARTNER, token_type="m2m_token", token_id="mt_1", scopes=frozenset({API}))
STRANGER = Principal(type="machine", id=OTHER, token_type="m2m_token", token_id="mt_2", scopes=frozenset({API}))
OAUTH = Principal(
    type="oauth", id="user_2abc", token_type="oauth_token", token_id="oat_1", scopes=frozenset({"read"}), client_id="client_1"
)
OAUTH_OTHER = Principal(
    type="oauth", id="user_2abc", token_type="oauth_token", token_id="oat_2", scopes=frozenset({"read"}), client_id="client_9"
)
OAUTH_NONE = Principal(type="oauth", id="user_2abc", token_type="oauth_token", token_id="oat_3", scopes=frozenset({"read"}))
USER = Principal(type="user", id="user_2abc", token_type="session_token", token_id="sess_1")


@pytest.mark.parametrize(
    ("route", "principal", "allowed"),
    [
        (
            Route(
                "m", "/m/**", machines=frozenset({PARTNER}), principal_types=frozenset({"machine"})
            ),
            MACHINE,
            True,
        ),
        (
            Route(
                "m", "/m/**", machines=frozenset({PARTNER}), principal_types=frozenset({"machine"})
            ),
            STRANGER,
            False,
        ),
        (
            Route(
                "m", "/m/**", machines=frozenset({PARTNER}), principal_types=frozenset({"machine"})
            ),
            USER,
            False,
        ),
        (
            Route(
                "m",
                "/m/**",
                machines=frozenset({PARTNER}),
                principal_types=frozenset({"machine", "user"}),
            ),
            USER,
            True,
        ),
        (
            Route(
                "o",
                "/o/**",
                oauth_clients=frozenset({"client_1"}),
                principal_types=frozenset({"oauth"}),
            ),
            OAUTH,
            True,
        ),
        (
            Route(
                "o",
                "/o/**",
                oauth_clients=frozenset({"client_1"}),
                principal_types=frozenset({"oauth"}),
            ),
            OAUTH_OTHER,
            False,
        ),
        (
            Route(
                "o",
                "/o/**",
                oauth_clients=frozenset({"client_1"}),
                principal_types=frozenset({"oauth"}),
            ),
            OAUTH_NONE,
            False,
        ),
        # Allow-list and scopes together: both must hold.
        (
            Route(
                "s",
                "/s/**",
                machines=frozenset({PARTNER}),
                scopes=(API,),
                principal_types=frozenset({"machine"}),
            ),
            MACHINE,
            True,
        ),
        (
            Route(
                "s",
                "/s/**",
                machines=frozenset({PARTNER}),
                scopes=("scores:admin",),
                principal_types=frozenset({"machine"}),
            ),
            MACHINE,
            False,
        ),
    ],
)
def test_authorize_with_allow_lists(route: Route, principal: Principal, allowed: bool) -> None:
    policy = Policy((route,), Route("default", "/**"))
    if allowed:
        policy.authorize(route, principal)
        return
    with pytest.raises(ProxyError) as info:
        policy.authorize(route, principal)
    assert (info.value.status, info.value.code) == (403, "insufficient_scope")


async def test_the_configuration_worked_example(stack_factory: Any) -> None:
    """docs/configuration.md, "How does a partner's M2M token satisfy a route?": the API
    runs as machine scores-api; partners are machines Clerk lets talk to it."""
    example = [
        {"name": "feeds", "path": "/api/v1/feeds/**", "auth": "required", "scopes": [API]},
        {"name": "admin", "path": "/api/v1/admin/**", "auth": "required", "machines": [PARTNER]},
        {
            "name": "apps",
            "path": "/api/v1/apps/**",
            "auth": "required",
            "oauth_clients": ["client_1"],
        },
    ]
    s: Stack = await stack_factory(routes=example)
    e = s.emulator
    e.create_machine("scores-api", machine_id=API)
    e.create_machine("scores-partner", scoped_machines=[API], machine_id=PARTNER)
    e.create_machine("other-partner", scoped_machines=[API], machine_id=OTHER)
    e.create_machine("stranger", machine_id="mch_2stranger0000000000000000001")
    partner = e.create_m2m_token(PARTNER).secret
    other = e.create_m2m_token(OTHER).secret
    stranger = e.create_m2m_token("mch_2stranger0000000000000000001").secret
    # A partner's JWT-format token asking for the scope itself gets nothing from it.
    self_scoped = e.mint_m2m_jwt(OTHER, claims={"scopes": API})
    partner_jwt = e.mint_m2m_jwt(PARTNER)

    async def status(path: str, token: str) -> tuple[int, str | None]:
        code, _, body = await s.get(path, token)
        return code, body["error"]["code"] if code >= 400 else None

    # scopes: [<scores-api's id>] = "Clerk lets this machine talk to scores-api".
    assert await status("/api/v1/feeds/live", partner) == (200, None)
    assert header_values(s.recorder.last.headers, "X-Auth-Scopes") == [API]
    assert await status("/api/v1/feeds/live", other) == (200, None)
    assert await status("/api/v1/feeds/live", stranger) == (403, "insufficient_scope")
    assert await status("/api/v1/feeds/live", self_scoped) == (403, "insufficient_scope")
    # machines: [...] = "only these partners", whatever kind of M2M token they send.
    assert await status("/api/v1/admin/reset", partner) == (200, None)
    assert await status("/api/v1/admin/reset", partner_jwt) == (200, None)
    assert await status("/api/v1/admin/reset", other) == (403, "insufficient_scope")
    session = e.mint_session_jwt("user_2abc")
    assert await status("/api/v1/admin/reset", session) == (403, "insufficient_scope")
    # oauth_clients: [...] = tokens Clerk issued to these OAuth applications only.
    mine = e.create_oauth_token("user_2abc", client_id="client_1")
    theirs = e.mint_oauth_jwt("user_2abc", client_id="client_2")
    assert await status("/api/v1/apps/x", mine) == (200, None)
    assert await status("/api/v1/apps/x", theirs) == (403, "insufficient_scope")


def test_the_client_id_survives_the_shared_level() -> None:
    """An OAuth principal read back from Redis keeps its client id: without it the
    allow-list would refuse (closed, but wrong). An entry of the format before the field
    table (the fields by position) is a miss: verified again, not read without its client."""
    import hmac
    import json

    from proxy.auth.cache.entries import Positive
    from proxy.auth.shared import codec

    mac, key = codec.mac_key("sk_test_x", b"scope"), bytes(16)
    entry = Positive(principal=OAUTH, fresh_until=100.0, keep_until=100.0)
    assert codec.decode(key, codec.encode(key, entry, mac), mac) == entry
    old = {
        "p": ["oauth", "user_2abc", "oauth_token", "oat_1", ["read"], None, None],
        "f": 1,
        "k": 1,
    }
    body = json.dumps(old).encode()
    tag = hmac.new(mac, key + b"\x00" + body, "sha256").digest()[: codec.TAG_SIZE]
    assert codec.decode(key, b"1" + tag + body, mac) is None
