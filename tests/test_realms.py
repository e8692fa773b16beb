"""`config.realms`: which config changes make a verdict another realm's, and which do not.
tests/test_shared_realms.py holds the same against real proxies on one Redis."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from proxy.config.model import ClaimMapping, Clerk, Introspection, Issuer, MachineRule
from proxy.config.realms import CLERK_IGNORED, ISSUER_IGNORED, clerk_realm, issuer_realm

CLERK = Clerk(api_url="https://api.clerk.com", secret_key="sk_test_a")
ISSUER = Issuer(
    name="partners",
    issuer="https://issuer.example",
    audiences=("https://api-1.example",),
    introspection=Introspection(client_id="api", client_secret="s1", token_prefix="pt_"),
)


@pytest.mark.parametrize(
    "change",
    [
        {"secret_key": "sk_test_b"},
        {"machine_secret_key": "ak_machine"},
        {"api_url": "https://clerk.other.example"},
        {"issuer": "https://clerk.scores.example"},
        {"authorized_parties": ("https://app.example",)},
        {"api_version": "2025-11-10"},
        {"clock_skew_seconds": 30.0},
    ],
)
def test_what_decides_a_clerk_verdict_is_another_realm(change: dict[str, Any]) -> None:
    assert clerk_realm(dataclasses.replace(CLERK, **change)) != clerk_realm(CLERK)


@pytest.mark.parametrize(
    "change",
    [
        {"name": "other"},
        {"issuer": "https://other.example"},
        {"audiences": ("https://api-2.example",)},
        {"audiences": ("https://api-1.example", "https://api-2.example")},
        {"preset": "auth0"},
        {"jwks_url": "https://issuer.example/keys"},
        {"algorithms": ("ES256",)},
        {"token_types": ("JWT",)},
        {"leeway_seconds": 60.0},
        {"claims": ClaimMapping(require=(("tenant", "acme"),))},
        {"claims": ClaimMapping(machine=(MachineRule(claim="client_id"),))},
        {"introspection": Introspection(client_id="api", client_secret="s2", token_prefix="pt_")},
        {"introspection": Introspection(client_id="api2", client_secret="s1", token_prefix="pt_")},
        {"introspection": Introspection(client_id="api", client_secret="s1", token_prefix="xx_")},
        {"introspection": None},
    ],
)
def test_what_decides_an_issuer_verdict_is_another_realm(change: dict[str, Any]) -> None:
    assert issuer_realm(dataclasses.replace(ISSUER, **change)) != issuer_realm(ISSUER)


def test_timeouts_cache_durations_and_names_are_not() -> None:
    clerk = dataclasses.replace(
        CLERK,
        instance="scores-production",
        instance_type="development",
        timeout=1.0,
        jwks_cache_seconds=60.0,
        jwks_min_refetch_seconds=5.0,
        miss_deadline=3.0,
        backoff_initial=1.0,
        backoff_max=60.0,
    )
    assert clerk_realm(clerk) == clerk_realm(CLERK)
    issuer = dataclasses.replace(
        ISSUER, jwks_cache_seconds=60.0, jwks_min_refetch_seconds=5.0, timeout=1.0
    )
    assert issuer_realm(issuer) == issuer_realm(ISSUER)
    # Every name left out is a field (a rename would put it back in, silently).
    assert {f.name for f in dataclasses.fields(Clerk)} >= CLERK_IGNORED
    assert {f.name for f in dataclasses.fields(Issuer)} >= ISSUER_IGNORED


def test_a_realm_holds_no_secret_and_differs_between_clerk_and_an_issuer() -> None:
    realm = clerk_realm(CLERK)
    assert len(realm) == 16 and b"sk_test_a" not in realm
    assert clerk_realm(CLERK) == clerk_realm(dataclasses.replace(CLERK))
    assert issuer_realm(ISSUER) != clerk_realm(CLERK)
