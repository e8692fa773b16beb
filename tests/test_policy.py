"""Route policy, pure and table-driven: normalization, matching, decisions."""

from __future__ import annotations

import pytest

from proxy.config.load import Route
from proxy.core.errors import ProxyError
from proxy.core.principal import ANONYMOUS, Principal
from proxy.request.policy import Policy, compile_glob, normalize_path

ROUTES = (
    Route(name="health", path="/healthz", methods=frozenset({"GET", "HEAD"}), auth="public"),
    Route(name="public", path="/public/**", methods=frozenset({"GET", "HEAD"}), auth="public"),
    Route(name="matches", path="/api/v1/matches/**", methods=frozenset({"GET", "HEAD"})),
    Route(name="admin", path="/api/v1/admin/**", scopes=("scores:admin",)),
    Route(name="feeds", path="/api/v1/feeds/*/live", principal_types=frozenset({"machine"})),
    Route(name="socketio", path="/socket.io/**", auth="optional"),
)
DEFAULT = Route(name="default", path="/**")
POLICY = Policy(ROUTES, DEFAULT)

MACHINE = Principal(type="machine", id="mch_1", token_type="m2m_token", token_id="mt_1", scopes=frozenset({"mch_api"}))
ADMIN = Principal(type="user", id="user_1", token_type="session_token", token_id="sess_1", scopes=frozenset({"scores:admin"}))


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("/", "/"),
        ("/a/b", "/a/b"),
        ("/a/b/", "/a/b/"),
        ("//admin", "/admin"),
        ("/a//b///c", "/a/b/c"),
        ("/./admin", "/admin"),
        ("/a/./b", "/a/b"),
        ("/a/b/.", "/a/b/"),
        ("/public/../admin", "/admin"),
        ("/public/%2e%2e/admin", "/admin"),
        ("/public/%2E%2E/admin", "/admin"),
        ("/public/.%2e/admin", "/admin"),
        ("/a/b/..", "/a/"),
        ("/%7Euser", "/~user"),
        ("/%41%42c", "/ABc"),
        ("/a%20b", "/a%20b"),
        ("/a%2a", "/a%2A"),
        ("/caf%C3%A9", "/caf%C3%A9"),
        ("/a%3fb", "/a%3Fb"),  # an encoded '?' stays encoded: not a query separator
    ],
)
def test_normalize(raw: str, normalized: str) -> None:
    assert normalize_path(raw) == normalized


@pytest.mark.parametrize(
    "raw",
    [
        "/public/%2fadmin",  # encoded slash
        "/public/%2Fadmin",
        "/public/%5cadmin",  # encoded backslash
        "/public\\admin",
        "/public/%00",  # NUL
        "/public/\x00",
        "/public/a;jsessionid=1",  # matrix params
        "/public/a%3bx",
        "/public/a#frag",
        "/public/a%23frag",
        "/..",  # above the root
        "/a/../..",
        "/%2e%2e/etc/passwd",
        "/a%zz",  # malformed escape
        "/a%4",
        "a/b",  # not origin-form
        "*",
        "http://evil/admin",
        "/a\r\nb",
        "/a\tb",
    ],
)
def test_ambiguous_paths_are_refused(raw: str) -> None:
    with pytest.raises(ProxyError) as err:
        normalize_path(raw)
    assert (err.value.status, err.value.code) == (400, "bad_request")


@pytest.mark.parametrize(
    ("glob", "path", "matches"),
    [
        ("/healthz", "/healthz", True),
        ("/healthz", "/healthz/", False),
        ("/healthz", "/healthzz", False),
        ("/a/**", "/a", True),
        ("/a/**", "/a/", True),
        ("/a/**", "/a/b/c", True),
        ("/a/**", "/ab", False),
        ("/a/*/c", "/a/b/c", True),
        ("/a/*/c", "/a/b/x/c", False),
        ("/a/*.json", "/a/x.json", True),
        ("/a/*.json", "/a/x/y.json", False),
        ("/a/**/z", "/a/z", True),
        ("/a/**/z", "/a/b/c/z", True),
        ("/a.b/**", "/aXb/c", False),  # '.' is literal
        ("/**", "/anything/at/all", True),
        ("/", "/", True),
    ],
)
def test_globs(glob: str, path: str, matches: bool) -> None:
    assert bool(compile_glob(glob).match(path)) is matches


