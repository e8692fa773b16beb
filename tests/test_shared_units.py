"""The shared level's pure parts, as tables: the value codec, the URL parser,
the revoked set. No server here (tests/test_shared_level.py has the real ones)."""

from __future__ import annotations

import json
import math

import pytest

from proxy.auth.cache.entries import Negative, Positive
from proxy.auth.shared import codec, revocation
from proxy.auth.shared.revocation import MAX_REVOKED, Revocation, Revoked
from proxy.config.shared import redis_target
from proxy.core.principal import FIELDS, Principal

MAC = codec.mac_key("sk_test_unit", b"scope")
KEY = bytes(range(16))
MACHINE = Principal(
    type="machine",
    id="mch_2xYpartner000000000000000001",
    token_type="m2m_token",
    token_id="mt_0123456789abcdef0123456789abcdef",
    scopes=frozenset({"mch_a", "mch_b"}),
    claims_json='{"tier":"gold"}',
    expires_at=1_900_000_000.0,
)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize(
    "entry",
    [
        Positive(principal=MACHINE, fresh_until=1000.0, keep_until=1060.0),
        Positive(principal=Principal(type="user"), fresh_until=5.0, keep_until=5.0),
        # Another issuer's principal keeps its issuer (route rules are per issuer) and client.
        Positive(
            principal=Principal(
                type="machine", id="svc-a", token_type="m2m_token", token_id="j1",
                scopes=frozenset({"scores:read"}), expires_at=2000.0, client_id="svc-a", issuer="authgear",
            ),
            fresh_until=1000.0,
            keep_until=1060.0,
        ),
        Negative(code="token_invalid", message="the token has been revoked", token_type="m2m_token", keep_until=1010.0),
        Negative(code="token_expired", message="the token has expired", token_type=None, keep_until=1010.0),
    ],
)
def test_codec_round_trip(entry: Positive | Negative) -> None:
    value = codec.encode(KEY, entry, MAC)
    assert codec.decode(KEY, value, MAC) == entry
    # No token goes into a value: only what the Principal holds.
    assert b"sk_test" not in value


def _forge(payload: object, form: bytes = codec.FORMAT) -> bytes:
    body = json.dumps(payload).encode()
    return form + codec._tag(MAC, KEY, body) + body


def _fields(**changes: object) -> dict[str, object]:
    """MACHINE's fields as the codec writes them, with `changes`."""
    return {f.name: sorted(MACHINE.scopes) if f.kind == "scopes" else getattr(MACHINE, f.name) for f in FIELDS} | changes


def _named(fields: dict[str, object], *, fresh: object = 1, keep: object = 2, schema: str = codec.SCHEMA) -> bytes:
    return _forge({"v": schema, "p": fields, "f": fresh, "k": keep})


def test_a_forged_entry_in_the_current_form_is_read_so_the_refusals_below_are_real() -> None:
    entry = codec.decode(KEY, _named(_fields()), MAC)
    assert entry == Positive(principal=MACHINE, fresh_until=1.0, keep_until=2.0)


# What releases before the field table wrote, MAC and all (format `1`: the Principal by
# position, 7 fields before client_id and issuer, 8 before issuer, 9 since): each is a
# miss, never read into a Principal, whose fields might then be shifted.
OLD_VERSIONS = [
    ("format 1, 7 fields", _forge({"p": ["machine", "mch_1", "m2m_token", "mt_1", ["a"], None, None], "f": 1.0, "k": 2.0}, b"1")),
    ("format 1, 8 fields", _forge({"p": ["oauth", "user_1", "oauth_token", "oat_1", [], None, None, "cl_1"], "f": 1, "k": 2}, b"1")),
    ("format 1, 9 fields", _forge({"p": ["machine", "svc", "m2m_token", "j1", [], None, None, "svc", "acme"], "f": 1, "k": 2}, b"1")),
    ("format 1 rejection", _forge({"n": ["token_invalid", "m", None], "k": 2}, b"1")),
    ("this format, another table's schema", _named(_fields(), schema="00000000")),
    ("this format, no schema", _forge({"p": _fields(), "f": 1, "k": 2})),
    ("a newer table: one field more", _named(_fields(field_of_a_later_release="v"))),
    ("an older table: one field less", _named({k: v for k, v in _fields().items() if k != "issuer"})),
    ("the fields by position", _named(list(_fields().values()))),  # type: ignore[arg-type]
    ("a later format", b"3" + codec.encode(KEY, Positive(principal=MACHINE, fresh_until=1.0, keep_until=2.0), MAC)[1:]),
]


