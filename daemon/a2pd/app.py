"""The daemon's lifetime, in three acts: start-up, serve, shut-down.

    start-up: lock the state directory; build every part (parts.py: journal, sinks,
           pipeline, HTTP client, tokens, backfill, supervisor, session keeper); start the
           pipeline (committer, compactor, one reader per sink), the ops endpoint, the
           systemd loops, the session keeper, and the reading (token refresher, backfill,
           supervisor)
    serve: until SIGTERM/SIGINT, ``request_stop`` or a fatal error. SIGHUP reloads
           (reload.py): routes, sinks and delivery change; a bad new config keeps the old
    shut-down: stop reading from the socket, commit what is pending, give the sinks
           ``delivery.shutdown_timeout`` to catch up with the journal (a second signal
           skips it), save the session, close sinks and journal. Cursors are persisted at
           every delivery, so what is left is delivered after the next start.

systemd: READY=1 after the first subscription, STATUS= lines, WATCHDOG=1 from the event
loop, RELOADING=1/READY=1 around a reload, STOPPING=1 (notify.py). The ops endpoint
(/metrics /healthz /readyz /status, ops.py) reads ``snapshot`` (snapshot.py).

A fatal error (credentials, permission, config found bad at run time, journal unusable)
stops the daemon the same graceful way and is then re-raised for the CLI's exit code.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from a2pd import counts, ops, parts, reload, snapshot
from a2pd.auth import TokenManager
from a2pd.backfill import Backfill
from a2pd.config import Settings
from a2pd.errors import A2pdError
from a2pd.journal import Journal
from a2pd.logging import get_logger
from a2pd.notify import Notifier
from a2pd.parts import Parts
from a2pd.pipeline import Pipeline
from a2pd.sinks import Sink
from a2pd.sinkset import reopen_sinks
from a2pd.statedir import OPS_FILE, lock_state_dir, prepare_state_dir, write_ops_file
from a2pd.supervisor import Supervisor

__all__ = ["Daemon", "first_error"]

log = get_logger("daemon")


def first_error(group: BaseExceptionGroup[Any]) -> BaseException:
    """The first error in ``group``, however deeply task groups nested it."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


