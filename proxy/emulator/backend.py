"""The Backend API calls of one emulated Clerk instance, without I/O: each answered as an
`Answer` (a refusal on the way is raised as `Refused`) from the `Authorization` value, the
raw request body (or the query), by the rules of Clerk's published spec
(bapi/2026-05-12.yml): which key may call what, which body fields each route takes
(unknown ones are a 400 where the schema says additionalProperties: false), 201 on create,
404 for a token the caller may not see, revoked/expired answered as 200 with flags. `app`
adds HTTP, faults and call counting."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any, Final

import jwt

from proxy.emulator.state import Caller, ClerkInstance, Machine
from proxy.emulator.wire import (
    Answer,
    Refused,
    TokenKind,
    TokenRecord,
    bad_instance_key,
    bad_machine_key,
    bearer,
    clerk_error,
    forbidden,
    machine_key_required,
    not_found,
    param_invalid,
    param_missing,
    parse_body,
)

M2M_CREATE_FIELDS: Final = frozenset(
    {"token_format", "seconds_until_expiration", "claims", "min_remaining_ttl_seconds"}
)
OAUTH_JWT_TYPES: Final = ("at+jwt", "application/at+jwt")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _query_bool(query: Mapping[str, str], name: str) -> bool:
    value = query.get(name, "false").lower()
    if value not in ("true", "false"):
        raise Refused(param_invalid(name, "must be true or false"))
    return value == "true"


def _query_int(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(float(raw))
    except ValueError:
        raise Refused(param_invalid(name, "must be a number")) from None
    if not low <= value <= high:
        raise Refused(param_invalid(name, f"must be between {low} and {high}"))
    return value


class BackendApi(ClerkInstance):
    """`ClerkInstance`'s state, answering the Backend API."""

    def authenticate(self, authorization: str | None) -> Caller:
        key = bearer(authorization)
        # Bytes: compare_digest refuses non-ASCII str, and a header may carry anything.
        if key is not None and secrets.compare_digest(
            key.encode(errors="replace"), self.secret_key.encode()
        ):
            return Caller(None)
        if key is not None and key.startswith("ak_"):
            machine = self._machine_keys.get(key)
            if machine is None:
                raise Refused(bad_machine_key())
            return Caller(machine)
        raise Refused(bad_instance_key())

    def _lookup(self, kind: TokenKind, value: Any, name: str, caller: Caller) -> Answer:
        if value is None:
            return param_missing(name)
        if not isinstance(value, str) or not value:
            return param_invalid(name, "must be a non-empty string")
        record = self._by_secret.get(value)
        if record is None or record.kind != kind:
            return not_found()
        # A machine key sees only tokens granted access to its machine (the spec: "the
        # token must be granted access to the Machine associated with the Machine Secret
        # Key"); how Clerk answers otherwise is not documented: 404, as for no token.
        if caller.machine and caller.machine.id not in record.scopes:
            return not_found()
        now = self.now_ms()
        if not record.revoked and not (record.expiration_ms and record.expiration_ms <= now):
            record.last_used_ms = now
        return Answer(200, record.body(now))

    def verify_m2m(self, authorization: str | None, raw: bytes) -> Answer:
        caller = self.authenticate(authorization)
        body = parse_body(raw, frozenset({"token"}))
        return self._lookup("m2m", body.get("token"), "token", caller)

    def verify_oauth(self, authorization: str | None, raw: bytes) -> Answer:
        caller = self.authenticate(authorization)
        if caller.machine:
            return bad_instance_key()
        body = parse_body(raw)  # this schema allows other fields
        # `secret` is the deprecated name the spec still lists.
        value = body.get("access_token", body.get("secret"))
        if isinstance(value, str) and value.count(".") == 2:
            return self._verify_oauth_jwt(value)
        return self._lookup("oauth", value, "access_token", caller)

    def _verify_oauth_jwt(self, token: str) -> Answer:
        """A JWT access token of this instance: its object, or `{"active": false}` once it
        has expired (the spec's second answer); anything else is unknown (404)."""
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(
                token,
                self.private_key.public_key(),
                algorithms=["RS256"],
                options={"verify_exp": False, "verify_aud": False},
            )
        except jwt.PyJWTError:
            return not_found()
        if header.get("typ") not in OAUTH_JWT_TYPES or not isinstance(claims.get("exp"), int):
            return not_found()
        now = self.now_ms()
        if claims["exp"] * 1000 <= now:
            return Answer(200, {"active": False})
        scopes = claims.get("scp", str(claims.get("scope", "")).split())
        record = TokenRecord(
            kind="oauth",
            id=str(claims.get("jti", "")),
            subject=str(claims.get("sub", "")),
            scopes=[s for s in scopes if isinstance(s, str)],
            claims=None,
            expiration_ms=claims["exp"] * 1000,
            created_ms=int(claims.get("iat", 0)) * 1000,
            updated_ms=int(claims.get("iat", 0)) * 1000,
            client_id=str(claims.get("client_id", "")),
        )
        return Answer(200, record.body(now))

    def verify_api_key(self, authorization: str | None, raw: bytes) -> Answer:
        caller = self.authenticate(authorization)
        if caller.machine:
            return bad_instance_key()
        if not self.api_keys_enabled:
            return clerk_error(
                422,
                "api_keys_not_enabled",
                "API keys are not enabled",
                "API keys are not enabled for this instance; enable them in the Clerk Dashboard.",
            )
        body = parse_body(raw, frozenset({"secret"}))
        return self._lookup("api_key", body.get("secret"), "secret", caller)

    def create_m2m(self, authorization: str | None, raw: bytes) -> Answer:
        caller = self.authenticate(authorization)
        machine = caller.machine
        if machine is None:  # "Must be authenticated via a Machine Secret Key"
            return machine_key_required()
        body = parse_body(raw, M2M_CREATE_FIELDS)
        seconds = body.get("seconds_until_expiration")
        if seconds is not None and (not _number(seconds) or seconds <= 0):
            return param_invalid("seconds_until_expiration", "must be a positive number")
        claims = body.get("claims")
        if claims is not None and not isinstance(claims, dict):
            return param_invalid("claims", "must be an object")
        token_format = body.get("token_format", "opaque")
        if token_format not in ("opaque", "jwt"):
            return param_invalid("token_format", 'must be "opaque" or "jwt"')
        reuse = body.get("min_remaining_ttl_seconds")
        if reuse is not None:
            if not isinstance(reuse, int) or isinstance(reuse, bool) or reuse < 0:
                return param_invalid("min_remaining_ttl_seconds", "must be a whole number >= 0")
            if seconds is not None and reuse >= seconds:
                return param_invalid(
                    "min_remaining_ttl_seconds", "must be less than the token's lifetime"
                )
        if token_format == "jwt":
            return self._create_m2m_jwt(machine, seconds, claims)
        if reuse is not None and (found := self._reusable(machine, claims, reuse)) is not None:
            return found
        issued = self.create_m2m_token(machine.id, seconds_until_expiration=seconds, claims=claims)
        record = self._by_id[issued.id]
        return Answer(201, {**record.body(self.now_ms()), "token": issued.secret})

    def _reusable(self, machine: Machine, claims: Any, reuse: int) -> Answer | None:
        """A live opaque token of this machine with the same claims and scopes and at least
        `reuse` seconds left (min_remaining_ttl_seconds), answered as if created."""
        now = self.now_ms()
        for record in reversed(self._by_id.values()):
            if (
                record.kind == "m2m"
                and record.subject == machine.id
                and not record.revoked
                and record.claims == claims
                and record.scopes == list(machine.scoped_machines)
                and (record.expiration_ms is None or record.expiration_ms - now >= reuse * 1000)
            ):
                return Answer(201, {**record.body(now), "token": self._secret_of[record.id]})
        return None

    def _create_m2m_jwt(
        self, machine: Machine, seconds: float | None, claims: dict[str, Any] | None
    ) -> Answer:
        lifetime = seconds if seconds is not None else 3600
        token = self.mint_m2m_jwt(machine.id, claims=claims, expires_in=lifetime)
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
        return Answer(201, {**record.body(now), "token": token})

    def list_m2m(self, authorization: str | None, query: Mapping[str, str]) -> Answer:
        """GET /m2m_tokens: one machine's opaque tokens, newest first. A machine key sees
        only its own machine's."""
        caller = self.authenticate(authorization)
        subject = query.get("subject")
        if not subject:
            return param_missing("subject")
        if caller.machine and caller.machine.id != subject:
            return forbidden("A Machine Secret Key may only list its own machine's M2M tokens.")
        revoked, expired = _query_bool(query, "revoked"), _query_bool(query, "expired")
        limit = _query_int(query, "limit", 10, 1, 100)
        offset = _query_int(query, "offset", 0, 0, 10**9)
        now = self.now_ms()
        found = []
        for record in reversed(self._by_id.values()):
            if record.kind != "m2m" or record.subject != subject:
                continue
            is_expired = record.expiration_ms is not None and record.expiration_ms <= now
            if (record.revoked and not revoked) or (is_expired and not expired):
                continue
            found.append(record.body(now))
        return Answer(
            200, {"m2m_tokens": found[offset : offset + limit], "total_count": len(found)}
        )

    def revoke_m2m(self, authorization: str | None, token_id: str, raw: bytes) -> Answer:
        caller = self.authenticate(authorization)
        body = parse_body(raw, frozenset({"revocation_reason"}))
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
        return (
            bad_instance_key() if caller.machine else Answer(200, {"keys": [dict(self.public_jwk)]})
        )
