"""Clerk ids packed into a record's 22 bytes: every form comes back exactly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.auth.cache import ids

HEX = "0123456789abcdef" * 2
B62 = "2NNEqL2nrIRdJ194ndJqAHwEfxC"  # a real Clerk id body: 27 base-62 characters


@pytest.mark.parametrize(
    ("value", "form"),
    [
        (None, ids.NONE),
        ("mt_" + HEX, ids.HEX),
        ("oat_" + "f" * 32, ids.HEX),
        ("ak_" + HEX, ids.HEX),
        (HEX, ids.HEX),  # an empty prefix is a prefix
        ("user_" + B62, ids.BASE62),
        ("sess_" + B62, ids.BASE62),
        ("mch_" + "0" * 27, ids.BASE62),  # leading zeros survive: the body is fixed-width
        ("mch_" + "z" * 27, ids.BASE62),  # the largest body fits 21 bytes
        ("mt_" + HEX.upper(), ids.BASE62),  # upper-case hex is not the hex form...
        ("mt_1", ids.RAW),
        ("", ids.RAW),
        ("x" * 21, ids.RAW),
        ("x" * 22, ids.UNPACKED),
        ("user_" + B62[:-1] + "-", ids.UNPACKED),
        ("sess_" + B62 + "!", ids.UNPACKED),
        ("é", ids.UNPACKED),
        ("mt_" + HEX[:-1] + " ", ids.UNPACKED),
    ],
)
def test_forms_round_trip(value: str | None, form: int) -> None:
    prefixes = ids.Prefixes()
    got, area = ids.pack(value, prefixes)
    assert got == form
    assert len(area) <= ids.AREA
    if form != ids.UNPACKED:
        assert ids.unpack(got, area.ljust(ids.AREA, b"\0"), prefixes) == value
    else:
        assert area == b""


def test_upper_case_hex_comes_back_as_it_was() -> None:
    prefixes = ids.Prefixes()
    value = "mt_" + HEX.upper()
    assert ids.unpack(*ids.pack(value, prefixes), prefixes) == value


def test_prefixes_are_numbered_once_and_capped() -> None:
    prefixes = ids.Prefixes()
    assert prefixes.number("mt_") == prefixes.number("mt_") == 0
    for n in range(1, 256):
        assert prefixes.number(f"p{n}_") == n
    assert prefixes.number("one_too_many_") == -1
    assert ids.pack("one_too_many_" + HEX, prefixes) == (ids.UNPACKED, b"")
    assert ids.pack("mt_" + HEX, prefixes)[0] == ids.HEX  # known prefixes still pack


@given(st.text(alphabet=st.characters(codec="ascii"), max_size=60))
def test_any_ascii_id_comes_back_or_is_left_unpacked(value: str) -> None:
    prefixes = ids.Prefixes()
    form, area = ids.pack(value, prefixes)
    assert len(area) <= ids.AREA
    if form == ids.UNPACKED:
        assert len(value) >= ids.AREA
    else:
        assert ids.unpack(form, area.ljust(ids.AREA, b"\0"), prefixes) == value


@given(
    st.sampled_from(["user_", "sess_", "mch_", ""]),
    st.text(
        alphabet="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
        min_size=27,
        max_size=27,
    ),
)
def test_every_base62_body_packs(prefix: str, body: str) -> None:
    prefixes = ids.Prefixes()
    form, area = ids.pack(prefix + body, prefixes)
    assert form in (ids.BASE62, ids.HEX)
    assert ids.unpack(form, area, prefixes) == prefix + body
