"""RFC 7662 token introspection: an issuer's opaque access tokens, judged by the issuer.

`judge_answer` is pure (status and body in, Principal or refusal out); `Introspector`
adds the call. The mapping of failures is Clerk's (clerk.py): the issuer saying the
token is not active is the caller's problem (401, negative-cacheable), while the issuer
being down, slow, rate-limiting or refusing *our* credentials is ours (503
`verification_unavailable`, never cached, never the caller's fault).
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote_plus, urlencode

from proxy.auth.claims_json import loads, numeric_date
from proxy.auth.gate import Unavailable, retry_after
from proxy.auth.issuers.calls import BAD_CREDENTIALS_RETRY_AFTER, IssuerHttp
from proxy.auth.issuers.claims import REFUSED_AS, map_principal, rules
from proxy.auth.issuers.discovery import Discovery
from proxy.auth.jws import check_claims, invalid
from proxy.config.model import Issuer
from proxy.core.principal import Principal

log = logging.getLogger("proxy.introspection")


def _time(data: Mapping[str, Any], name: str) -> float | None:
    try:
        return numeric_date(data.get(name))
    except ValueError as exc:
        raise ValueError(f"{name} {exc}") from None


def judge_answer(
    cfg: Issuer, status: int, headers: Mapping[str, str], body: bytes, now: float
) -> Principal:
    """The Principal an introspection answer vouches for, or the refusal it means."""
    name = cfg.name
    if status in (401, 403):
        log.error(
            "issuer %s refused the proxy's introspection credentials (HTTP %d): check "
            "issuers[].introspection.client_id/client_secret; its opaque tokens fail until fixed",
            name,
            status,
        )
        raise Unavailable("the proxy cannot verify tokens right now", BAD_CREDENTIALS_RETRY_AFTER)
    if status != 200:
        raise Unavailable(f"issuer {name} answered HTTP {status}", retry_after(headers))
    try:
        data = loads(body)
        if not isinstance(data, dict) or not isinstance(data.get("active"), bool):
            raise ValueError("no boolean `active`")
        if not data["active"]:
            raise invalid(f"issuer {name} says the token is not active", REFUSED_AS)
        for claim in ("exp", "nbf", "iat"):
            _time(data, claim)
        audiences = data.get("aud")
        if audiences is not None and not isinstance(audiences, str | list):
            raise ValueError("aud is neither a string nor a list")
    except (ValueError, RecursionError) as exc:
        log.error("unreadable introspection answer from issuer %s: %s", name, exc)
        raise Unavailable(f"issuer {name} gave an unreadable answer") from None
    # RFC 7662 leaves every field but `active` optional: what is there must hold, as in
    # the issuer's JWTs.
    check_claims(data, rules(cfg), now, REFUSED_AS, present_only=True)
    return map_principal(data, cfg, introspected=True)


class Introspector:
    def __init__(
        self, http: IssuerHttp, discovery: Discovery, *, now: Callable[[], float] = time.time
    ) -> None:
        intro = http.cfg.introspection
        assert intro is not None
        self._http = http
        self._discovery = discovery
        self._now = now
        self._cfg = intro
        self._headers = {"Content-Type": "application/x-www-form-urlencoded"}
        self._form = {"token_type_hint": "access_token"}
        if intro.auth_method == "client_secret_basic":
            # RFC 6749 §2.3.1: each part form-urlencoded before base64.
            raw = f"{quote_plus(intro.client_id)}:{quote_plus(intro.client_secret)}"
            self._headers["Authorization"] = "Basic " + base64.b64encode(raw.encode()).decode()
        else:
            self._form = {
                **self._form,
                "client_id": intro.client_id,
                "client_secret": intro.client_secret,
            }

    async def _endpoint(self) -> str:
        if self._cfg.endpoint:
            return self._cfg.endpoint
        found = (await self._discovery.metadata()).introspection_endpoint
        if found is None:
            raise Unavailable(f"issuer {self._http.cfg.name} publishes no introspection endpoint")
        return found

    async def principal(self, token: str) -> Principal:
        url = await self._endpoint()
        body = urlencode({"token": token, **self._form}).encode()
        status, headers, answer = await self._http.call(
            "introspect", "POST", url, data=body, headers=self._headers
        )
        return judge_answer(self._http.cfg, status, headers, answer, self._now())
