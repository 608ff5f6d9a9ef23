"""The A2P list calls: one GET at a time, paced by the ``X-Rate-Limit-*`` headers (once
``Remaining`` is 0, nothing is sent for ``Window`` seconds) and by ``Retry-After`` after a
429 (sending during the penalty would restart it), retried with backoff on errors, all
without leaving the page it was on; and a list's pages one after another."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx

from a2pd import counts
from a2pd.auth import TokenManager, retry_after_of
from a2pd.backfill.records import CONSENTS_PATH, LIST_PATH
from a2pd.backoff import backoff
from a2pd.config import BackfillConfig
from a2pd.errors import FatalPlatformError, PlatformError, RateLimited
from a2pd.logging import get_logger
from a2pd.observe import Counters
from a2pd.vocab import error_code

__all__ = ["MAX_PAGES", "PERMANENT", "Lists"]

log = get_logger("backfill")

#: a list that keeps answering next pages is cut here (a platform bug must not loop us)
MAX_PAGES = 100_000
#: answers that retrying cannot change (no A2P SMS permission, a retired endpoint, a query
#: the platform will never take): reported once, the gaps kept until a reload or restart
PERMANENT = frozenset({400, 403, 404, 405, 410})


class Lists:
    """The platform's A2P lists, read politely (see the module docstring). ``call`` raises
    only ``FatalPlatformError`` (a ``PERMANENT`` answer)."""

    def __init__(self, cfg: BackfillConfig, auth: TokenManager, http: httpx.AsyncClient,
                 server: str, counters: Counters, *, http_timeout: float = 30.0) -> None:
        self.cfg = cfg
        self.auth = auth
        self.http = http
        self.server = server.rstrip("/")
        self.counters = counters
        self.http_timeout = http_timeout
        #: monotonic time before which no list call may be sent (rate limit, backoff)
        self._not_before = 0.0

    async def pages(self, resource: str, query: dict[str, Any], token: str | None,
                     ) -> AsyncIterator[tuple[list[Any], str | None]]:
        """Each page of one list from ``token`` on: (records, the next page's token or None
        after the last page). A page token the platform no longer takes (a listing resumed
        after a restart) starts the list over."""
        params = {"perPage": str(self.cfg.per_page), **query}
        for _ in range(MAX_PAGES):
            try:
                page = await self.call(resource, params | ({"pageToken": token} if token
                                                             else {}))
            except FatalPlatformError as exc:
                if token is None or exc.status != 400:
                    raise
                log.warning("backfill_page_token_refused", resource=resource,
                            note="listing this resource again from its first page")
                token = None
                continue
            self.counters.inc(counts.BACKFILL_PAGES)
            records = page.get("records")
            paging = page.get("paging")
            following = paging.get("nextPageToken") if isinstance(paging, dict) else None
            last = not isinstance(following, str) or not following or following == token
            yield (records if isinstance(records, list) else []), None if last else following
            if last:
                return
            token = following
        log.error("backfill_paging_cut", resource=resource, pages=MAX_PAGES)

    async def call(self, resource: str, params: dict[str, Any]) -> dict[str, Any]:
        """One GET, paced by the rate limit, retried until it succeeds; raises only
        ``FatalPlatformError`` (a ``PERMANENT`` answer)."""
        delays = backoff(self.cfg.retry_initial, 2.0, self.cfg.retry_max)
        while True:
            wait = self._not_before - anyio.current_time()
            if wait > 0:
                await anyio.sleep(wait)
            try:
                return await self._get(resource, params)
            except RateLimited as exc:
                self.counters.inc(counts.BACKFILL_RATE_LIMITED)
                delay = max(exc.retry_after, 0.0)
                log.warning("backfill_rate_limited", retry_in=round(delay, 3), code=exc.code,
                            note="resuming from the same page")
            except FatalPlatformError:
                raise
            except PlatformError as exc:
                self.counters.inc(counts.BACKFILL_ERRORS)
                delay = next(delays)
                log.error("backfill_failed", reason=exc.reason, status=exc.status,
                          code=exc.code, retry_in=round(delay, 3),
                          note="the gap stays pending; resuming from the same page")
            self._not_before = max(self._not_before, anyio.current_time() + delay)

    async def _get(self, resource: str, params: dict[str, Any]) -> dict[str, Any]:
        path = CONSENTS_PATH if resource == "opt-outs" else LIST_PATH + resource
        access = await self.auth.access_token()
        try:
            response = await self.http.get(
                self.server + path, params=params, timeout=self.http_timeout,
                headers={"Accept": "application/json", "Authorization": f"Bearer {access}"})
        except httpx.TimeoutException as exc:
            raise PlatformError(f"timed out listing {path}") from exc
        except httpx.HTTPError as exc:
            raise PlatformError(f"cannot reach the platform for {path}: "
                                f"{type(exc).__name__}") from exc
        self._pace(response.headers)
        try:
            body = response.json() if response.content else {}
        except ValueError:
            body = {}
        status = response.status_code
        code = error_code(body)
        if status == 429:
            raise RateLimited(f"{path} rate limited", retry_after=retry_after_of(response),
                              code=code)
        if status in PERMANENT:
            raise FatalPlatformError(f"{path} refused", status=status, code=code)
        if not 200 <= status < 300 or not isinstance(body, dict):
            raise PlatformError(f"{path} failed", status=status, code=code)
        return body

    def _pace(self, headers: httpx.Headers) -> None:
        """Once ``X-Rate-Limit-Remaining`` is 0, send nothing for ``X-Rate-Limit-Window``
        seconds (the rate-limits page's advice: a call in the penalty restarts it)."""
        try:
            remaining = int(headers.get("X-Rate-Limit-Remaining", "1"))
            window = float(headers.get("X-Rate-Limit-Window", "60"))
        except ValueError:
            return
        if remaining <= 0 and window > 0:
            self.counters.inc(counts.BACKFILL_PACED)
            log.info("backfill_paced", wait=window, note="the rate limit's window is used up")
            self._not_before = max(self._not_before, anyio.current_time() + min(window, 3600))
