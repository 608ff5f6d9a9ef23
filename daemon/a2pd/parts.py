"""Everything one run of the daemon is made of, built from ``Settings`` before anything
runs: the journal (opened, its last run's end checked), the sinks, the pipeline, the HTTP
client, the token manager, the backfill, the supervisor and the session keeper.

``build`` leaves nothing open when it fails; ``Parts.close`` ends a run: sinks closed,
gaps not yet written recorded, the run marked as ended cleanly if nothing was left
uncommitted, the journal and the client closed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx

from a2pd import counts
from a2pd.auth import TokenManager
from a2pd.backfill import Backfill, iso
from a2pd.config import Settings
from a2pd.errors import A2pdError
from a2pd.journal import Journal, JournalOptions
from a2pd.logging import get_logger
from a2pd.persist import SessionStore
from a2pd.pipeline import Pipeline
from a2pd.sessions import SessionKeeper
from a2pd.sinks import Sink, SinkContext
from a2pd.sinkset import build_sinks, close_sinks, settle_removed_sinks
from a2pd.supervisor import Supervisor

__all__ = ["Parts", "build", "open_journal"]

log = get_logger("daemon")


async def open_journal(settings: Settings, state_dir: Path) -> Journal:
    """The journal of ``settings`` in ``state_dir``."""
    cfg = settings.journal
    return await Journal.open(state_dir / "journal.db", JournalOptions(
        commit_interval=cfg.commit_interval, commit_max=cfg.commit_max, fsync=cfg.fsync,
        max_events=cfg.max_events, max_age=cfg.max_age or None, full_policy=cfg.full_policy,
        dedup_window=cfg.dedup_window))


@dataclass(eq=False)
class Parts:
    """One run's components, all of them there from the start."""

    journal: Journal
    #: the sinks in use (a reload replaces this map)
    sinks: dict[str, Sink]
    pipeline: Pipeline
    http: httpx.AsyncClient
    auth: TokenManager
    supervisor: Supervisor
    #: None when ``backfill.enabled`` is false
    backfill: Backfill | None
    #: None when ``state.persist_session`` is false
    keeper: SessionKeeper | None

    async def close(self, on_error: Callable[[A2pdError], None]) -> None:
        """End the run (shielded from cancellation); journal errors go to ``on_error``."""
        with anyio.CancelScope(shield=True):
            await close_sinks(self.sinks.values())  # the current ones (a reload swaps them)
            journal = self.journal
            try:
                if self.backfill is not None:
                    await self.backfill.record_opened()  # gaps not written yet
                if not await journal.end_run():
                    _uncommitted_at_stop(journal)
            except A2pdError as exc:
                _uncommitted_at_stop(journal)
                on_error(exc)
            try:
                await journal.aclose()
            except A2pdError as exc:
                on_error(exc)
            await self.http.aclose()


async def build(settings: Settings, state_dir: Path, *,
                on_subscribed: Callable[[], None]) -> Parts:
    """Open the journal and build every part; a removed sink with a backlog nobody takes
    over is a ``ConfigError`` (nothing changed)."""
    journal = await open_journal(settings, state_dir)
    try:
        unclean = await journal.gaps.begin_run(record_gap=settings.backfill.enabled)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await journal.aclose()
        raise
    if unclean is not None:
        _unclean_stop(journal, *unclean)
    sinks: dict[str, Sink] = {}
    http: httpx.AsyncClient | None = None
    try:
        for check_only in (True, False):
            await settle_removed_sinks(journal, settings.sinks, settings.router.sink_names(),
                                       settings.delivery.drop_backlog, check_only=check_only)
        sinks = build_sinks(settings, SinkContext(state_dir=state_dir,
                                                 counters=journal.counters))
        delivery = settings.delivery
        pipeline = Pipeline(settings.router, sinks, journal, batch_max=delivery.batch_max,
                            retry_initial=delivery.retry_initial, retry_max=delivery.retry_max,
                            max_attempts=delivery.max_attempts,
                            compact_interval=settings.journal.compact_interval)
        await pipeline.prepare()
        http = httpx.AsyncClient(follow_redirects=False)
        return _wire(settings, state_dir, journal, sinks, pipeline, http, on_subscribed)
    except BaseException:
        with anyio.CancelScope(shield=True):
            if http is not None:
                await http.aclose()
            await close_sinks(sinks.values())
            # a run that ends before it took anything in ends cleanly (the next start
            # records no gap for it)
            try:
                await journal.end_run()
            finally:
                await journal.aclose()
        raise


def _wire(settings: Settings, state_dir: Path, journal: Journal, sinks: dict[str, Sink],
          pipeline: Pipeline, http: httpx.AsyncClient, on_subscribed: Callable[[], None],
          ) -> Parts:
    """The platform's side, wired to the pipeline's intake."""
    secret, jwt = settings.client_secret.get_secret_value(), settings.jwt.get_secret_value()
    auth = TokenManager(settings.platform, secret, jwt, settings.connection, http)
    filters = list(settings.subscription.event_filters)
    backfill = None
    if settings.backfill.enabled:
        backfill = Backfill(settings.backfill, auth, http, settings.platform.server, filters,
                            pipeline.intake, http_timeout=settings.platform.http_timeout)
    supervisor = Supervisor(auth, filters, settings.connection, pipeline.intake.ingest,
                            pipeline.intake.ingest_bad_frame, on_subscribed,
                            on_gap=backfill.gap_opened if backfill else None,
                            delete_subscription=auth.delete_subscription)
    keeper = None
    if settings.state.persist_session:
        keeper = SessionKeeper(SessionStore(state_dir, secret, jwt), auth, supervisor.state,
                               journal)
        keeper.restore()
    return Parts(journal, sinks, pipeline, http, auth, supervisor, backfill, keeper)


def _unclean_stop(journal: Journal, since: float, gap: int | None) -> None:
    """The last run ended without a clean stop: what it had not committed (and what was
    sent while it was down, unless the session is recovered) is a gap from ``since``,
    which the journal recorded for the backfill (unless it is off)."""
    reason = "the last run did not stop cleanly (killed, crashed, or stopped with " \
        "events it could not journal)"
    if gap is not None:
        journal.counters.inc(counts.GAPS_RECORDED)
        log.warning("gap_recorded", gap=gap, since=iso(since), reason=reason)
    else:
        log.error("gap_not_backfilled", since=iso(since), reason=reason,
                  note="backfill.enabled is false: events from then on may be missing")


def _uncommitted_at_stop(journal: Journal) -> None:
    waiting = journal.waiting
    if waiting:
        journal.counters.inc(counts.UNCOMMITTED_AT_STOP, waiting)
        log.error("stopped_with_uncommitted", events=waiting, reason=journal.failing,
                  note="not journaled; the next start records a gap from the last "
                  "commit and rebuilds them from the platform")
