"""The Backend API calls of one emulated Clerk instance, without I/O: each answered as an
`Answer` from the `Authorization` value and the raw request body, by the rules the real
Clerk applies (which key may see which token, 404 otherwise; revoked/expired answered as
200 with flags). `app` adds HTTP, faults and call counting on top."""

from __future__ import annotations

import secrets
from typing import Any

import jwt

from proxy.emulator.state import Caller, ClerkInstance, Machine
from proxy.emulator.wire import (
    Answer,
    TokenKind,
    TokenRecord,
    bad_instance_key,
    bad_machine_key,
    bearer,
    not_found,
    param_invalid,
    param_missing,
    parse_body,
)


class BackendApi(ClerkInstance):
    """`ClerkInstance`'s state, answering the Backend API."""

    def authenticate(self, authorization: str | None) -> Caller | Answer:
        key = bearer(authorization)
        # Bytes: compare_digest refuses non-ASCII str, and a header may carry anything.
        if key is not None and secrets.compare_digest(
            key.encode(errors="replace"), self.secret_key.encode()
        ):
            return Caller(None)
        if key is not None and key.startswith("ak_"):
            machine = self._machine_keys.get(key)
            return Caller(machine) if machine else bad_machine_key()
        return bad_instance_key()

    def _verify(
        self, kind: TokenKind, field_names: tuple[str, ...], raw: bytes, caller: Caller
    ) -> Answer:
        body = parse_body(raw)
        if isinstance(body, Answer):
            return body
        value = next((body[n] for n in field_names if n in body), None)
        if value is None:
            return param_missing(field_names[0])
        if not isinstance(value, str) or not value:
            return param_invalid(field_names[0], "must be a non-empty string")
        record = self._by_secret.get(value)
        if record is None or record.kind != kind:
            return not_found()
        # A machine only sees tokens meant for it; Clerk does not say the token exists.
        if caller.machine and caller.machine.id not in record.scopes:
            return not_found()
        now = self.now_ms()
        if not record.revoked and not (record.expiration_ms and record.expiration_ms <= now):
            record.last_used_ms = now
        return Answer(200, record.body(now))

    def verify_m2m(self, authorization: str | None, raw: bytes) -> Answer:
        caller = self.authenticate(authorization)
        if isinstance(caller, Answer):
            return caller
        return self._verify("m2m", ("token", "secret"), raw, caller)

    def verify_oauth(self, authorization: str | None, raw: bytes) -> Answer:
        caller = self.authenticate(authorization)
        if isinstance(caller, Answer):
            return caller
        if caller.machine:
            return bad_instance_key()
        return self._verify("oauth", ("access_token",), raw, caller)

    def verify_api_key(self, authorization: str | None, raw: bytes) -> Answer:
        caller = self.authenticate(authorization)
        if isinstance(caller, Answer):
            return caller
        if caller.machine:
            return bad_instance_key()
        return self._verify("api_key", ("secret",), raw, caller)

    def create_m2m(self, authorization: str | None, raw: bytes) -> Answer:
        caller = self.authenticate(authorization)
        if isinstance(caller, Answer):
            return caller
        body = parse_body(raw)
        if isinstance(body, Answer):
            return body
        machine = caller.machine
        if machine is None:  # the instance key names the machine in the body
            key = body.get("machine_secret_key")
            if key is None:
                return param_missing("machine_secret_key")
            machine = self._machine_keys.get(key) if isinstance(key, str) else None
            if machine is None:
                return bad_machine_key()
        seconds = body.get("seconds_until_expiration")
        if seconds is not None and (
            isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0
        ):
            return param_invalid("seconds_until_expiration", "must be a positive number")
        claims = body.get("claims")
        if claims is not None and not isinstance(claims, dict):
            return param_invalid("claims", "must be an object")
        token_format = body.get("token_format", "opaque")
        if token_format not in ("opaque", "jwt"):
            return param_invalid("token_format", 'must be "opaque" or "jwt"')
        if token_format == "jwt":
            return self._create_m2m_jwt(machine, seconds, claims)
        issued = self.create_m2m_token(machine.id, seconds_until_expiration=seconds, claims=claims)
        record = self._by_id[issued.id]
        return Answer(200, {**record.body(self.now_ms()), "token": issued.secret})

    def _create_m2m_jwt(
        self, machine: Machine, seconds: float | None, claims: dict[str, Any] | None
    ) -> Answer:
        lifetime = seconds if seconds is not None else 3600
        token = self.mint_m2m_jwt(machine.id, expires_in=lifetime)
        payload = jwt.decode(token, options={"verify_signature": False})
        now = self.now_ms()
        record = TokenRecord(
            kind="m2m",
            id=payload["jti"],
            subject=machine.id,
            scopes=list(machine.scoped_machines),
            claims=claims,
            expiration_ms=payload["exp"] * 1000,
            created_ms=now,
            updated_ms=now,
        )
        # JWT-format tokens are verified locally and cannot be revoked: nothing is stored.
        return Answer(200, {**record.body(now), "token": token})

    def revoke_m2m(self, authorization: str | None, token_id: str, raw: bytes) -> Answer:
        caller = self.authenticate(authorization)
        if isinstance(caller, Answer):
            return caller
        body = parse_body(raw)
        if isinstance(body, Answer):
            return body
        reason = body.get("revocation_reason")
        if reason is not None and not isinstance(reason, str):
            return param_invalid("revocation_reason", "must be a string")
        record = self._by_id.get(token_id)
        if record is None or record.kind != "m2m":
            return not_found()
        if caller.machine and caller.machine.id not in (record.subject, *record.scopes):
            return not_found()
        self.revoke_m2m_token(token_id, reason)
        return Answer(200, record.body(self.now_ms()))

    def jwks(self, authorization: str | None) -> Answer:
        caller = self.authenticate(authorization)
        if isinstance(caller, Answer):
            return caller
        return (
            bad_instance_key() if caller.machine else Answer(200, {"keys": [dict(self.public_jwk)]})
        )
