"""Other OAuth 2.0 issuers: which one a token belongs to, and its verification there.

A JWT goes to the issuer its `iss` names (exact string), and only there: its key
comes from that issuer's own key set, so a kid of another issuer's set, or a key two
issuers both publish under one kid, never verifies a token that names the other.
Nothing is tried in turn. A token whose `iss` names an issuer we do not serve is a 401
that says so (when `clerk.issuer` is set; else it is Clerk's to judge, see `verifier`).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import aiohttp

from proxy.auth import jws
from proxy.auth.issuers.calls import IssuerHttp
from proxy.auth.issuers.claims import REFUSED_AS, map_principal, rules
from proxy.auth.issuers.discovery import Discovery
from proxy.auth.issuers.introspection import Introspector
from proxy.auth.jws import Unverified, peek
from proxy.auth.keyset import Fetched, KeySetCache
from proxy.config.issuers import CLERK_PREFIXES
from proxy.config.model import Issuer
from proxy.core.errors import TOKEN_INVALID, ProxyError
from proxy.core.principal import Principal
from proxy.observe.metrics import Metrics

log = logging.getLogger("proxy.issuers")

# An `iss` is echoed in a refusal only when it is a plain, short, printable URL.
_SHOWABLE: Final = re.compile(r"https?://[A-Za-z0-9._~:/?#\[\]@!$&'()*+,;=%-]{1,200}")


# Which issuers this proxy trusts is the operator's to know, not every caller's: the
# refusal names the token's own issuer, the log line the ones served (at DEBUG: an
# unknown issuer is a caller's mistake, one line per such request).
def unserved(iss: str, served: Sequence[str]) -> ProxyError:
    return _not_served("the token was issued by {}, which this proxy does not serve", iss, served)


def not_clerk(iss: str, served: Sequence[str]) -> ProxyError:
    return _not_served(
        "the token names {}, which is not a configured issuer, and it does not verify "
        "as this Clerk instance's token",
        iss,
        served,
    )


def _not_served(message: str, iss: str, served: Sequence[str]) -> ProxyError:
    who = iss if _SHOWABLE.fullmatch(iss) else "an issuer"
    log.debug("a token of an issuer not served", extra={"served": list(served)})
    return ProxyError(TOKEN_INVALID, message.format(who), token_type=REFUSED_AS)


def _media_type(typ: str) -> str:
    # Media type names are case-insensitive; "application/" may be left out (RFC 7515 §4.1.9).
    return typ.lower().removeprefix("application/")


def _typ_accepted(
    header: Mapping[str, Any], accepted: Sequence[str], named: frozenset[str]
) -> bool:
    """`named`: the accepted types other than none, as `_media_type` spells them."""
    typ = header.get("typ")
    if typ is None:
        return "" in accepted
    return isinstance(typ, str) and _media_type(typ) in named


class IssuerVerifier:
    def __init__(
        self,
        cfg: Issuer,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.rules = rules(cfg)
        self._typs = frozenset(_media_type(t) for t in cfg.token_types if t)
        self._now = now
        self.http = IssuerHttp(cfg, session, metrics)
        self.discovery = Discovery(self.http, now=now)
        self.introspector = (
            Introspector(self.http, self.discovery, now=now) if cfg.introspection else None
        )
        self.keys = KeySetCache(
            self._fetch_jwks,
            name=f"issuer {cfg.name}",
            max_age=cfg.jwks_cache_seconds,
            min_refetch=cfg.jwks_min_refetch_seconds,
            now=now,
        )

    async def _fetch_jwks(self) -> Fetched:
        url = self.cfg.jwks_url or (await self.discovery.metadata()).jwks_uri
        return await self.http.get("jwks", url)

    async def warm(self) -> None:
        """Discovery and keys fetched now, at start-up and on a reload that builds this
        verifier: an unreachable or misconfigured issuer shows in the log before the first
        partner meets it as a 503. Nobody waits for it (readiness does not depend on an
        issuer); each failure is logged where it happens."""
        with contextlib.suppress(ProxyError):
            await self.keys.refresh()

    def _check_typ(self, header: Mapping[str, Any]) -> None:
        cfg = self.cfg
        if not _typ_accepted(header, cfg.token_types, self._typs):
            shown = [t or "(none)" for t in cfg.token_types]
            raise jws.invalid(
                f"the JWT's typ is not one issuer {cfg.name} uses for access tokens "
                f"({', '.join(shown)})",
                REFUSED_AS,
            )

    async def verify_jwt(self, token: str, parts: Unverified) -> Principal:
        self._check_typ(parts.header)
        claims = await jws.verify(token, parts, self.rules, self.keys.key, self._now, REFUSED_AS)
        return map_principal(claims, self.cfg)

    def verify_held(self, token: str, parts: Unverified) -> Principal | None:
        """`verify_jwt` with the keys held now; None: the token's key is not among them."""
        self._check_typ(parts.header)
        claims = jws.verify_held(token, parts, self.rules, self.keys.held, self._now, REFUSED_AS)
        return None if claims is None else map_principal(claims, self.cfg)


class Issuers:
    """Every configured issuer, found by a token's `iss`."""

    def __init__(
        self,
        cfgs: Sequence[Issuer],
        clerk_issuer: str,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.by_iss = {c.issuer: IssuerVerifier(c, session, metrics, now=now) for c in cfgs}
        self._clerk_issuer = clerk_issuer
        self.served = ("clerk", *(c.name for c in cfgs))
        # Opaque tokens: by prefix, longest first; then the one issuer without a prefix
        # (config allows at most one), which takes only tokens that are not JWT-shaped.
        self._prefixed: list[tuple[str, IssuerVerifier]] = []
        self._catch_all: IssuerVerifier | None = None
        for verifier in self.by_iss.values():
            intro = verifier.cfg.introspection
            if intro is not None and intro.token_prefix:
                self._prefixed.append((intro.token_prefix, verifier))
            elif intro is not None:
                self._catch_all = verifier
        self._prefixed.sort(key=lambda pv: -len(pv[0]))

    def __bool__(self) -> bool:
        return bool(self.by_iss)

    def _opaque(self, token: str) -> IssuerVerifier | None:
        if self._catch_all is None or token.startswith(CLERK_PREFIXES) or token.count(".") == 2:
            return None
        return self._catch_all

    def route(self, token: str) -> tuple[IssuerVerifier | None, Unverified | None, str | None]:
        """(verifier, parts, None) for a JWT of a configured issuer (`parts`: its segments,
        read once); (verifier, None, None) for an opaque token an issuer introspects;
        (None, parts, iss) for a JWT whose `iss` is not configured but may be Clerk's;
        (None, parts, None) for anything else (Clerk's; `parts` None when it is no JWT).
        Raises 401 for an `iss` that is neither ours nor Clerk's."""
        for prefix, by_prefix in self._prefixed:
            if token.startswith(prefix):
                return by_prefix, None, None
        parts = peek(token)
        if parts is None:
            return self._opaque(token), None, None
        iss = parts.payload.get("iss")
        if not isinstance(iss, str):
            return None, parts, None
        verifier = self.by_iss.get(iss)
        if verifier is not None:
            return verifier, parts, None
        if self._clerk_issuer:
            if iss.rstrip("/") != self._clerk_issuer:
                raise unserved(iss, self.served)
            return None, parts, None
        return None, parts, iss
