"""OAuth for a2pd: the JWT bearer grant, refresh before expiry, and the WebSocket token.

One ``TokenManager`` owns every token: all token work is serialised behind one lock, so
parallel refreshes can never race and burn the Auth rate group (PROTOCOL.md §1.2, §8.1).

- The access token is refreshed once ``refresh_at`` of its lifetime has passed (refresh keeps
  the OAuth session, which session recovery needs). A failed refresh (400/401) falls back to
  a new JWT grant — a new OAuth session, so ``session_id`` changes and the caller knows a
  recovery with the old ``wsc`` is pointless. Without a refresh token (the app setting is
  off) nothing is done until the access token is about to expire: then a new grant.
- ``/restapi/oauth/token`` and ``/restapi/oauth/wstoken`` share the Auth rate group (5/min by
  default): WebSocket tokens are fetched at most once per ``wstoken_min_interval``, and a 429
  blocks every auth call until its ``Retry-After`` has passed.
- Rejected client credentials, a rejected JWT or a missing permission raise
  ``FatalPlatformError``: retrying cannot fix them.

The platform's REST calls go through this module's client (backfill and ``a2pd check``
borrow it); which modules may import httpx at all is tests/test_layers.py's ``OWNERS``.
Tokens never reach a log line.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import anyio
import httpx

from a2pd import counts
from a2pd.auth.rest import (
    DEFAULT_RETRY_AFTER,
    MAX_RETRY_AFTER,
    PERMISSION_CODES,
    PlatformRest,
    Refusal,
    refusal,
    retry_after_of,
)
from a2pd.auth.tokens import Tokens, expiry_margin, exported, refresh_due, restored
from a2pd.config import ConnectionConfig, PlatformConfig
from a2pd.errors import FatalPlatformError, PlatformError, RateLimited
from a2pd.logging import get_logger, register_secret
from a2pd.observe import Counters

__all__ = [
    "DEFAULT_RETRY_AFTER",
    "JWT_GRANT",
    "MAX_RETRY_AFTER",
    "NO_REFRESH_FIX",
    "NO_REFRESH_NOTE",
    "PERMISSION_CODES",
    "REVOKE_PATH",
    "SUBSCRIPTION_PATH",
    "TOKEN_PATH",
    "WSTOKEN_PATH",
    "Refusal",
    "TokenManager",
    "WsToken",
    "refusal",
    "retry_after_of",
]

TOKEN_PATH = "/restapi/oauth/token"  # noqa: S105 - a URL path, not a secret
WSTOKEN_PATH = "/restapi/oauth/wstoken"
REVOKE_PATH = "/restapi/oauth/revoke"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
SUBSCRIPTION_PATH = "/restapi/v1.0/subscription/"
#: what to do about a missing refresh token (the warning below, and ``a2pd check``)
NO_REFRESH_FIX = ("turn on 'Issue refresh tokens' in the app's settings (RingCentral "
                  "Developer Console → your app → Settings → Auth)")
NO_REFRESH_NOTE = ("without one, a2pd makes a new JWT grant (a new OAuth session) each time "
                   "the access token expires; a WebSocket session dropped after that cannot be "
                   "recovered, so its gap is rebuilt from the A2P lists instead")

log = get_logger("auth")


@dataclass(frozen=True, slots=True)
class WsToken:
    """What ``/restapi/oauth/wstoken`` returns."""

    ws_access_token: str
    uri: str
    expires_in: float

    def __repr__(self) -> str:
        return f"WsToken(uri={self.uri!r}, expires_in={self.expires_in})"


class TokenManager:
    """The single owner of OAuth and WebSocket tokens."""

    def __init__(
        self,
        platform: PlatformConfig,
        client_secret: str,
        jwt: str,
        connection: ConnectionConfig,
        client: httpx.AsyncClient,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._platform = platform
        self._client_secret = client_secret
        self._jwt = jwt
        self._connection = connection
        self._client = client
        self._clock = clock
        self._lock = anyio.Lock()
        self._tokens: Tokens | None = None
        self._last_wstoken: float | None = None
        #: "no refresh token" is said once per process (every grant would repeat it)
        self._warned_no_refresh = False
        #: grants (new OAuth sessions), refreshes, wstokens, rate_limited
        self.counters = Counters()
        self._rest = PlatformRest(platform, client_secret, client, self.counters, clock)
        #: called whenever the tokens change (the daemon saves them, daemon/a2pd/persist.py)
        self.on_change: Callable[[], None] | None = None
        register_secret(client_secret, permanent=True)
        register_secret(jwt, permanent=True)

    # -- what callers read -------------------------------------------------------------------

    @property
    def session_id(self) -> str | None:
        """The OAuth session id: it changes only when a new JWT grant was needed."""
        return self._tokens.session_id if self._tokens else None

    @property
    def owner_id(self) -> str | None:
        return self._tokens.owner_id if self._tokens else None

    @property
    def has_refresh_token(self) -> bool:
        """Whether the platform issued a refresh token with the current access token (the
        app setting "Issue refresh tokens")."""
        return self._tokens is not None and self._tokens.refresh is not None

    def refresh_due_in(self) -> float:
        """Seconds until the access token should be refreshed (0 when it should be now;
        ``tokens.refresh_due``)."""
        tokens = self._tokens
        if tokens is None:
            return 0.0
        return max(0.0, refresh_due(tokens, self._platform.refresh_at) - self._clock())

    # -- persistence (wall-clock times: a restart changes the monotonic clock) ---------------

    def export(self) -> dict[str, Any] | None:
        """The tokens as a JSON-able document (secrets: only ever stored encrypted)."""
        tokens = self._tokens
        return None if tokens is None else exported(tokens, time.time() - self._clock())

    def restore(self, doc: dict[str, Any]) -> bool:
        """Take tokens saved by ``export`` (before the first call); False if unusable."""
        tokens = restored(doc, time.time() - self._clock())
        if tokens is None or tokens.refresh is None or \
                self._clock() >= tokens.refresh_expires - 60:
            return False  # nothing left to keep the OAuth session with: grant afresh
        register_secret(tokens.access)
        register_secret(tokens.refresh)
        self._tokens = tokens
        log.info("oauth_session_resumed", owner_id=tokens.owner_id,
                 access_valid_for=round(max(0.0, tokens.access_expires - self._clock())))
        return True

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # -- operations --------------------------------------------------------------------------

    async def access_token(self) -> str:
        """A valid access token, refreshing or granting one first if needed."""
        async with self._lock:
            return await self._valid_access()

    async def _valid_access(self) -> str:
        tokens = self._tokens
        if tokens is None:
            tokens = await self._grant()
        else:
            if self._clock() >= tokens.access_expires - expiry_margin(tokens):
                tokens = await self._refresh_or_grant()
        return tokens.access

    async def refresh(self) -> None:
        """Refresh now (falls back to a new JWT grant when the refresh token is refused)."""
        async with self._lock:
            await self._refresh_or_grant()

    async def refresh_if_due(self) -> None:
        """Grant or refresh if that is (still) due once the lock is held: another caller may
        have just done it, and a needless refresh invalidates a token someone is using."""
        async with self._lock:
            if self._tokens is None:
                await self._grant()
            elif self.refresh_due_in() <= 0:
                await self._refresh_or_grant()

    async def run_refresher(self) -> None:
        """Keep the access token fresh for ever (the WS session hangs off the OAuth session)."""
        failures = 0
        while True:
            await anyio.sleep(self.refresh_due_in())
            try:
                await self.refresh_if_due()
                failures = 0
            except RateLimited as exc:
                await anyio.sleep(exc.retry_after)
            except PlatformError as exc:
                failures += 1
                delay = min(60.0, 2.0 ** failures)
                log.warning("token_refresh_failed", reason=exc.reason, status=exc.status,
                            retry_in=delay)
                await anyio.sleep(delay)

    async def ws_token(self) -> WsToken:
        """A fresh WebSocket token (one per connection attempt), paced for the Auth group."""
        async with self._lock:
            if self._last_wstoken is not None:
                wait = self._last_wstoken + self._connection.wstoken_min_interval - self._clock()
                if wait > 0:
                    log.debug("wstoken_paced", wait=round(wait, 3))
                    await anyio.sleep(wait)
            # the access token is taken under the same lock hold, so no refresh can
            # invalidate it between here and the request
            access = await self._valid_access()
            self._last_wstoken = self._clock()
            try:
                data = await self._rest.post(WSTOKEN_PATH, bearer=access)
            except PlatformError as exc:
                if exc.status != 401:
                    raise
                # our access token was invalidated: a refresh keeps the OAuth session (and
                # recovery); it falls back to a new grant when the session itself is gone
                log.warning("access_token_refused", path=WSTOKEN_PATH)
                access = (await self._refresh_or_grant()).access
                data = await self._rest.post(WSTOKEN_PATH, bearer=access)
        try:
            token = WsToken(str(data["ws_access_token"]), str(data["uri"]),
                            float(data.get("expires_in") or 600))
        except (KeyError, TypeError, ValueError) as exc:
            raise PlatformError("wstoken reply lacks ws_access_token/uri") from exc
        register_secret(token.ws_access_token, kind="wstoken")
        self.counters.inc(counts.WSTOKENS)
        return token

    async def delete_subscription(self, subscription_id: str) -> bool:
        """``DELETE /restapi/v1.0/subscription/{id}`` (a subscription this daemon left behind):
        True when it is gone (deleted, or unknown to the platform), False otherwise."""
        path = SUBSCRIPTION_PATH + quote(subscription_id, safe="")
        try:
            response = await self._client.delete(
                self._platform.server + path, timeout=self._platform.http_timeout,
                headers={"Accept": "application/json",
                         "Authorization": f"Bearer {await self.access_token()}"})
        except httpx.HTTPError as exc:
            log.info("subscription_not_deleted", error=type(exc).__name__)
            return False
        if response.status_code in (200, 204, 404):
            self.counters.inc(counts.SUBSCRIPTIONS_DELETED)
            return True
        log.info("subscription_not_deleted", status=response.status_code)
        return False

    async def revoke(self) -> bool:
        """End the OAuth session. Failures are ignored and never retried (PROTOCOL.md §1.3);
        False says the platform did not confirm it (True: it did, or there was none)."""
        tokens = self._tokens
        if tokens is None:
            return True
        revoked = True
        try:
            await self._rest.post(REVOKE_PATH, form={"token": tokens.access}, basic=True)
        except PlatformError as exc:
            log.info("revoke_failed", status=exc.status)
            revoked = False
        self._tokens = None
        self._changed()
        return revoked

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        """One REST ``GET path`` with the access token (``a2pd check`` reads a list page):
        the JSON object of a 2xx answer. Otherwise raises ``PlatformError`` (``RateLimited``
        for 429) with the status and code, ``last_refusal`` saying what the platform said;
        unlike the Auth calls, a 429 here holds nothing back (another rate group)."""
        return await self._rest.get(path, params, await self.access_token())

    @property
    def last_refusal(self) -> Refusal | None:
        """The platform's latest refusal (non-2xx answer), for ``a2pd check``'s report."""
        return self._rest.last_refusal

    @last_refusal.setter
    def last_refusal(self, value: Refusal | None) -> None:
        self._rest.last_refusal = value

    # -- internals (call with the lock held) -------------------------------------------------

    async def _grant(self) -> Tokens:
        form = {"grant_type": JWT_GRANT, "assertion": self._jwt}
        try:
            data = await self._rest.post(TOKEN_PATH, form=form, basic=True)
        except PlatformError as exc:
            if exc.status in (400, 401, 403) and not isinstance(exc, RateLimited):
                what = "client id/secret" if exc.code in ("invalid_client", "OAU-123") or \
                    exc.status == 401 else "JWT credential"
                raise FatalPlatformError(f"the platform rejected the {what}",
                                         status=exc.status, code=exc.code) from exc
            raise
        tokens = self._store(data)
        self.counters.inc(counts.GRANTS)
        log.info("oauth_session_started", owner_id=tokens.owner_id,
                 expires_in=round(tokens.access_expires - tokens.issued))
        if tokens.refresh is None and not self._warned_no_refresh:
            self._warned_no_refresh = True
            log.warning("no_refresh_token", fix=NO_REFRESH_FIX, note=NO_REFRESH_NOTE)
        return tokens

    async def _refresh_or_grant(self) -> Tokens:
        tokens = self._tokens
        if tokens is None or tokens.refresh is None or self._clock() >= tokens.refresh_expires:
            return await self._grant()
        form = {"grant_type": "refresh_token", "refresh_token": tokens.refresh}
        try:
            data = await self._rest.post(TOKEN_PATH, form=form, basic=True)
        except PlatformError as exc:
            if exc.status in (400, 401) and not isinstance(exc, RateLimited):
                log.warning("refresh_refused_new_grant", status=exc.status, code=exc.code)
                self._tokens = None
                return await self._grant()
            raise
        refreshed = self._store(data, previous=tokens)
        self.counters.inc(counts.REFRESHES)
        log.debug("access_token_refreshed")
        return refreshed

    def _store(self, data: dict[str, Any], previous: Tokens | None = None) -> Tokens:
        try:
            tokens = Tokens(data, self._clock(), previous)
        except (KeyError, TypeError, ValueError) as exc:
            raise PlatformError("token reply lacks access_token/expires_in") from exc
        register_secret(tokens.access)
        register_secret(tokens.refresh)
        self._tokens = tokens
        self._changed()
        return tokens

