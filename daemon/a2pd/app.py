"""The daemon's lifetime: build everything from ``Settings``, run, stop gracefully.

    start: state directory, journal, sinks, pipeline (committer, compactor, one reader per
           sink), token refresher, supervisor
    SIGHUP: reload — re-read and validate the config file; swap routes and sinks (kept
           sinks reopen their files, for logrotate; replaced ones finish their batch
           first); the journal and cursors stay. A bad new config keeps the old one.
    systemd: READY=1 after the first subscription, STATUS= lines, WATCHDOG=1 from the event
           loop, RELOADING=1/READY=1 around a reload, STOPPING=1 (daemon/a2pd/notify.py)
    ops endpoint: /metrics /healthz /readyz /status (daemon/a2pd/ops.py)
    stop (SIGTERM/SIGINT or ``request_stop``): stop reading from the socket, commit what is
           pending, give the sinks ``delivery.shutdown_timeout`` to catch up with the
           journal, close sinks and journal. Cursors are persisted at every delivery, so
           what is left is delivered after the next start. A second signal skips the drain.

A fatal error (credentials, permission, config found bad at run time, journal unusable)
stops the daemon the same graceful way and is then re-raised for the CLI's exit code.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx

from a2pd import __version__, config, counts, ops, protocol
from a2pd.auth import TokenManager
from a2pd.backfill import Backfill, iso
from a2pd.config import Settings
from a2pd.errors import A2pdError, ConfigError, ConfigProblem, StateDirInUse
from a2pd.journal import Journal, JournalOptions
from a2pd.logging import get_logger, recent_problems, register_secret
from a2pd.notify import Notifier
from a2pd.observe import Histogram
from a2pd.persist import SessionStore
from a2pd.pipeline import Pipeline
from a2pd.session import MAX_STALE
from a2pd.sinks import RetryPolicy, Sink, SinkContext, sink_class
from a2pd.supervisor import Supervisor

__all__ = [
    "LOCK_FILE",
    "OPS_FILE",
    "RESTART_SECTIONS",
    "Daemon",
    "build_sinks",
    "first_error",
    "lock_state_dir",
    "open_journal",
    "prepare_state_dir",
    "settle_reloaded_sinks",
    "settle_removed_sinks",
]

#: where a running daemon says where its ops endpoint listens (for `a2pd status`)
OPS_FILE = "ops.json"
#: held (flock) by the daemon using the state directory; holds its pid
LOCK_FILE = "a2pd.lock"
#: settings sections a reload cannot change (they apply at the next start)
RESTART_SECTIONS = ("platform", "subscription", "connection", "state", "journal", "log",
                    "ops", "backfill")

log = get_logger("daemon")


def build_sinks(settings: Settings, context: SinkContext) -> dict[str, Sink]:
    """Instantiate every configured sink that a route can reach."""
    used = settings.router.sink_names()
    sinks: dict[str, Sink] = {}
    for name, spec in settings.sinks.items():
        if name not in used:
            log.warning("sink_unused", sink=name)
            continue
        sinks[name] = sink_class(spec.type)(name, spec.options, context)
    return sinks


def prepare_state_dir(path: Path) -> Path:
    """Create the state directory (0700) or fail with a config error naming the key."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError([ConfigProblem("state.directory",
                                         f"{path} is not a writable directory: {exc.strerror}")]) \
            from exc
    return path


def lock_state_dir(path: Path) -> int:
    """Take the state directory's lock for this process (released when it exits); the
    lock file's descriptor. ``StateDirInUse`` naming the other process if it is held.
    `a2pd journal` and `a2pd dead-letters` do not take it: they work beside the daemon."""
    lock = path / LOCK_FILE
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StateDirInUse(f"another a2pd (pid {other}) is running with the state directory "
                            f"{path}; stop it first, or give this one a state.directory of "
                            f"its own") from None
    except OSError:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