@pytest.mark.parametrize(("name", "value"), OLD_VERSIONS)
def test_codec_reads_an_entry_of_another_version_as_a_miss(name: str, value: bytes) -> None:
    assert codec.decode(KEY, value, MAC) is None, name


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("not bytes", "1abc"),
        ("empty", b""),
        ("truncated", codec.encode(KEY, Positive(principal=MACHINE, fresh_until=1.0, keep_until=2.0), MAC)[:-3]),
        ("deadline moved", codec.encode(KEY, Positive(principal=MACHINE, fresh_until=1.0, keep_until=2.0), MAC)[:-4] + b"9.0}"),
        ("another key's value", codec.encode(bytes(16), Positive(principal=MACHINE, fresh_until=1.0, keep_until=2.0), MAC)),
        ("another instance's MAC", codec.encode(KEY, Positive(principal=MACHINE, fresh_until=1.0, keep_until=2.0), b"k" * 32)),
        ("signed garbage", _forge("hello")),
        ("anonymous principal", _named(_fields(type="anonymous"))),
        ("unknown principal type", _named(_fields(type="robot"))),
        ("no principal type", _named(_fields(type=None))),
        ("unknown token type", _named(_fields(token_type="jwt"))),
        ("fresh after keep", _named(_fields(), fresh=3, keep=2)),
        ("header-unsafe id", _named(_fields(id="mch x\r\n"))),
        ("header-unsafe issuer", _named(_fields(issuer="acme\r\nX-Auth-Principal-Id: admin"))),
        ("id not a string", _named(_fields(id=7))),
        ("a 503 as a rejection", _forge({"n": ["verification_unavailable", "m", None], "k": 2})),
        ("unknown code", _forge({"n": ["nope", "m", None], "k": 2})),
        ("NaN deadline", codec.FORMAT + codec._tag(MAC, KEY, b'{"n":["token_invalid","m",null],"k":NaN}') + b'{"n":["token_invalid","m",null],"k":NaN}'),
        ("NaN expiry", _named(_fields(expires_at=math.nan))),
        ("claims not an object", _named(_fields(claims_json="[1]"))),
        ("claims not JSON", _named(_fields(claims_json="{"))),
        ("scopes not strings", _named(_fields(scopes=[1]))),
        ("scopes not a list", _named(_fields(scopes="a b"))),
        ("bool as time", _forge({"n": ["token_invalid", "m", None], "k": True})),
    ],
)
def test_codec_refuses_what_it_did_not_write(name: str, value: object) -> None:
    assert codec.decode(KEY, value, MAC) is None, name