@pytest.mark.parametrize(
    ("method", "target", "route", "path", "query"),
    [
        ("GET", "/healthz", "health", "/healthz", None),
        ("HEAD", "/healthz", "health", "/healthz", None),
        ("GET", "/public/x?y=1", "public", "/public/x", "y=1"),
        ("GET", "/public/x?", "public", "/public/x", ""),
        # Traversal is resolved before matching: the upstream gets what was judged.
        ("GET", "/public/../api/v1/admin/x", "admin", "/api/v1/admin/x", None),
        ("GET", "/public/%2e%2e/api/v1/admin", "admin", "/api/v1/admin", None),
        ("GET", "//api/v1/admin/x", "admin", "/api/v1/admin/x", None),
        ("GET", "/./api/v1/admin/x", "admin", "/api/v1/admin/x", None),
        # Rules never see the query string, however path-like it looks.
        ("GET", "/api/v1/admin/x?/public/", "admin", "/api/v1/admin/x", "/public/"),
        ("GET", "/public?/../api/v1/admin", "public", "/public", "/../api/v1/admin"),
        # A method a route does not list falls through: a POST to the GET-only public
        # route is judged by the default route, never as public.
        ("POST", "/public/x", "default", "/public/x", None),
        ("DELETE", "/healthz", "default", "/healthz", None),
        ("GET", "/api/v1/matches", "matches", "/api/v1/matches", None),
        ("POST", "/api/v1/matches", "default", "/api/v1/matches", None),
        ("GET", "/api/v1/feeds/f1/live", "feeds", "/api/v1/feeds/f1/live", None),
        ("GET", "/socket.io/?EIO=4&transport=polling", "socketio", "/socket.io/", "EIO=4&transport=polling"),
        ("GET", "/nowhere", "default", "/nowhere", None),
    ],
)
def test_resolve(method: str, target: str, route: str, path: str, query: str | None) -> None:
    resolved = POLICY.resolve(method, target)
    assert (resolved.route.name, resolved.path, resolved.query) == (route, path, query)


def test_first_match_wins() -> None:
    policy = Policy(
        (Route(name="narrow", path="/a/b", auth="public"), Route(name="wide", path="/a/**")),
        DEFAULT,
    )
    assert policy.resolve("GET", "/a/b").route.name == "narrow"
    assert policy.resolve("GET", "/a/c").route.name == "wide"


def _route(name: str) -> Route:
    return next(r for r in (*ROUTES, DEFAULT) if r.name == name)


@pytest.mark.parametrize(
    ("route", "principal", "error"),
    [
        ("public", ANONYMOUS, None),
        ("public", MACHINE, None),
        ("socketio", ANONYMOUS, None),
        ("socketio", MACHINE, None),
        ("matches", MACHINE, None),
        ("matches", ANONYMOUS, (401, "token_missing")),
        ("default", ANONYMOUS, (401, "token_missing")),
        ("admin", ADMIN, None),
        ("admin", MACHINE, (403, "insufficient_scope")),
        ("feeds", MACHINE, None),
        ("feeds", ADMIN, (403, "insufficient_scope")),
    ],
)
def test_authorize(route: str, principal: Principal, error: tuple[int, str] | None) -> None:
    if error is None:
        POLICY.authorize(_route(route), principal)
        return
    with pytest.raises(ProxyError) as err:
        POLICY.authorize(_route(route), principal)
    assert (err.value.status, err.value.code) == error


def test_insufficient_scope_names_the_scope() -> None:
    with pytest.raises(ProxyError) as err:
        POLICY.authorize(_route("admin"), MACHINE)
    assert err.value.headers()["WWW-Authenticate"] == (
        'Bearer error="insufficient_scope", scope="scores:admin"'
    )


def test_required_route_reports_the_verifier_refusal() -> None:
    refusal = ProxyError("token_expired", "the token has expired")
    with pytest.raises(ProxyError) as err:
        POLICY.authorize(_route("matches"), ANONYMOUS, token_error=refusal)
    assert err.value is refusal


def test_optional_route_still_checks_scopes_of_a_real_principal() -> None:
    route = Route(name="opt", path="/o/**", auth="optional", scopes=("scores:admin",))
    POLICY.authorize(route, ANONYMOUS)
    with pytest.raises(ProxyError) as err:
        POLICY.authorize(route, MACHINE)
    assert err.value.status == 403


def test_an_m2m_token_asked_for_a_scope_it_never_carries_is_told_so() -> None:
    # A Clerk M2M token's scopes are machine ids: "lacks scores:admin" sends the partner
    # looking for a scope to add to the token; the message says no M2M token carries it.
    route = Route(name="admin", path="/admin/**", scopes=("scores:admin",))
    policy = Policy((route,), Route(name="default", path="/**"))
    m2m = Principal(type="machine", id="mch_a", token_type="m2m_token", scopes=frozenset({"mch_api"}))
    oauth = Principal(type="oauth", id="user_a", token_type="oauth_token", scopes=frozenset({"x"}))
    with pytest.raises(ProxyError) as m2m_refusal:
        policy.authorize(route, m2m, token_error=None)
    with pytest.raises(ProxyError) as oauth_refusal:
        policy.authorize(route, oauth, token_error=None)
    assert m2m_refusal.value.code == oauth_refusal.value.code == "insufficient_scope"
    assert "never carries" in m2m_refusal.value.message
    assert "mch_" in m2m_refusal.value.message
    assert oauth_refusal.value.message == "the token lacks the scope(s): scores:admin"
