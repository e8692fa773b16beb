"""The state of one emulated Clerk instance, without I/O.

`ClerkInstance` owns the instance secret key, its RSA signing key, machines and issued
tokens, and mints the JWTs Clerk would (session, M2M, OAuth), signed with the instance
key. `backend.BackendApi` answers the Backend API from this state; `app` adds HTTP,
faults and call counting.
"""

from __future__ import annotations

import secrets
import string
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.utils import to_base64url_uint

from proxy.emulator.wire import TokenKind, TokenRecord

BASE62: Final = string.ascii_letters + string.digits
# Clerk marks the class of a JWT in its header `cat`: session tokens and M2M tokens.
SESSION_JWT_CAT: Final = "cl_B7d4PD111AAA"
M2M_JWT_CAT: Final = "cl_B7d4PD333AAA"
# The claims Clerk itself sets on an M2M JWT; claims given at creation come beside them
# and never replace them.
M2M_JWT_RESERVED: Final = frozenset({"iss", "sub", "exp", "nbf", "iat", "jti"})
# `user_` + 27 characters, as Clerk's ids (the spec's pattern ^user_\w{27}$).
DEFAULT_USER: Final = "user_2emulatorDefaultUser0000001"
DEFAULT_CLIENT_ID: Final = "oauth_client_emulator"
DEFAULT_AZP: Final = "http://localhost:3000"
# The emulator's instance key unless told otherwise (demo, docs and tests use it).
DEFAULT_SECRET_KEY: Final = "sk_test_emulator"


def b62(n: int) -> str:
    return "".join(secrets.choice(BASE62) for _ in range(n))


@dataclass(frozen=True, slots=True)
class Machine:
    id: str
    secret_key: str
    name: str = ""
    scoped_machines: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class IssuedToken:
    id: str
    secret: str
    expiration_ms: int | None


@dataclass(frozen=True, slots=True)
class Caller:
    """Who called: the instance itself (secret key) or one machine (its `ak_` key)."""

    machine: Machine | None