@pytest.mark.parametrize(
    ("url", "kind", "tls", "hosts", "db", "service"),
    [
        ("redis://127.0.0.1", "single", False, (("127.0.0.1", 6379),), 0, ""),
        ("rediss://cache.svc:6380/2", "single", True, (("cache.svc", 6380),), 2, ""),
        ("redis://[::1]:7000", "single", False, (("::1", 7000),), 0, ""),
        ("redis+sentinel://s1,s2:26380/mymaster/1", "sentinel", False, (("s1", 26379), ("s2", 26380)), 1, "mymaster"),
        ("rediss+cluster://n1:7000,n2:7001", "cluster", True, (("n1", 7000), ("n2", 7001)), 0, ""),
    ],
)
def test_redis_urls(url: str, kind: str, tls: bool, hosts: tuple[tuple[str, int], ...], db: int, service: str) -> None:
    t = redis_target(url)
    assert (t.kind, t.tls, t.hosts, t.db, t.service) == (kind, tls, hosts, db, service)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://x", "expected a URL starting with"),
        ("redis://:secret@host", "credentials do not go in the URL"),
        ("redis://user:secret@host", "credentials do not go in the URL"),
        ("redis://a,b", "several hosts"),
        ("redis+sentinel://s1", "names the primary"),
        ("redis+cluster://n1/3", "database number"),
        ("redis://h:99999", "bad port"),
        ("redis://h?ssl=1", "query strings"),
    ],
)
def test_bad_redis_urls(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        redis_target(url)


def test_revoked_set_refuses_until_the_end_and_forgets_after() -> None:
    clock = Clock()
    revoked = Revoked(now=clock)
    token_id = MACHINE.token_id or ""
    assert revoked.add(Revocation("clerk", "token_id", token_id, 160.0))
    assert not revoked.add(Revocation("clerk", "token_id", token_id, 150.0))  # an earlier end adds nothing
    assert revoked.denies(MACHINE)
    other = Principal(type="machine", id="mch_other", token_type="m2m_token", token_id="mt_other")
    assert not revoked.denies(other)
    assert revoked.add(Revocation("clerk", "subject", "mch_other", 120.0))
    assert revoked.denies(other)
    clock.t = 130.0
    assert not revoked.denies(other) and revoked.denies(MACHINE)
    clock.t = 160.0
    assert not revoked.denies(MACHINE)
    assert not revoked.add(Revocation("clerk", "token_id", "mt_past", 100.0))  # already over


def test_a_revocation_is_one_issuers() -> None:
    """Row 5: OIDC's identifier is iss + sub; one issuer's `mch_x` is not another's."""
    revoked = Revoked(now=Clock())
    assert revoked.add(Revocation("clerk", "subject", MACHINE.id or "", 500.0))
    assert revoked.denies(MACHINE)
    foreign = Principal(type="machine", id=MACHINE.id, token_type="m2m_token", token_id=MACHINE.token_id, issuer="acme")
    assert not revoked.denies(foreign)
    assert revoked.add(Revocation("acme", "token_id", MACHINE.token_id or "", 500.0))
    assert revoked.denies(foreign)


def test_a_full_set_pushes_no_live_revocation_out() -> None:
    """Row 3: the bound holds memory, never by forgetting a live revocation."""
    revoked = Revoked(now=Clock())
    for n in range(MAX_REVOKED):
        assert revoked.add(Revocation("clerk", "token_id", f"mt_{n:032x}", 10_000.0 + n))
    assert revoked.full
    assert not revoked.add(Revocation("clerk", "token_id", "mt_late", 1e6))
    assert revoked.turned_away == 1
    assert not revoked.add(Revocation("clerk", "token_id", f"mt_{0:032x}", 10_000.0))  # held
    assert revoked.turned_away == 1
    assert revoked.denies(Principal(type="machine", id="mch_x", token_type="m2m_token", token_id=f"mt_{0:032x}"))


def test_revocations_are_signed_and_bounded() -> None:
    """Row 9: a revocation is what the key signed, live, and ends within the longest TTL."""
    key = revocation.signing_key(MAC)
    now = 1_000.0
    r = Revocation("clerk", "token_id", "mt_0123456789abcdef0123456789abcdef", 1_234.5678)
    text = revocation.sign(key, r)
    assert revocation.verify(key, text, now) == r
    assert revocation.verify(key, text.encode(), now) == r
    assert revocation.sign(key, revocation.verify(key, text, now) or r) == text  # written back as read
    other = revocation.signing_key(codec.mac_key("sk_test_other", b"scope"))
    tag = text.split(" ")[1]
    for bad in (
        revocation.sign(other, r),  # another instance's key
        text.replace("mt_0123", "mt_9123"),  # the value changed
        text.replace("1234.5678", "9999.5678"),  # the end moved
        text.replace(tag, "0" * 32),
        f"r1 {tag} inf clerk token_id mt_x",
        f"r1 {tag} nan clerk token_id mt_x",
        "token_id:mt_0123456789abcdef0123456789abcdef",  # the unsigned format
        'R{"kind":"token_id","value":"mt_x","until":Infinity}',
        b"\xff" * 40,
        "",
    ):
        assert revocation.verify(key, bad, now) is None, bad
    # Signed, yet no operator could set it: ended, too far out, not finite, not an id.
    for until in (999.0, now + revocation.MAX_TTL + 2 * 86_400, float("inf"), float("nan")):
        signed = revocation.sign(key, Revocation("clerk", "subject", "mch_x", until))
        assert revocation.verify(key, signed, now) is None, until
    for issuer, kind, value in (("Acme", "subject", "x"), ("clerk", "user", "x"), ("clerk", "subject", "a\x00")):
        assert revocation.verify(key, revocation.sign(key, Revocation(issuer, kind, value, 2_000.0)), now) is None
