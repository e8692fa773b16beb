"""The state and rules of an emulated OAuth 2.0 issuer, without I/O.

Its tokens are Authgear's client-credentials access tokens (authgear-server
`EncodeClientAccessToken`): header `typ: at+jwt`, RS256 (or the key's algorithm) with the
signing key's `kid`; claims `iss`, `aud` (the resource, a string), `iat`, `exp`, `jti`,
`client_id`, `scope` (space-separated) and `sub` = "client_id_" + the client id.
The token endpoint follows RFC 6749 §4.4 (client credentials), §2.3.1 (Basic credentials
form-urlencoded before base64; one authentication method per request) and §5.2 (errors),
RFC 8707 (`resource`; `audience` is also read, as Auth0 names it) and Authgear's rules (a
resource is required and must be granted to the client; `scope` is optional and must be
a subset of what the client was granted there; none means all of it). Introspection is
RFC 7662. `IssuerEmulator` (issuer_app) adds HTTP, faults and call counts.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import unquote_plus

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

OPAQUE_PREFIX: Final = "emu_at_"
DEFAULT_LIFETIME: Final = 1800  # Authgear's default access token lifetime (30 min)
_CURVES: Final[dict[str, Callable[[], ec.EllipticCurve]]] = {
    "ES256": ec.SECP256R1,
    "ES384": ec.SECP384R1,
    "ES512": ec.SECP521R1,
}

# (status, JSON body, extra headers)
Reply = tuple[int, dict[str, Any], dict[str, str]]


def _error(status: int, code: str, description: str, **headers: str) -> Reply:
    return status, {"error": code, "error_description": description}, dict(headers)


@dataclass
class OAuthClient:
    client_id: str
    client_secret: str
    # resource (API identifier) → the scopes granted to this client there
    resources: dict[str, tuple[str, ...]]
    token_format: str = "jwt"  # or "opaque" (verified by introspection)
    lifetime: int = DEFAULT_LIFETIME


@dataclass
class SigningKey:
    kid: str
    algorithm: str
    private_key: Any
    public_jwk: dict[str, Any] = field(default_factory=dict)


def new_key(algorithm: str = "RS256", kid: str | None = None) -> SigningKey:
    private: Any
    if algorithm.startswith(("RS", "PS")):
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif algorithm in _CURVES:
        private = ec.generate_private_key(_CURVES[algorithm]())
    elif algorithm == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"unsupported signing algorithm {algorithm!r}")
    public = dict(jwt.get_algorithm_by_name(algorithm).to_jwk(private.public_key(), as_dict=True))
    kid = kid or "k" + secrets.token_hex(8)
    public.update({"kid": kid, "use": "sig", "alg": algorithm})
    return SigningKey(kid, algorithm, private, public)


def basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    """RFC 6749 §2.3.1: both parts are form-urlencoded before base64 (Authgear decodes so)."""
    if not authorization or not authorization.lower().startswith("basic "):
        return None
    try:
        raw = base64.b64decode(authorization[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = raw.partition(":")
    if not sep:
        return None
    return unquote_plus(user), unquote_plus(password)


class IssuerState:
    def __init__(
        self,
        issuer: str = "http://127.0.0.1:3200",
        *,
        algorithm: str = "RS256",
        now: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer  # `serve` sets it to the bound address
        self.now = now
        self.keys: list[SigningKey] = [new_key(algorithm)]
        self.active = self.keys[0]
        self.clients: dict[str, OAuthClient] = {}
        self.opaque: dict[str, dict[str, Any]] = {}  # sha256(token) → claims
        self.revoked: set[str] = set()  # jti

    # -- keys ----------------------------------------------------------------------

    def rotate_key(self, algorithm: str | None = None, kid: str | None = None) -> str:
        """Publish a new key and sign with it from now on; the old one stays published
        (tokens it signed keep verifying) until `retire_key`."""
        key = new_key(algorithm or self.active.algorithm, kid)
        self.keys.append(key)
        self.active = key
        return key.kid

    def retire_key(self, kid: str) -> None:
        self.keys = [k for k in self.keys if k.kid != kid]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk for k in self.keys]}

    def metadata(self) -> dict[str, Any]:
        base = self.issuer.rstrip("/")
        return {
            "issuer": self.issuer,
            "jwks_uri": f"{base}/oauth2/jwks",
            "token_endpoint": f"{base}/oauth2/token",
            "introspection_endpoint": f"{base}/oauth2/introspect",
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "introspection_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
            ],
            "response_types_supported": ["none"],
            "id_token_signing_alg_values_supported": sorted({k.algorithm for k in self.keys}),
        }

    # -- clients and tokens ----------------------------------------------------------

    def add_client(
        self,
        client_id: str | None = None,
        *,
        resources: Mapping[str, tuple[str, ...] | list[str]],
        client_secret: str | None = None,
        token_format: str = "jwt",  # noqa: S107 - a format name, not a secret
        lifetime: int = DEFAULT_LIFETIME,
    ) -> OAuthClient:
        if token_format not in ("jwt", "opaque"):
            raise ValueError("token_format is jwt or opaque")
        client = OAuthClient(
            client_id=client_id or secrets.token_hex(16),
            client_secret=client_secret or secrets.token_urlsafe(32),
            resources={r: tuple(s) for r, s in resources.items()},
            token_format=token_format,
            lifetime=lifetime,
        )
        self.clients[client.client_id] = client
        return client

    def mint(
        self, claims: Mapping[str, Any], headers: Mapping[str, Any] | None = None, *, key: str = ""
    ) -> str:
        """Any JWT, signed with the active key (or the key `key` names); for negative tests."""
        signing = next((k for k in self.keys if k.kid == key), self.active)
        head = {"typ": "at+jwt", "kid": signing.kid, **(headers or {})}
        return jwt.encode(dict(claims), signing.private_key, signing.algorithm, headers=head)

    def client_claims(
        self, client: OAuthClient, resource: str, scopes: tuple[str, ...]
    ) -> dict[str, Any]:
        now = int(self.now())
        return {
            "jti": secrets.token_hex(16),
            "iss": self.issuer,
            "aud": resource,
            "iat": now,
            "exp": now + client.lifetime,
            "client_id": client.client_id,
            "scope": " ".join(scopes),
            "sub": f"client_id_{client.client_id}",
        }

    def issue(self, client: OAuthClient, resource: str, scopes: tuple[str, ...]) -> str:
        claims = self.client_claims(client, resource, scopes)
        if client.token_format == "opaque":
            token = OPAQUE_PREFIX + secrets.token_urlsafe(32)
            self.opaque[_digest(token)] = claims
            return token
        return self.mint(claims)

    def revoke(self, token: str) -> None:
        claims = self._claims_of(token)
        if claims is not None:
            self.revoked.add(str(claims.get("jti")))

    def _claims_of(self, token: str) -> dict[str, Any] | None:
        if token.startswith(OPAQUE_PREFIX):
            return self.opaque.get(_digest(token))
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = next(k for k in self.keys if k.kid == kid)
            claims: dict[str, Any] = jwt.decode(
                token,
                key.private_key.public_key(),
                [key.algorithm],
                options={"verify_aud": False, "verify_exp": False},
            )
        except (jwt.PyJWTError, StopIteration):
            return None
        return claims if claims.get("iss") == self.issuer else None

    # -- the two endpoints -----------------------------------------------------------

    def _authenticate(
        self, form: Mapping[str, str], authorization: str | None
    ) -> OAuthClient | Reply:
        basic = basic_credentials(authorization)
        if basic is not None and "client_secret" in form:
            return _error(400, "invalid_request", "use one client authentication method, not two")
        if basic is not None:
            client_id, secret = basic
            if form.get("client_id", client_id) != client_id:
                return _error(
                    400, "invalid_request", "client_id differs from the Basic credentials"
                )
        else:
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        client = self.clients.get(client_id)
        if client is None or not secret or not secrets.compare_digest(secret, client.client_secret):
            extra = {"WWW-Authenticate": 'Basic realm="issuer-emulator"'} if basic else {}
            return _error(401, "invalid_client", "client authentication failed", **extra)
        return client

    def token(self, form: Mapping[str, str], authorization: str | None) -> Reply:
        if form.get("grant_type") != "client_credentials":
            return _error(400, "unsupported_grant_type", "only client_credentials is supported")
        client = self._authenticate(form, authorization)
        if not isinstance(client, OAuthClient):
            return client
        resource, audience = form.get("resource"), form.get("audience")
        if resource and audience and resource != audience:
            return _error(400, "invalid_request", "resource and audience name different APIs")
        target = resource or audience
        if not target:
            return _error(400, "invalid_target", "resource is required")
        granted = client.resources.get(target)
        if granted is None:
            return _error(400, "invalid_target", "client is not associated with the resource")
        asked = tuple(form.get("scope", "").split())
        if asked and not set(asked) <= set(granted):
            return _error(400, "invalid_scope", "a requested scope is not granted to the client")
        scopes = asked or granted
        body = {
            "access_token": self.issue(client, target, scopes),
            "token_type": "Bearer",
            "expires_in": client.lifetime,
            "scope": " ".join(scopes),
        }
        return 200, body, {"Cache-Control": "no-store", "Pragma": "no-cache"}

    def introspect(self, form: Mapping[str, str], authorization: str | None) -> Reply:
        """RFC 7662: the caller (a resource server) authenticates as a registered client."""
        caller = self._authenticate(form, authorization)
        if not isinstance(caller, OAuthClient):
            return caller
        token = form.get("token")
        if not token:
            return _error(400, "invalid_request", "token is required")
        claims = self._claims_of(token)
        now = self.now()
        if claims is None or claims.get("exp", 0) <= now or str(claims.get("jti")) in self.revoked:
            return 200, {"active": False}, {"Cache-Control": "no-store"}
        return (
            200,
            {"active": True, "token_type": "Bearer", **claims},
            {"Cache-Control": "no-store"},
        )


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