async def open_journal(settings: Settings, state_dir: Path) -> Journal:
    """The journal of ``settings`` in ``state_dir``."""
    cfg = settings.journal
    return await Journal.open(state_dir / "journal.db", JournalOptions(
        commit_interval=cfg.commit_interval, commit_max=cfg.commit_max, fsync=cfg.fsync,
        max_events=cfg.max_events, max_age=cfg.max_age or None, full_policy=cfg.full_policy,
        dedup_window=cfg.dedup_window))


async def settle_removed_sinks(journal: Journal, specs: dict[str, config.SinkSpec],
                               running: Collection[str], drop: Collection[str],
                               *, check_only: bool = False,
                               routed_anew_after: int | None = None) -> list[str]:
    """Sinks with a cursor in the journal that are no longer ``running`` (removed or renamed
    in the config): a backlog goes to the sink whose ``takes_over`` names it, or is dropped
    if ``drop`` lists it, else ``ConfigError`` (nothing changed). Each hand-over or drop is
    a warning with its count. ``check_only``: only the check; else, after a check during a
    reload, a backlog that appeared since (events routed before the new routes applied)
    is dropped with its warning: the reload is under way and cannot be refused any more.
    The takers."""
    backlogs = await journal.backlogs(list(running))
    takers = {old: name for name, spec in specs.items() if name in running
              for old in spec.takes_over}
    problems = [ConfigProblem(
        f"sinks.{old}", f"removed with {count} undelivered events; keep it until they are "
        f"delivered, name it in another sink's takes_over to deliver them there, or list it "
        f"in delivery.drop_backlog to drop them")
        for old, count in backlogs.items()
        if count and old not in takers and old not in drop]
    if problems and check_only:
        raise ConfigError(problems)
    if check_only:
        return []
    moved_to: list[str] = []
    for old, count in backlogs.items():
        if old in takers:
            moved, again = await journal.hand_over(old, takers[old], routed_anew_after)
            moved_to.append(takers[old])
            log.warning("sink_backlog_handed_over", sink=old, to=takers[old], events=moved,
                        delivered_again=again)
        else:
            await journal.drop_sink(old)
            if count:
                journal.counters.inc(counts.DROPPED_REMOVED_SINK, count)
                log.warning("sink_backlog_dropped", sink=old, events=count,
                            note="delivery.drop_backlog names this removed sink"
                            if old in drop else "routed to it while the reload ran "
                            "(it had none when the reload was checked)")
    return moved_to


async def settle_reloaded_sinks(pipeline: Pipeline, specs: dict[str, config.SinkSpec],
                                running: Collection[str], drop: Collection[str],
                                routed_anew_after: int) -> None:
    """A reload's ``before_start``: the readers of removed sinks have stopped (their cursors
    are final); events appended before the new routes applied are committed first (they
    carry the old targets), then the removed sinks' backlogs are handed over or dropped."""
    journal = pipeline.journal
    await journal.flush()
    for taker in await settle_removed_sinks(journal, specs, running, drop,
                                            routed_anew_after=routed_anew_after):
        pipeline.cursors[taker] = await journal.cursor(taker)