class Daemon:
    """One a2pd. ``subscribed`` is set once the first subscription is active. Its parts
    (``journal``, ``pipeline``, ``supervisor``, ``auth``, ``backfill``, ``sinks``) are there
    once ``run`` has built them, and stay (closed) after it returns."""

    def __init__(self, settings: Settings,
                 on_subscribed: Callable[[], None] | None = None, *,
                 config_path: str | os.PathLike[str] | None = None,
                 notifier: Notifier | None = None) -> None:
        self.settings = settings
        #: the file SIGHUP re-reads (None: a reload only reopens the sinks' files)
        self.config_path = config_path
        self.notifier = notifier if notifier is not None else Notifier()
        self.state_dir = Path(os.path.abspath(settings.state.directory))
        self.started_at = 0.0
        self.stopping = False
        self.ops_port: int | None = None
        self.subscribed = anyio.Event()
        #: what it says about itself (/status, /metrics, systemd's STATUS=)
        self.report = snapshot.Reporter(self)
        #: what /metrics exposes (a registry of this daemon's own)
        self.metrics = ops.Metrics(self.report.snapshot, self.report.delivery_latency)
        self._on_subscribed = on_subscribed
        self._parts: Parts | None = None
        self._stop = anyio.Event()
        self._force = False
        self._fatal: BaseException | None = None
        self._drained = anyio.Event()
        self._drain_scope: anyio.CancelScope | None = None

    # -- the parts, once built --------------------------------------------------------------

    @property
    def parts(self) -> Parts:
        if self._parts is None:
            raise RuntimeError("the daemon has not started")
        return self._parts

    @property
    def built(self) -> Parts | None:
        """The parts, or None before ``run`` built them."""
        return self._parts

    @property
    def journal(self) -> Journal:
        return self.parts.journal

    @property
    def pipeline(self) -> Pipeline:
        return self.parts.pipeline

    @property
    def supervisor(self) -> Supervisor:
        return self.parts.supervisor

    @property
    def auth(self) -> TokenManager:
        return self.parts.auth

    @property
    def backfill(self) -> Backfill | None:
        return self.parts.backfill

    @property
    def sinks(self) -> dict[str, Sink]:
        return self._parts.sinks if self._parts is not None else {}

    # -- stopping ---------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Begin a graceful stop (a second call skips the drain)."""
        if self._stop.is_set():
            self._force = True
            if self._drain_scope is not None:
                self._drain_scope.cancel()
        self._stop.set()

    def _fail(self, error: BaseException) -> None:
        if self._fatal is None:
            log.error("fatal", error=str(error), kind=type(error).__name__)
            self._fatal = error
        elif str(error) != str(self._fatal):
            log.error("also_failed", error=str(error), kind=type(error).__name__)
        self._stop.set()

    def _subscribed(self) -> None:
        first = not self.subscribed.is_set()
        self.subscribed.set()
        if first:
            self.notifier.ready(self.report.status_line())
        if self._on_subscribed is not None:
            self._on_subscribed()

    # -- the lifetime -----------------------------------------------------------------------

    async def run(self, *, handle_signals: bool = True) -> None:
        """Run until stopped; re-raise a fatal error after the graceful stop."""
        self.started_at = anyio.current_time()
        prepare_state_dir(self.state_dir)
        lock = lock_state_dir(self.state_dir)
        try:
            built = await parts.build(self.settings, self.state_dir,
                                      on_subscribed=self._subscribed)
            self._parts = built
            try:
                async with anyio.create_task_group() as tg:
                    reading, workers, saver = await self._startup(built, tg, handle_signals)
                    await self._stop.wait()
                    await self._shutdown(built, reading, workers, saver)
                    tg.cancel_scope.cancel()
            finally:
                await built.close(self._fail)
                (self.state_dir / OPS_FILE).unlink(missing_ok=True)
                self.notifier.close()
        finally:
            os.close(lock)
        pipeline = built.pipeline
        log.info("stopped", undelivered=pipeline.backlog(),
                 delivered=pipeline.counters.snapshot(f"{counts.DELIVERED}."),
                 dead_letters=pipeline.counters[counts.DEAD_LETTERS])
        if self._fatal is not None:
            raise self._fatal

    async def _startup(self, built: Parts, tg: TaskGroup, handle_signals: bool,
                       ) -> tuple[anyio.CancelScope, anyio.CancelScope, anyio.CancelScope]:
        """Start every task; the scopes that end the reading, the pipeline and the session
        keeper."""
        workers = anyio.CancelScope()
        await tg.start(self._run_pipeline, built.pipeline, workers)
        await self._start_ops(tg)
        tg.start_soon(self.notifier.keep_informed, self.report.status_line,
                      min(self.settings.ops.status_interval, 5.0), self.report.sample_rate)
        saver = anyio.CancelScope()
        if built.keeper is not None:
            tg.start_soon(_in_scope, saver, built.keeper.keep)
        reading = anyio.CancelScope()
        tg.start_soon(self._read, built, reading)
        if handle_signals:
            tg.start_soon(self._watch_signals)
        # where each secret came from (a systemd credential wins over a *_file: a rotated
        # file takes effect at the unit's next start, not at a reload)
        log.info("daemon_started", sinks=sorted(built.sinks), state_dir=str(self.state_dir),
                 backlog=built.pipeline.backlog(), secrets=self.settings.secret_sources)
        return reading, workers, saver

    async def _shutdown(self, built: Parts, reading: anyio.CancelScope,
                        workers: anyio.CancelScope, saver: anyio.CancelScope) -> None:
        self.stopping = True
        self.notifier.stopping()
        log.info("stopping", reason="fatal error" if self._fatal else "requested")
        reading.cancel()
        platform = self.settings.platform
        if built.keeper is None or platform.revoke_on_stop:
            # no restart will recover this session: its subscription would only count
            # against the platform's limit until it expires
            built.supervisor.state.leave_subscription()
            with anyio.move_on_after(5):
                await built.supervisor.delete_stale()
        await self._drain(built.pipeline, workers)
        if platform.revoke_on_stop:
            with anyio.move_on_after(5):
                await built.auth.revoke()
        saver.cancel()
        if built.keeper is not None and built.journal.all_durable:
            # the committer is gone: save only when nothing is left uncommitted (otherwise
            # the last save stands: its wsc is older than every uncommitted event)
            await built.keeper.save(flush=False)

    async def _run_pipeline(self, pipeline: Pipeline, scope: anyio.CancelScope, *,
                            task_status: TaskStatus[None]) -> None:
        try:
            with scope:
                try:
                    await pipeline.run(task_status=task_status)
                except* A2pdError as group:
                    self._fail(first_error(group))
        finally:
            # also when the pipeline died: nothing is left to wait for in the drain
            self._drained.set()

    async def _read(self, built: Parts, scope: anyio.CancelScope) -> None:
        with scope:
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(built.auth.run_refresher)
                    if built.backfill is not None:
                        # gaps a previous run left pending are rebuilt first
                        tg.start_soon(built.backfill.run)
                    await built.supervisor.run()
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

    async def _start_ops(self, tg: TaskGroup) -> None:
        address = self.settings.ops.address
        if address is not None:
            self.ops_port = await tg.start(partial(ops.serve, *address, self.report.snapshot,
                                                   self.metrics))
            write_ops_file(self.state_dir, address[0], self.ops_port)

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                log.info("signal", signal=signal.Signals(signum).name)
                if signum == signal.SIGHUP:
                    await self.reload()
                else:
                    self.request_stop()

    # -- reload (reload.py) -----------------------------------------------------------------

    async def reload(self, settings: Settings | None = None) -> bool:
        """Apply a new configuration: ``settings``, or the config file re-read (SIGHUP).
        Routes, sinks and delivery settings change at once; other sections at the next
        start. A bad configuration is refused and the running one kept. True if applied."""
        built = self._parts
        if self.stopping or built is None or built.pipeline.stopped:
            log.warning("reload_ignored", reason="the daemon is stopping")
            return False
        self.notifier.reloading()
        try:
            applied = await reload.reload(built, self.settings, settings, self.config_path,
                                          self.state_dir)
        finally:
            self.notifier.ready(self.report.status_line())
        if applied is None:
            return False
        self.settings = applied
        return True

    async def reopen_sinks(self) -> None:
        """Reopen every sink's files (SIGHUP; logrotate's create/move)."""
        await reopen_sinks(self.sinks.values())
        log.info("sinks_reopened", sinks=sorted(self.sinks))


async def _in_scope(scope: anyio.CancelScope, work: Callable[[], Awaitable[None]]) -> None:
    with scope:
        await work()