class ClerkInstance:
    """One Clerk instance: keys, machines, opaque tokens and the rules of its API."""

    def __init__(
        self, secret_key: str = DEFAULT_SECRET_KEY, *, now: Callable[[], float] = time.time
    ) -> None:
        self.secret_key = secret_key
        self.now = now
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "ins_" + b62(27)
        self.issuer = f"https://emulator-{secrets.token_hex(4)}.clerk.accounts.dev"
        numbers = self.private_key.public_key().public_numbers()
        self.public_jwk: dict[str, str] = {
            "use": "sig",
            "kty": "RSA",
            "kid": self.kid,
            "alg": "RS256",
            "n": to_base64url_uint(numbers.n).decode(),
            "e": to_base64url_uint(numbers.e).decode(),
        }
        self.machines: dict[str, Machine] = {}
        self._machine_keys: dict[str, Machine] = {}
        self._by_secret: dict[str, TokenRecord] = {}
        self._by_id: dict[str, TokenRecord] = {}
        self._secret_of: dict[str, str] = {}
        # An instance setting: with it off, Clerk answers API key verification with 422
        # `api_keys_not_enabled` (not the caller's fault, nothing a retry fixes).
        self.api_keys_enabled = True

    def now_ms(self) -> int:
        return int(self.now() * 1000)

    # -- minting (the Python API tests use) -----------------------------------------

    def create_machine(
        self, name: str, scoped_machines: Iterable[str] = (), *, machine_id: str | None = None
    ) -> Machine:
        """A machine; `machine_id` fixes its id (e.g. one a proxy config already names)."""
        if machine_id is not None and not machine_id.startswith("mch_"):
            raise ValueError("a machine id starts with mch_")
        machine = Machine(
            machine_id or "mch_" + b62(27), "ak_" + b62(40), name, tuple(scoped_machines)
        )
        self.machines[machine.id] = machine
        self._machine_keys[machine.secret_key] = machine
        return machine

    def _issue(
        self,
        kind: TokenKind,
        prefix: str,
        length: int,
        subject: str,
        scopes: Iterable[str],
        claims: Mapping[str, Any] | None,
        expires_in: float | None,
        **more: Any,
    ) -> tuple[TokenRecord, str]:
        """A new token's record, stored under its id and its secret (`prefix` + `length`
        base-62 characters) and the secret."""
        now = self.now_ms()
        record = TokenRecord(
            kind=kind,
            id=prefix + secrets.token_hex(16),
            subject=subject,
            scopes=list(scopes),
            claims=dict(claims) if claims is not None else None,
            expiration_ms=None if expires_in is None else now + int(expires_in * 1000),
            created_ms=now,
            updated_ms=now,
            **more,
        )
        secret = prefix + b62(length)
        self._by_secret[secret] = record
        self._by_id[record.id] = record
        self._secret_of[record.id] = secret
        return record, secret

    def create_m2m_token(
        self,
        machine_id: str,
        *,
        scopes: Iterable[str] | None = None,
        seconds_until_expiration: float | None = None,
        claims: Mapping[str, Any] | None = None,
    ) -> IssuedToken:
        # An unknown machine id is allowed: tests may want a subject no machine owns.
        machine = self.machines.get(machine_id, Machine(machine_id, ""))
        # Longer than an id and base62, so a secret can never look like `mt_` + 32 hex.
        record, secret = self._issue(
            "m2m",
            "mt_",
            48,
            machine_id,
            machine.scoped_machines if scopes is None else scopes,
            claims,
            seconds_until_expiration,
        )
        return IssuedToken(record.id, secret, record.expiration_ms)

    def revoke_m2m_token(self, token_id: str, reason: str | None = None) -> None:
        record = self._by_id.get(token_id)
        if record is None:
            raise KeyError(f"unknown token id {token_id!r}")
        record.revoked = True
        record.revocation_reason = reason
        record.updated_ms = self.now_ms()

    def create_oauth_token(
        self,
        user_id: str = DEFAULT_USER,
        *,
        scopes: Iterable[str] = (),
        client_id: str = DEFAULT_CLIENT_ID,
        expires_in: float | None = 3600,
    ) -> str:
        _, secret = self._issue(
            "oauth", "oat_", 40, user_id, scopes, None, expires_in, client_id=client_id
        )
        return secret

    def create_api_key(
        self,
        subject: str,
        *,
        scopes: Iterable[str] = (),
        claims: Mapping[str, Any] | None = None,
        expires_in: float | None = None,
        name: str = "emulator key",
    ) -> str:
        _, secret = self._issue(
            "api_key",
            "ak_",
            40,
            subject,
            scopes,
            claims,
            expires_in,
            name=name,
            created_by=subject if subject.startswith("user_") else None,
        )
        return secret

    def mint_jwt(self, claims: Mapping[str, Any], headers: Mapping[str, Any] | None = None) -> str:
        """Sign anything with the instance key; `headers` override the default kid/typ."""
        head: dict[str, Any] = {"kid": self.kid, "typ": "JWT", **(headers or {})}
        return jwt.encode(dict(claims), self.private_key, algorithm="RS256", headers=head)

    def _times(self, expires_in: float) -> dict[str, int]:
        now = int(self.now())
        return {"iat": now, "nbf": now, "exp": now + int(expires_in)}

    def mint_session_jwt(
        self,
        user_id: str,
        *,
        sid: str | None = None,
        azp: str | None = None,
        expires_in: float = 60,
        org_id: str | None = None,
        extra: Mapping[str, Any] | None = None,
        kid: str | None = None,
    ) -> str:
        claims: dict[str, Any] = {
            "azp": azp or DEFAULT_AZP,
            "iss": self.issuer,
            "sub": user_id,
            "sid": sid or "sess_" + b62(27),
            "jti": secrets.token_hex(10),
            "v": 2,
            **self._times(expires_in),
        }
        if org_id:
            claims["o"] = {"id": org_id, "rol": "member", "slg": org_id.removeprefix("org_")}
        claims.update(extra or {})
        head: dict[str, Any] = {"cat": SESSION_JWT_CAT}
        if kid:
            head["kid"] = kid
        return self.mint_jwt(claims, head)

    def mint_m2m_jwt(
        self,
        machine_id: str,
        *,
        claims: Mapping[str, Any] | None = None,
        expires_in: float = 3600,
    ) -> str:
        """A JWT-format M2M token as Clerk mints it: iss, sub, exp, nbf, iat, jti set by
        Clerk; `claims` (the creator's custom claims, `scopes` or `aud` included) beside
        them, never replacing them."""
        custom = {k: v for k, v in (claims or {}).items() if k not in M2M_JWT_RESERVED}
        payload: dict[str, Any] = {
            **custom,
            "iss": self.issuer,
            "sub": machine_id,
            "jti": "mt_" + secrets.token_hex(16),
            **self._times(expires_in),
        }
        return self.mint_jwt(payload, {"cat": M2M_JWT_CAT})

    def mint_oauth_jwt(
        self,
        user_id: str,
        *,
        scopes: Iterable[str] = (),
        client_id: str = DEFAULT_CLIENT_ID,
        expires_in: float = 3600,
    ) -> str:
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": user_id,
            "client_id": client_id,
            "jti": "oat_" + secrets.token_hex(16),
            "scope": " ".join(scopes),
            **self._times(expires_in),
        }
        return self.mint_jwt(claims, {"typ": "at+jwt"})
