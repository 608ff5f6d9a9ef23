"""The reconnect loop: keep one subscribed WebSocket session alive for ever.

Each turn fetches a fresh WebSocket token (paced by ``auth``), decides whether to present
the saved ``wsc`` (same OAuth session and still inside ``recoveryTimeout`` of the disconnect,
PROTOCOL.md §4, §7), runs one session, and when it ends waits a capped, fully jittered
backoff before the next. A session that stayed up for ``stable_after`` resets the backoff
and is followed by an immediate reconnect, so recovery happens inside the window.
Credentials, permission and filter problems are not retried: they propagate and stop the
daemon with a clear message.

When a session could not be recovered (a fresh one after a disconnect, or ``recoveryState:
Failed``), ``on_gap`` is called once the new subscription is active with the wall time the
gap began: the last notification received before it, or the disconnect (the backfill
rebuilds it from the REST lists, daemon/a2pd/backfill.py). A *successful* recovery is reported
too: the gateway replays at most ``recoveryBufferSize`` notifications, only the newest, and
says nothing when it dropped older ones (docs/protocol-notes.md §3), so whatever was sent
while the daemon was away may have overflowed the replay. The backfill's content keys make
the overlap with the replay harmless.

A session left behind keeps its subscription on the platform, which limits how many a user
and app may hold (403 ``SUB-505``). Once subscribed afresh, the supervisor deletes the
subscriptions it left behind (``delete_subscription``); a ``SUB-505`` deletes them at once
and retries.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from functools import partial

import anyio

from a2pd import counts
from a2pd.auth import TokenManager
from a2pd.backoff import backoff
from a2pd.config import ConnectionConfig
from a2pd.errors import (
    A2pdError,
    ConnectionLost,
    PlatformError,
    RateLimited,
    SubscriptionLimit,
)
from a2pd.logging import get_logger
from a2pd.protocol import ServerNotification
from a2pd.session import (
    BadFrameHandler,
    NotificationHandler,
    SessionState,
    connect_url,
    run_session,
)

__all__ = [
    "RECOVERY_MARGIN",
    "Supervisor",
]

log = get_logger("supervisor")

#: recover only if the window still has this much margin left
RECOVERY_MARGIN = 2.0


class Supervisor:
    """Owns ``SessionState`` and runs sessions back to back."""

    def __init__(self, auth: TokenManager, filters: list[str], cfg: ConnectionConfig,
                 on_notification: NotificationHandler, on_bad_frame: BadFrameHandler,
                 on_subscribed: Callable[[], None] | None = None,
                 on_gap: Callable[[float, str], None] | None = None,
                 delete_subscription: Callable[[str], Awaitable[bool]] | None = None) -> None:
        self.auth = auth
        self.filters = filters
        self.cfg = cfg
        self._deliver = on_notification
        self.on_gap = on_gap
        #: wall time of the last notification received (None: none since the start)
        self.last_notification_wall: float | None = None
        #: wall time an open gap began (reported to ``on_gap`` once subscribed again)
        self._gap_from: float | None = None
        self._gap_reason = "fresh session"
        self.on_bad_frame = on_bad_frame
        self.on_subscribed = on_subscribed
        self.delete_subscription = delete_subscription
        self._stale = anyio.Event()
        self.state = SessionState()
        self.reconnects = 0
        #: disconnects after which a fresh session had to be opened (events possibly missed);
        #: failed recoveries are counted by the session as recoveries_failed
        self.gaps = 0
        self._gap_open = False

    def _recoverable_wsc(self) -> bool:
        state = self.state
        if state.wsc is None:
            return False
        if state.wsc_oauth_session != self.auth.session_id:
            log.info("recovery_skipped", reason="new OAuth session")
            state.wsc = None
            return False
        if state.disconnected_at is not None:
            away = anyio.current_time() - state.disconnected_at
            if away > state.recovery_timeout - RECOVERY_MARGIN:
                log.info("recovery_skipped", reason="recovery window passed",
                         away=round(away, 3))
                state.wsc = None
                return False
        return True

    async def on_notification(self, notification: ServerNotification) -> None:
        self.last_notification_wall = time.time()
        await self._deliver(notification)

    def _gap_start(self) -> float:
        """Where an unrecovered gap begins: the last notification received, else the
        disconnect (wall time)."""
        if self.last_notification_wall is not None:
            return self.last_notification_wall
        disconnected = self.state.disconnected_at
        away = anyio.current_time() - disconnected if disconnected is not None else 0.0
        return time.time() - away

    def _subscribed(self, started_at: list[float], before: tuple[int, int],
                    away_since: float | None) -> None:
        """The subscription is active: report the gap this connection may have left."""
        started_at.append(anyio.current_time())
        counters = self.state.counters
        failed = counters[counts.RECOVERIES_FAILED] > before[0]
        recovered = counters[counts.RECOVERIES_SUCCESSFUL] > before[1]
        if self._gap_from is None and away_since is not None and (failed or recovered):
            self._gap_from = away_since
            self._gap_reason = "recovery failed" if failed else "recovery (the replay " \
                "holds at most recoveryBufferSize notifications)"
        if self._gap_from is not None and self.on_gap is not None:
            self.on_gap(self._gap_from, self._gap_reason)
        self._gap_from = None
        self._gap_reason = "fresh session"
        self._gap_open = False
        if self.state.stale_subscriptions:
            self._stale.set()
        if self.on_subscribed is not None:
            self.on_subscribed()

    async def delete_stale(self) -> int:
        """Delete the subscriptions of sessions left behind; how many are gone."""
        if self.delete_subscription is None:
            return 0
        gone = 0
        for subscription_id in list(self.state.stale_subscriptions):
            if subscription_id == self.state.subscription_id:
                self.state.stale_subscriptions.remove(subscription_id)
            elif await self.delete_subscription(subscription_id):
                self.state.stale_subscriptions.remove(subscription_id)
                gone += 1
        if gone:
            log.info("stale_subscriptions_deleted", deleted=gone,
                     left=len(self.state.stale_subscriptions))
        return gone

    async def _clean_up(self) -> None:
        """Delete left-behind subscriptions whenever a fresh one is active."""
        while True:
            await self._stale.wait()
            self._stale = anyio.Event()
            await self.delete_stale()

    async def run(self) -> None:
        """Run for ever; returns only by raising a fatal error (or being cancelled)."""
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._clean_up)
                await self._connect_for_ever()
        except* A2pdError as group:
            raise group.exceptions[0] from None

    async def _connect_for_ever(self) -> None:
        cfg = self.cfg
        delays = backoff(cfg.backoff_initial, 2.0, cfg.backoff_max)
        while True:
            subscribed_at: list[float] = []
            try:
                token = await self.auth.ws_token()
                away_since = None if self.state.disconnected_at is None else \
                    self._gap_start()
                present = self._recoverable_wsc()
                if self.state.disconnected_at is not None and not present:
                    self.state.leave_subscription()
                    if not self._gap_open:
                        # a fresh session after a disconnect: what was sent meanwhile is lost
                        self._gap_open = True
                        self._gap_from = away_since
                        self.gaps += 1
                        log.warning("gap_opened", note="events sent while disconnected are "
                                    "not recoverable")
                before = (self.state.counters[counts.RECOVERIES_FAILED],
                          self.state.counters[counts.RECOVERIES_SUCCESSFUL])
                url = connect_url(token.uri, token.ws_access_token,
                                  self.state.wsc if present else None)
                log.info("connecting", recovery=present, attempt=self.state.connection_count + 1)
                await run_session(
                    url,
                    filters=self.filters,
                    cfg=cfg,
                    state=self.state,
                    on_notification=self.on_notification,
                    on_bad_frame=self.on_bad_frame,
                    presented_wsc=present,
                    oauth_session=self.auth.session_id,
                    on_subscribed=partial(self._subscribed, subscribed_at, before, away_since),
                )
            except RateLimited as exc:
                delay = max(exc.retry_after, next(delays))
                log.warning("rate_limited_reconnect", retry_in=round(delay, 3), code=exc.code)
            except SubscriptionLimit as exc:
                self.state.count(counts.SUBSCRIPTION_LIMIT)
                delay = 0.0 if await self.delete_stale() else next(delays)
                if delay:
                    log.error("subscription_limit", code=exc.code, retry_in=round(delay, 3),
                              note="the platform's subscription limit for this user and app "
                              "is reached by subscriptions a2pd did not create (other clients "
                              "with the same app and user, or an older state directory); "
                              "they expire, or can be deleted through the REST API")
            except ConnectionLost as exc:
                if not exc.recoverable:
                    self.state.wsc = None
                stable = bool(subscribed_at) and (
                    anyio.current_time() - subscribed_at[0] >= cfg.stable_after)
                if stable:
                    delays = backoff(cfg.backoff_initial, 2.0, cfg.backoff_max)
                delay = 0.0 if stable else next(delays)
                log.warning("connection_lost", reason=exc.reason, code=exc.code,
                            reconnect_in=round(delay, 3))
            except PlatformError as exc:
                delay = next(delays)
                log.warning("platform_error", reason=exc.reason, status=exc.status,
                            code=exc.code, retry_in=round(delay, 3))
            self.reconnects += 1
            self.state.count(counts.RECONNECT_ATTEMPTS)
            await anyio.sleep(delay)
