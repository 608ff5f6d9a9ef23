"""The daemon's lifetime: build everything from ``Settings``, run, stop gracefully.

    start: state directory, journal, sinks, pipeline (committer, compactor, one reader per
           sink), token refresher, supervisor
    SIGHUP: every sink reopens its files (logrotate); the config is not reloaded yet
    stop (SIGTERM/SIGINT or ``request_stop``): stop reading from the socket, commit what is
           pending, give the sinks ``delivery.shutdown_timeout`` to catch up with the
           journal, close sinks and journal. Cursors are persisted at every delivery, so
           what is left is delivered after the next start. A second signal skips the drain.

A fatal error (credentials, permission, config found bad at run time, journal unusable)
stops the daemon the same graceful way and is then re-raised for the CLI's exit code.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx

from daemon.auth import TokenManager
from daemon.config import Settings
from daemon.errors import A2pdError, ConfigError, ConfigProblem
from daemon.journal import Journal
from daemon.logging import get_logger
from daemon.pipeline import Pipeline
from daemon.sinks import Sink, SinkContext, sink_class
from daemon.supervisor import Supervisor

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


async def open_journal(settings: Settings, state_dir: Path) -> Journal:
    """The journal of ``settings`` in ``state_dir``."""
    cfg = settings.journal
    return await Journal.open(state_dir / "journal.db", commit_interval=cfg.commit_interval,
                              commit_max=cfg.commit_max, fsync=cfg.fsync,
                              max_events=cfg.max_events, max_age=cfg.max_age or None,
                              full_policy=cfg.full_policy, dedup_window=cfg.dedup_window)


class Daemon:
    """One running a2pd. ``subscribed`` is set once the first subscription is active."""

    def __init__(self, settings: Settings,
                 on_subscribed: Callable[[], None] | None = None) -> None:
        self.settings = settings
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
        self.sinks: dict[str, Sink] = {}

    def request_stop(self) -> None:
        """Begin a graceful stop (a second call skips the drain)."""
        if self._stop.is_set():
            self._force = True
            if self._drain_scope is not None:
                self._drain_scope.cancel()
        self._stop.set()

    def _subscribed(self) -> None:
        self.subscribed.set()
        if self._on_subscribed is not None:
            self._on_subscribed()

    def _fail(self, error: BaseException) -> None:
        log.error("fatal", error=str(error), kind=type(error).__name__)
        if self._fatal is None:
            self._fatal = error
        self._stop.set()

    async def run(self, *, handle_signals: bool = True) -> None:
        """Run until stopped; re-raise a fatal error after the graceful stop."""
        settings = self.settings
        prepare_state_dir(self.state_dir)
        journal = await open_journal(settings, self.state_dir)
        self.journal = journal
        sinks = build_sinks(settings, SinkContext(state_dir=self.state_dir,
                                                 counters=journal.counters))
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
            with anyio.CancelScope(shield=True):
                await journal.aclose()
            raise
        try:
            async with httpx.AsyncClient(follow_redirects=False) as http, \
                    anyio.create_task_group() as tg:
                auth = TokenManager(settings.platform, settings.client_secret.get_secret_value(),
                                    settings.jwt.get_secret_value(), settings.connection, http)
                self.auth = auth
                supervisor = Supervisor(auth, list(settings.subscription.event_filters),
                                        settings.connection, pipeline.ingest,
                                        pipeline.ingest_bad_frame, self._subscribed)
                self.supervisor = supervisor
                workers = anyio.CancelScope()
                await tg.start(self._run_pipeline, pipeline, workers)
                reading = anyio.CancelScope()
                tg.start_soon(self._read, auth, supervisor, reading)
                if handle_signals:
                    tg.start_soon(self._watch_signals)
                log.info("daemon_started", sinks=sorted(sinks), state_dir=str(self.state_dir),
                         backlog=pipeline.backlog())

                await self._stop.wait()
                log.info("stopping", reason="fatal error" if self._fatal else "requested")
                reading.cancel()
                await self._drain(pipeline, workers)
                if settings.platform.revoke_on_stop:
                    with anyio.move_on_after(5):
                        await auth.revoke()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                for name, sink in sinks.items():
                    try:
                        await sink.aclose()
                    except Exception as exc:  # noqa: BLE001 - one sink must not block the rest
                        log.error("sink_close_failed", sink=name, error=repr(exc))
                try:
                    await journal.aclose()
                except A2pdError as exc:
                    self._fail(exc)
        log.info("stopped", undelivered=pipeline.backlog(),
                 delivered=pipeline.counters.snapshot("delivered."),
                 dead_letters=pipeline.counters["dead_letters"])
        if self._fatal is not None:
            raise self._fatal

    async def _run_pipeline(self, pipeline: Pipeline, scope: anyio.CancelScope, *,
                            task_status: anyio.abc.TaskStatus[None]) -> None:
        try:
            with scope:
                try:
                    await pipeline.run(task_status=task_status)
                except* A2pdError as group:
                    self._fail(group.exceptions[0])
        finally:
            # also when the pipeline died: nothing is left to wait for in the drain
            self._drained.set()

    async def _read(self, auth: TokenManager, supervisor: Supervisor,
                    scope: anyio.CancelScope) -> None:
        with scope:
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(auth.run_refresher)
                    await supervisor.run()
            except* A2pdError as group:
                self._fail(group.exceptions[0])

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
                    await self.reopen_sinks()
                else:
                    self.request_stop()