def first_error(group: BaseExceptionGroup[Any]) -> BaseException:
    """The first error in ``group``, however deeply task groups nested it."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


async def _close_unused(journal: Journal) -> None:
    """Close the journal of a run that ends before it took anything in: a clean end (the
    next start records no gap for it)."""
    with anyio.CancelScope(shield=True):
        try:
            await journal.end_run()
        finally:
            await journal.aclose()


class Daemon:
    """One running a2pd. ``subscribed`` is set once the first subscription is active."""

    def __init__(self, settings: Settings,
                 on_subscribed: Callable[[], None] | None = None, *,
                 config_path: str | os.PathLike[str] | None = None,
                 notifier: Notifier | None = None) -> None:
        self.settings = settings
        #: the file SIGHUP re-reads (None: a reload only reopens the sinks' files)
        self.config_path = config_path
        self.notifier = notifier if notifier is not None else Notifier()
        self.started_at = 0.0
        self.stopping = False
        self.ops_port: int | None = None
        self._rates: deque[tuple[float, int]] = deque(maxlen=64)
        self._saved_session: dict[str, Any] | None = None
        #: one session save at a time: the final save at a stop waits for a running one
        self._saving = anyio.Lock()
        self.subscribed = anyio.Event()
        self._on_subscribed = on_subscribed
        self._stop = anyio.Event()
        self._force = False
        self._fatal: BaseException | None = None
        self._drained = anyio.Event()
        self._drain_scope: anyio.CancelScope | None = None
        self.state_dir = Path(os.path.abspath(settings.state.directory))
        self.journal: Journal | None = None
        self.pipeline: Pipeline | None = None
        self.supervisor: Supervisor | None = None
        self.auth: TokenManager | None = None
        self.backfill: Backfill | None = None
        self.sinks: dict[str, Sink] = {}
        #: what /metrics exposes (a registry of this daemon's own)
        self.metrics = ops.Metrics(self.snapshot, self.delivery_latency)

    def request_stop(self) -> None:
        """Begin a graceful stop (a second call skips the drain)."""
        if self._stop.is_set():
            self._force = True
            if self._drain_scope is not None:
                self._drain_scope.cancel()
        self._stop.set()

    def _subscribed(self) -> None:
        first = not self.subscribed.is_set()
        self.subscribed.set()
        if first:
            self.notifier.ready(self.status_line())
        if self._on_subscribed is not None:
            self._on_subscribed()

    def _fail(self, error: BaseException) -> None:
        if self._fatal is None:
            log.error("fatal", error=str(error), kind=type(error).__name__)
            self._fatal = error
        elif str(error) != str(self._fatal):
            log.error("also_failed", error=str(error), kind=type(error).__name__)
        self._stop.set()

    async def run(self, *, handle_signals: bool = True) -> None:
        """Run until stopped; re-raise a fatal error after the graceful stop."""
        self.started_at = anyio.current_time()
        prepare_state_dir(self.state_dir)
        lock = lock_state_dir(self.state_dir)
        try:
            await self._run(handle_signals)
        finally:
            os.close(lock)

    async def _run(self, handle_signals: bool) -> None:
        settings = self.settings
        journal = await open_journal(settings, self.state_dir)
        self.journal = journal
        try:
            unclean = await journal.gaps.begin_run(record_gap=settings.backfill.enabled)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await journal.aclose()
            raise
        if unclean is not None:
            self._unclean_stop(journal, *unclean)
        try:
            for check_only in (True, False):
                await settle_removed_sinks(journal, settings.sinks,
                                           settings.router.sink_names(),
                                           settings.delivery.drop_backlog, check_only=check_only)
            sinks = build_sinks(settings, SinkContext(state_dir=self.state_dir,
                                                     counters=journal.counters))
        except BaseException:
            await _close_unused(journal)
            raise
        self.sinks = sinks
        delivery = settings.delivery
        pipeline = Pipeline(settings.router, sinks, journal, batch_max=delivery.batch_max,
                            retry_initial=delivery.retry_initial, retry_max=delivery.retry_max,
                            max_attempts=delivery.max_attempts,
                            compact_interval=settings.journal.compact_interval)
        self.pipeline = pipeline
        try:
            await pipeline.prepare()
        except BaseException:
            await _close_unused(journal)
            raise
        try:
            async with httpx.AsyncClient(follow_redirects=False) as http, \
                    anyio.create_task_group() as tg:
                auth = TokenManager(settings.platform, settings.client_secret.get_secret_value(),
                                    settings.jwt.get_secret_value(), settings.connection, http)
                self.auth = auth
                filters = list(settings.subscription.event_filters)
                backfill = None
                if settings.backfill.enabled:
                    backfill = Backfill(settings.backfill, auth, http, settings.platform.server,
                                        filters, pipeline,
                                        http_timeout=settings.platform.http_timeout)
                self.backfill = backfill
                supervisor = Supervisor(auth, filters, settings.connection, pipeline.ingest,
                                        pipeline.ingest_bad_frame, self._subscribed,
                                        on_gap=backfill.gap_opened if backfill else None,
                                        delete_subscription=auth.delete_subscription)
                self.supervisor = supervisor
                store = None
                if settings.state.persist_session:
                    store = SessionStore(self.state_dir, settings.client_secret.get_secret_value(),
                                         settings.jwt.get_secret_value())
                    self._restore_session(store, auth, supervisor)
                workers = anyio.CancelScope()
                await tg.start(self._run_pipeline, pipeline, workers)
                await self._start_ops(tg)
                tg.start_soon(self._systemd_loops)
                saver = anyio.CancelScope()
                if store is not None:
                    tg.start_soon(self._keep_session, store, saver)
                reading = anyio.CancelScope()
                tg.start_soon(self._read, auth, supervisor, reading, backfill)
                if handle_signals:
                    tg.start_soon(self._watch_signals)
                # where each secret came from (a systemd credential wins over a *_file: a
                # rotated file takes effect at the unit's next start, not at a reload)
                log.info("daemon_started", sinks=sorted(sinks), state_dir=str(self.state_dir),
                         backlog=pipeline.backlog(), secrets=self.settings.secret_sources)

                await self._stop.wait()
                self.stopping = True
                self.notifier.stopping()
                log.info("stopping", reason="fatal error" if self._fatal else "requested")
                reading.cancel()
                if store is None or settings.platform.revoke_on_stop:
                    # no restart will recover this session: its subscription would only
                    # count against the platform's limit until it expires
                    supervisor.state.leave_subscription()
                    with anyio.move_on_after(5):
                        await supervisor.delete_stale()
                await self._drain(pipeline, workers)
                if settings.platform.revoke_on_stop:
                    with anyio.move_on_after(5):
                        await auth.revoke()
                saver.cancel()
                if store is not None and journal.all_durable:
                    # the committer is gone: save only when nothing is left uncommitted
                    # (otherwise the last save stands: its wsc is older than every
                    # uncommitted event)
                    await self._save_session(store, flush=False)
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                # the current sinks: a reload may have replaced the ones built at start
                for name, sink in self.sinks.items():
                    try:
                        await sink.aclose()
                    except Exception as exc:  # noqa: BLE001 - one sink must not block the rest
                        log.error("sink_close_failed", sink=name, error=repr(exc))
                try:
                    if self.backfill is not None:
                        await self.backfill.record_opened()  # gaps not written yet
                    if not await journal.end_run():
                        self._uncommitted_at_stop(journal)
                except A2pdError as exc:
                    self._uncommitted_at_stop(journal)
                    self._fail(exc)
                try:
                    await journal.aclose()
                except A2pdError as exc:
                    self._fail(exc)
                (self.state_dir / OPS_FILE).unlink(missing_ok=True)
                self.notifier.close()
        log.info("stopped", undelivered=pipeline.backlog(),
                 delivered=pipeline.counters.snapshot(f"{counts.DELIVERED}."),
                 dead_letters=pipeline.counters[counts.DEAD_LETTERS])
        if self._fatal is not None:
            raise self._fatal

    def _unclean_stop(self, journal: Journal, since: float, gap: int | None) -> None:
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

    def _uncommitted_at_stop(self, journal: Journal) -> None:
        waiting = journal.waiting
        if waiting:
            journal.counters.inc(counts.UNCOMMITTED_AT_STOP, waiting)
            log.error("stopped_with_uncommitted", events=waiting, reason=journal.failing,
                      note="not journaled; the next start records a gap from the last "
                      "commit and rebuilds them from the platform")

    async def _run_pipeline(self, pipeline: Pipeline, scope: anyio.CancelScope, *,
                            task_status: anyio.abc.TaskStatus[None]) -> None:
        try:
            with scope:
                try:
                    await pipeline.run(task_status=task_status)
                except* A2pdError as group:
                    self._fail(first_error(group))
        finally:
            # also when the pipeline died: nothing is left to wait for in the drain
            self._drained.set()

    async def _read(self, auth: TokenManager, supervisor: Supervisor,
                    scope: anyio.CancelScope, backfill: Backfill | None = None) -> None:
        with scope:
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(auth.run_refresher)
                    if backfill is not None:
                        # gaps a previous run left pending are rebuilt first
                        tg.start_soon(backfill.run)
                    await supervisor.run()
            except* A2pdError as group:
                self._fail(first_error(group))

    async def _drain(self, pipeline: Pipeline, workers: anyio.CancelScope) -> None:
        """Commit what is pending, then wait (up to the deadline, or until a second stop
        request) for every sink to catch up with the journal."""
        deadline = self.settings.delivery.shutdown_timeout
        with anyio.move_on_after(deadline) as scope:
            self._drain_scope = scope
            if self._force:
                scope.cancel()
            try:
                await pipeline.close()
            except A2pdError as exc:  # the final commit failed: stop with its exit code
                self._fail(exc)
            else:
                await self._drained.wait()
        if not self._drained.is_set():
            log.warning("drain_incomplete", undelivered=pipeline.backlog(),
                        deadline=deadline, forced=self._force,
                        note="kept in the journal; delivered after the next start")
        workers.cancel()

    # -- operations ------------------------------------------------------------------------

    async def _start_ops(self, tg: anyio.abc.TaskGroup) -> None:
        address = self.settings.ops.address
        if address is None:
            return
        host, port = address
        try:
            self.ops_port = await tg.start(partial(ops.serve, host, port, self.snapshot,
                                                   self.metrics))
        except OSError as exc:
            raise ConfigError([ConfigProblem(
                "ops.listen", f"cannot listen on {self.settings.ops.listen}: "
                f"{exc.strerror or exc}")]) from None
        where = {"host": host, "port": self.ops_port, "pid": os.getpid()}
        path = self.state_dir / OPS_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(where, handle)

    # -- session state across restarts (daemon/a2pd/persist.py) -----------------------------------

    def _session_doc(self) -> dict[str, Any]:
        assert self.auth is not None
        assert self.supervisor is not None
        state = self.supervisor.state
        now, wall = anyio.current_time(), time.time()
        gone = None if state.disconnected_at is None or state.connected else \
            wall - (now - state.disconnected_at)
        return {
            "tokens": self.auth.export(),
            "wsc": state.wsc.model_dump() if state.wsc else None,
            "wsc_oauth_session": state.wsc_oauth_session,
            "subscription_id": state.subscription_id,
            "stale_subscriptions": list(state.stale_subscriptions),
            "recovery_timeout": state.recovery_timeout,
            "disconnected_at": gone,
            # while connected, when we last knew the session was alive (every 5 s)
            "alive_at": None if gone is not None else wall // 5 * 5,
        }

    async def _save_session(self, store: SessionStore, *, flush: bool = True) -> None:
        async with self._saving:
            await self._save_session_now(store, flush=flush)

    async def _save_session_now(self, store: SessionStore, *, flush: bool) -> None:
        doc = self._session_doc()
        if doc == self._saved_session or doc["tokens"] is None:
            return  # unchanged, or nothing worth keeping yet (no OAuth session)
        # only a wsc whose notifications are all durable may be presented after a crash
        assert self.journal is not None
        if flush:
            try:
                await self.journal.flush()
            except A2pdError:
                return  # the journal is unusable: the daemon is stopping over it
        try:
            await anyio.to_thread.run_sync(store.save, doc)
        except OSError as exc:
            log.error("session_state_not_saved", error=exc.strerror or repr(exc),
                      note="the last saved state stands (a restart recovers from there, "
                      "or records the gap)")
            return
        self._saved_session = doc
        log.debug("session_state_saved", connected=doc["disconnected_at"] is None)

    async def _keep_session(self, store: SessionStore, scope: anyio.CancelScope) -> None:
        with scope:
            while True:
                await self._save_session(store)
                await anyio.sleep(1.0)

    def _restore_session(self, store: SessionStore, auth: TokenManager,
                         supervisor: Supervisor) -> None:
        doc = store.load()
        if not doc or not doc.get("tokens") or not auth.restore(doc["tokens"]):
            return
        state = supervisor.state
        stale = doc.get("stale_subscriptions")
        if isinstance(stale, list):
            state.stale_subscriptions = [str(s) for s in stale][-MAX_STALE:]
        try:
            gone = doc.get("disconnected_at") or doc.get("alive_at")
            if doc.get("wsc") and gone is not None:
                state.wsc = protocol.Wsc.model_validate(doc["wsc"])
                register_secret(state.wsc.token, kind="wsc")
                state.wsc_oauth_session = doc.get("wsc_oauth_session")
                state.subscription_id = doc.get("subscription_id")
                state.recovery_timeout = float(doc.get("recovery_timeout") or 180.0)
                away = max(0.0, time.time() - float(gone))
                state.disconnected_at = anyio.current_time() - away
                log.info("session_state_restored", subscription_id=state.subscription_id,
                         away=round(away, 3), recovery_timeout=state.recovery_timeout)
        except (TypeError, ValueError) as exc:
            log.warning("session_state_ignored", reason=f"bad wsc: {exc}")
            state.wsc = None
        left = doc.get("subscription_id")
        if state.wsc is None and isinstance(left, str):
            # not recoverable: the last run's subscription is stale (deleted once subscribed)
            state.subscription_id = left
            state.leave_subscription()

    async def _systemd_loops(self) -> None:
        """WATCHDOG=1 from the event loop (a stuck loop stops the pings and systemd restarts
        the daemon), STATUS= lines, and the samples the event rate is computed from."""
        async with anyio.create_task_group() as tg:
            interval = self.notifier.watchdog_interval
            if interval:
                tg.start_soon(self._watchdog, interval)
            while True:
                self._rates.append((anyio.current_time(), self._received_total()))
                self.notifier.status(self.status_line())
                await anyio.sleep(min(self.settings.ops.status_interval, 5.0))

    async def _watchdog(self, interval: float) -> None:
        while True:
            self.notifier.watchdog()
            await anyio.sleep(interval)

    def _received_total(self) -> int:
        if self.pipeline is None:
            return 0
        return sum(self.pipeline.counters.snapshot(f"{counts.RECEIVED}.").values())

    def event_rate(self) -> float:
        """Events received per second over the last minute or so."""
        now, total = anyio.current_time(), self._received_total()
        older = [(t, n) for t, n in self._rates if now - t <= 60.0]
        if not older or now - older[0][0] <= 0:
            return 0.0
        return (total - older[0][1]) / (now - older[0][0])

    def status_line(self) -> str:
        """One line for `systemctl status`."""
        state = self.supervisor.state if self.supervisor else None
        if self.stopping:
            where = "stopping"
        elif state is not None and state.subscribed:
            where = "subscribed"
        elif state is not None and state.connected:
            where = "connected, subscribing"
        else:
            where = "connecting"
        backlog = sum(self.pipeline.backlog().values()) if self.pipeline else 0
        return f"{where}; {self.event_rate():.1f} events/s; backlog {backlog}"

    def delivery_latency(self) -> dict[str, Histogram]:
        """Per sink, the delivery latency so far (/metrics)."""
        return self.pipeline.delivery_latency if self.pipeline is not None else {}

    def snapshot(self) -> dict[str, Any]:
        """Everything /status, /metrics and /readyz report (from memory; the journal's size
        is two ``stat`` calls)."""
        now = anyio.current_time()
        counters: dict[str, int] = {}
        if self.pipeline is not None:
            counters.update(self.pipeline.counters.snapshot())
        if self.supervisor is not None:
            counters.update(self.supervisor.state.counters.snapshot())
        if self.auth is not None:
            counters.update(self.auth.counters.snapshot())
        session = self.supervisor.state if self.supervisor else None
        connected = bool(session and session.connected)
        subscribed = bool(session and session.subscribed)
        budget = self.settings.ops.ready_max_lag
        not_ready: list[str] = []
        if self.stopping:
            not_ready.append("stopping")
        if not subscribed:
            not_ready.append("the WebSocket subscription is not active")
        if self.journal is not None and self.journal.failing is not None:
            not_ready.append(f"journal commits are failing ({self.journal.failing}); "
                             "nothing more is read until one succeeds")
        if self.journal is not None and self.journal.dead is not None:
            not_ready.append(f"the journal is unusable ({self.journal.dead.reason})")
        sinks: dict[str, Any] = {}
        pipeline = self.pipeline
        backlog = pipeline.backlog() if pipeline else {}
        for name, sink in self.sinks.items():
            since = pipeline.busy_since.get(name) if pipeline else None
            busy = now - since if since is not None else None
            ready = busy is None or busy <= budget
            if not ready:
                not_ready.append(f"sink {name} has been delivering one batch for "
                                 f"{busy:.0f}s (budget {budget:g}s)")
            sinks[name] = {"type": sink.type_name, "backlog": backlog.get(name, 0),
                           "busy_seconds": busy, "ready": ready,
                           "delivered": counters.get(f"{counts.DELIVERED}.{name}", 0),
                           "retries": counters.get(f"{counts.RETRIES}.{name}", 0),
                           "dead_letters": counters.get(f"{counts.DEAD_LETTERS}.{name}", 0)}
        journal = self.journal
        oldest = journal.oldest_received if journal else None
        last_event = pipeline.last_event_at if pipeline else None
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_seconds": now - self.started_at,
            "state": self.status_line().split(";")[0],
            "ready": not not_ready,
            "not_ready": not_ready,
            "connection": {
                "connected": connected,
                "subscribed": subscribed,
                "subscription_id": session.subscription_id if session else None,
                "connections": counters.get(counts.CONNECTIONS, 0),
                "recoveries_successful": counters.get(counts.RECOVERIES_SUCCESSFUL, 0),
                "recoveries_failed": counters.get(counts.RECOVERIES_FAILED, 0),
                "last_event_age_seconds": now - last_event if last_event else None,
            },
            "events_per_second": round(self.event_rate(), 3),
            "journal": {
                "events": journal.depth if journal else 0,
                "last_seq": journal.last_seq if journal else 0,
                "commits_failing": journal.failing if journal else None,
                "oldest_age_seconds": time.time() - oldest if oldest else None,
                "size_bytes": journal.size_bytes() if journal else 0,
                "limit_events": self.settings.journal.max_events,
                "limit_age_seconds": self.settings.journal.max_age or None,
            },
            "sinks": sinks,
            "backfill": None if self.backfill is None else {"refused": self.backfill.refused},
            "counters": counters,
            "recent_problems": recent_problems()[-10:],
        }

    # -- reload --------------------------------------------------------------------------------

    async def reload(self, settings: Settings | None = None) -> bool:
        """Apply a new configuration: ``settings``, or the config file re-read (SIGHUP).
        Routes, sinks and delivery settings change at once; other sections at the next
        start. A bad configuration is refused and the running one kept. True if applied."""
        if self.stopping or self.pipeline is None or self.pipeline.stopped:
            log.warning("reload_ignored", reason="the daemon is stopping")
            return False
        self.notifier.reloading()
        if self.backfill is not None:
            self.backfill.resume()  # a refused backfill tries again (permissions fixed?)
        try:
            if settings is None:
                if self.config_path is None:
                    await self.reopen_sinks()
                    return False
                settings = config.load(self.config_path)
            await self._apply(settings)
        except ConfigError as exc:
            if self.pipeline is not None:
                self.pipeline.counters.inc(counts.RELOADS_REFUSED)
            log.error("reload_refused", source=exc.source,
                      problems=[str(p) for p in exc.problems],
                      note="the running configuration is kept")
            return False
        except Exception as exc:  # noqa: BLE001 - e.g. a sink that cannot be built
            if self.pipeline is not None:
                self.pipeline.counters.inc(counts.RELOADS_REFUSED)
            log.error("reload_refused", error=f"{type(exc).__name__}: {exc}",
                      note="the running configuration is kept")
            return False
        finally:
            self.notifier.ready(self.status_line())
        return True

    async def _apply(self, new: Settings) -> None:
        old, pipeline = self.settings, self.pipeline
        assert pipeline is not None
        assert self.journal is not None
        later = [name for name in RESTART_SECTIONS if getattr(new, name) != getattr(old, name)]
        if new.client_secret != old.client_secret or new.jwt != old.jwt:
            later.append("credentials")
        journal = self.journal
        context = SinkContext(state_dir=self.state_dir, counters=journal.counters)
        used = new.router.sink_names()
        # a removed sink's backlog must have somewhere to go (or be dropped on purpose)
        await settle_removed_sinks(journal, new.sinks, used, new.delivery.drop_backlog,
                                   check_only=True)
        sinks: dict[str, Sink] = {}
        built: list[Sink] = []
        try:
            for name, spec in new.sinks.items():
                if name not in used:
                    continue
                current = self.sinks.get(name)
                if current is not None and old.sinks.get(name) == spec:
                    sinks[name] = current
                    continue
                sink = sink_class(spec.type)(name, spec.options, context)
                built.append(sink)
                sinks[name] = sink
                if current is not None:
                    sink.adopt(current)
        except BaseException:
            for sink in built:
                await sink.aclose()
            raise
        for name, sink in sinks.items():
            if self.sinks.get(name) is sink:
                try:
                    await sink.reopen()
                except Exception as exc:  # noqa: BLE001 - one sink must not block the rest
                    log.error("sink_reopen_failed", sink=name, error=repr(exc))
        retired = await pipeline.reconfigure(
            new.router, sinks,
            before_start=partial(settle_reloaded_sinks, pipeline, new.sinks, used,
                                 new.delivery.drop_backlog))
        delivery = new.delivery
        pipeline.batch_max = delivery.batch_max
        pipeline.retry_policy = RetryPolicy(initial=delivery.retry_initial,
                                            maximum=delivery.retry_max,
                                            max_attempts=delivery.max_attempts)
        for sink in retired:
            try:
                await sink.aclose()
            except Exception as exc:  # noqa: BLE001 - one sink must not block the rest
                log.error("sink_close_failed", sink=sink.name, error=repr(exc))
        previous = self.sinks
        self.sinks = sinks
        self.settings = replace(old, sinks=new.sinks, router=new.router, delivery=delivery)
        pipeline.counters.inc(counts.RELOADS)
        log.info("reloaded", source=new.source,
                 added=sorted(set(sinks) - set(previous)),
                 removed=sorted(set(previous) - set(sinks)),
                 replaced=sorted(n for n in sinks if n in previous and sinks[n] is not previous[n]),
                 routes=[route.name for route in new.router.routes])
        if later:
            log.warning("reload_needs_restart", sections=later,
                        note="these sections changed; they apply at the next start")

    async def reopen_sinks(self) -> None:
        """Reopen every sink's files (SIGHUP; logrotate's create/move)."""
        for name, sink in self.sinks.items():
            try:
                await sink.reopen()
            except Exception as exc:  # noqa: BLE001 - one sink must not block the rest
                log.error("sink_reopen_failed", sink=name, error=repr(exc))
        log.info("sinks_reopened", sinks=sorted(self.sinks))

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                log.info("signal", signal=signal.Signals(signum).name)
                if signum == signal.SIGHUP:
                    await self.reload()
                else:
                    self.request_stop()
