"""Local faults with the real daemon process: a full disk under the journal, a second
daemon on the same state directory, file modes whatever the umask, the WAL's size, and
session saves that overlap. The rule they check (docs/reliability.md): an event is either
committed, or the platform sends it again, or a gap is recorded for it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from structlog.testing import capture_logs

from a2pd import config
from a2pd.app import Daemon
from a2pd.journal import Journal, JournalError
from a2pd.journal import db as journal_db
from a2pd.persist import SessionStore
from tests.disks import fill, free, tmpfs
from tests.harness import (
    FAST_BACKFILL,
    TIMEOUT,
    delivered,
    emulator,
    failed_recovery_gap,
    plain,
    publish_while_away,
    read_records,
    running_daemon,
    settings_for,
    settings_text,
)


class DaemonProcess:
    """``a2pd run`` as a child process; its JSON log lines, waited on as they arrive."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self.lines: list[dict[str, Any]] = []
        self._changed = anyio.Event()

    async def read_log(self) -> None:
        assert self.process.stderr is not None
        stream = BufferedByteReceiveStream(self.process.stderr)
        while True:
            try:
                line = (await stream.receive_until(b"\n", 1 << 20)).decode()
            except (anyio.EndOfStream, anyio.IncompleteRead):
                break
            self.lines.append(json.loads(line) if line.startswith("{") else {"text": line})
            self._changed.set()
            self._changed = anyio.Event()
        self._changed.set()

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == name]

    async def wait_for(self, test: Callable[[], bool], what: str) -> None:
        with anyio.fail_after(TIMEOUT):
            while not test():
                if self.process.returncode is not None:
                    raise AssertionError(f"a2pd exited ({self.process.returncode}) before "
                                         f"{what}: {self.lines[-20:]}")
                await self._changed.wait()

    async def wait_log(self, name: str, count: int = 1) -> None:
        await self.wait_for(lambda: len(self.events(name)) >= count, name)

    def delivered(self) -> int:
        return sum(int(line["events"]) for line in self.events("delivered"))

    def ops_url(self, state: Path) -> str:
        where = json.loads((state / "ops.json").read_text())
        return f"http://{where['host']}:{where['port']}"


@asynccontextmanager
async def daemon_process(config_path: Path) -> AsyncIterator[DaemonProcess]:
    process = await anyio.open_process(
        [sys.executable, "-m", "a2pd", "run", "-c", str(config_path)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL)
    child = DaemonProcess(process)
    async with process, anyio.create_task_group() as tg:
        tg.start_soon(child.read_log)
        try:
            yield child
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGKILL)
            await process.wait()


def write_config(tmp_path: Path, emu: Any, extra: str = "") -> Path:
    path = tmp_path / "a2pd.toml"
    text = settings_text(emu, tmp_path)
    path.write_text(text.replace("[state]\n", f"[state]\n{extra}", 1))
    return path


async def fill_until_commits_fail(emu: Any, child: DaemonProcess, disk: Path,
                                  first: int, more: int = 500) -> int:
    """Fill the disk under the journal, publish messages until a commit fails, then
    ``more`` while the disk is full; the number of the next message."""
    fill(disk)
    n = first
    with anyio.fail_after(TIMEOUT):
        while not child.events("journal_commit_failed"):
            for _ in range(20):
                await emu.publish("message", plain(f"m{n}"))
                n += 1
            # at the daemon's pace: these delivered, or the commits failing
            await child.wait_for(partial(handled_or_failing, child, n), "a failed commit")
    for _ in range(more):
        await emu.publish("message", plain(f"m{n}"))
        n += 1
    return n


async def publish_delivered(emu: Any, child: DaemonProcess, first: int, count: int) -> None:
    """Publish messages ``m<first>`` … and wait until the daemon delivered as many more."""
    total = child.delivered() + count
    for n in range(first, first + count):
        await emu.publish("message", plain(f"m{n}"))
    await child.wait_for(lambda: child.delivered() >= total, f"{total} delivered")


def handled_or_failing(child: DaemonProcess, sent: int) -> bool:
    return bool(child.events("journal_commit_failed")) or child.delivered() >= sent


async def status(child: DaemonProcess, state: Path) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient() as http:
        ready = await http.get(child.ops_url(state) + "/readyz")
        doc = (await http.get(child.ops_url(state) + "/status")).json()
    return ready.status_code, doc


async def test_a_full_disk_stops_reading_and_commits_resume_on_their_own(
        tmp_path: Path) -> None:
    """The journal's disk fills up under a stream: commits fail, /readyz says so, nothing
    counts as received that was not committed; once space is back the pending events are
    committed and delivered without another notification arriving (was: the committer
    waited for the next append, so they sat in memory until then, and /readyz said 200)."""
    emu = emulator()
    state = tmp_path / "state"
    async with emu.running():
        with tmpfs(state, "3m") as disk:
            cfg = write_config(tmp_path, emu)
            async with daemon_process(cfg) as child:
                await child.wait_log("subscribed")
                await publish_delivered(emu, child, 0, 3)
                published = await fill_until_commits_fail(emu, child, disk, 3)

                code, doc = await status(child, state)
                assert code == 503
                assert any("journal commits are failing" in reason
                           for reason in doc["not_ready"])
                counters = doc["counters"]
                assert counters["received.outbound"] == counters["committed"]
                assert counters["received.outbound"] < published

                free(disk)  # and nothing more is published
                await child.wait_log("journal_commit_recovered")
                await child.wait_for(lambda: child.delivered() >= published,
                                     f"{published} delivered")
                code, after = await status(child, state)
                assert code == 200
                child.process.send_signal(signal.SIGTERM)
                assert await child.process.wait() == 0
    ids = Counter(r["body"]["id"] for r in read_records(tmp_path / "events"))
    print(f"\nfull disk, freed: published {published}, committed before the failure "
          f"{counters['committed']}, after {after['counters']['committed']}, "
          f"delivered {len(ids)} unique / {sum(ids.values())} lines, "
          f"commit failures {after['counters']['commit_failures']}")
    assert set(ids) == {f"m{n}" for n in range(published)}
    assert max(ids.values()) == 1


async def test_a_stop_on_a_full_disk_leaves_a_gap_the_next_start_backfills(
        tmp_path: Path) -> None:
    """SIGTERM while the journal's disk is full: exit 74, one fatal line, the events not
    committed are counted and logged; the next start records a gap from the last commit
    and rebuilds them (here without a saved session, so nothing else would: was lost)."""
    emu = emulator()
    state = tmp_path / "state"
    async with emu.running():
        with tmpfs(state, "3m") as disk:
            cfg = write_config(tmp_path, emu, "persist_session = false\n")
            async with daemon_process(cfg) as child:
                await child.wait_log("subscribed")
                await publish_delivered(emu, child, 0, 3)
                published = await fill_until_commits_fail(emu, child, disk, 3)
                child.process.send_signal(signal.SIGTERM)
                assert await child.process.wait() == 74
            lost = child.events("stopped_with_uncommitted")
            assert len(lost) == 1
            assert lost[0]["events"] > 0
            assert len(child.events("fatal")) == 1
            free(disk)

            settings = config.load(cfg)
            async with running_daemon(settings) as daemon:
                assert daemon.pipeline is not None
                with anyio.fail_after(TIMEOUT):
                    await daemon.pipeline.counters.wait_for("gaps_backfilled", 1)
                await daemon.pipeline.journal.flush()
                backfilled = daemon.pipeline.counters["backfilled.outbound"]
                gaps = daemon.pipeline.counters["gaps_recorded"]
    ids = Counter(r["body"]["id"] for r in read_records(tmp_path / "events"))
    print(f"\nstop on a full disk: published {published}, not committed at the stop "
          f"{lost[0]['events']}, gaps recorded {gaps}, rebuilt {backfilled}, "
          f"delivered {len(ids)} unique / {sum(ids.values())} lines")
    assert set(ids) == {f"m{n}" for n in range(published)}
    assert max(ids.values()) == 1


async def test_a_second_daemon_on_the_same_state_directory_exits_74(tmp_path: Path) -> None:
    """A second `a2pd run` with the same state directory is refused with exit 74 and a line
    naming the running one (was: both ran, took the session in turns and wrote duplicates);
    `a2pd journal stats` still works beside it."""
    emu = emulator()
    async with emu.running():
        cfg = write_config(tmp_path, emu)
        settings = config.load(cfg)
        async with running_daemon(settings) as daemon:
            await emu.publish("message", plain("m0"))
            await delivered(daemon, "archive", 1)
            with anyio.fail_after(TIMEOUT):
                second = await anyio.run_process(
                    [sys.executable, "-m", "a2pd", "run", "-c", str(cfg)], check=False)
                stats = await anyio.run_process(
                    [sys.executable, "-m", "a2pd", "journal", "stats", "-c", str(cfg),
                     "--json"], check=False)
    assert second.returncode == 74, second.stderr.decode()
    assert f"another a2pd (pid {os.getpid()})" in second.stderr.decode()
    assert stats.returncode == 0, stats.stderr.decode()
    assert json.loads(stats.stdout)["last_seq"] == 1


async def test_every_file_is_private_whatever_the_umask(tmp_path: Path) -> None:
    """Started with umask 022, every file a2pd writes (journal, its WAL and shared memory,
    session state, ops file, lock, sink files) is 0600 and every directory it makes 0700
    (was: journal.db-wal and -shm 0644, readable by every user)."""
    emu = emulator()
    old = os.umask(0o022)
    try:
        async with emu.running():
            cfg = write_config(tmp_path, emu)
            async with daemon_process(cfg) as child:
                await child.wait_log("subscribed")
                await publish_delivered(emu, child, 0, 5)
                await child.wait_log("session_state_saved")
                state, sink = tmp_path / "state", tmp_path / "events"
                assert (state / "journal.db-wal").exists()
                modes = {str(p): stat.S_IMODE(p.stat().st_mode)
                         for root in (state, sink) for p in [root, *root.rglob("*")]}
                child.process.send_signal(signal.SIGTERM)
                assert await child.process.wait() == 0
    finally:
        os.umask(old)
    assert {p: m for p, m in modes.items() if m != (0o700 if Path(p).is_dir() else 0o600)} \
        == {}
    assert any(p.endswith("journal.db-shm") for p in modes)


async def test_the_wal_is_cut_back_after_a_burst(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A burst of large events grows the WAL well past its limit. Once checkpointed, the
    next commit cuts it back (``journal_size_limit``); and a journal that stays quiet gets
    it cut by the checkpoint itself (was: the file stayed at the burst's size for ever)."""
    # a limit the test's bursts pass (the default is set above what a second of steady
    # traffic writes, test_journal_sql.py::test_commits_after_a_checkpoint_leave_...)
    monkeypatch.setattr(journal_db, "WAL_SIZE_LIMIT", 8 * 1024 * 1024)
    emu = emulator()
    async with emu.running():
        # no checkpoint by the compactor: the test runs them
        settings = settings_for(emu, tmp_path, journal={"compact_interval": 300})
        wal = Path(settings.state.directory) / "journal.db-wal"
        async with running_daemon(settings) as daemon:
            assert daemon.journal is not None
            sizes = []
            for burst in range(2):
                for n in range(3000):
                    await emu.publish("message", {**plain(f"b{burst}-{n}"), "text": "x" * 4000})
                await delivered(daemon, "archive", 3001 * burst + 3000)
                sizes.append(wal.stat().st_size)
                if burst == 0:
                    await daemon.journal.checkpoint()
                    await emu.publish("message", plain("after"))  # the next commit
                    await delivered(daemon, "archive", 3001)
                else:
                    # quiet since the burst (the idle time scaled down to nothing)
                    monkeypatch.setattr(journal_db, "TRUNCATE_IDLE", 0.0)
                    await daemon.journal.checkpoint()
                sizes.append(wal.stat().st_size)
    print(f"\nWAL: {sizes[0]:,} B after a burst, {sizes[1]:,} B after the next commit; "
          f"{sizes[2]:,} B after another, {sizes[3]:,} B after a quiet checkpoint")
    assert min(sizes[0], sizes[2]) > journal_db.WAL_SIZE_LIMIT
    assert sizes[1] <= journal_db.WAL_SIZE_LIMIT
    assert sizes[3] == 0


def test_overlapping_session_saves_all_succeed(tmp_path: Path) -> None:
    """The periodic save (a worker thread) and the final one at a stop overlap: both land,
    and the file holds one of the documents whole (was: one shared temp name, so one
    rename failed with ENOENT, seen at the end of `a2pd demo`)."""
    store = SessionStore(tmp_path, "secret", "jwt")
    errors: list[BaseException] = []

    def save(tag: str) -> None:
        for i in range(100):
            try:
                store.save({"tag": tag, "i": i})
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=save, args=(tag,)) for tag in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert (store.load() or {}).get("i") == 99
    assert [p.name for p in tmp_path.iterdir()] == ["session.json"]



def sinks_toml(tmp_path: Path, hook: str = "", webhook: str = "") -> str:
    """``archive`` (a file) always; ``hook`` (an HTTP receiver that is down) and ``webhook``
    (a file) when given their extra lines."""
    text = f"""
[sinks.archive]
type = "file"
directory = "{tmp_path / 'events'}"
path = "{{kind}}.jsonl"
fsync = "never"
"""
    if hook:
        text += f"""
[sinks.hook]
type = "http"
url = "http://127.0.0.1:9/nobody-listens"
retry_initial = 0.05
retry_max = 0.1
{hook}
"""
    if webhook:
        text += f"""
[sinks.webhook]
type = "file"
directory = "{tmp_path / 'webhook'}"
path = "{{kind}}.jsonl"
fsync = "never"
{webhook}
"""
    return text


def config_with(emu: Any, tmp_path: Path, sinks: str, routes: list[str],
                drop: list[str] | None = None) -> Path:
    """Write the config file with these sinks and default route; its path."""
    text = settings_text(emu, tmp_path, sinks=sinks,
                         routes=f"[default_route]\nsinks = {json.dumps(routes)}\n")
    if drop is not None:
        text = text.replace("[delivery]\n", f"[delivery]\ndrop_backlog = {json.dumps(drop)}\n")
    path = tmp_path / "a2pd.toml"
    path.write_text(text)
    return path


async def test_a_removed_or_renamed_sink_keeps_its_backlog_until_told(tmp_path: Path) -> None:
    """``hook`` (down) is 200 events behind. A reload (SIGHUP) that renames it is refused
    while nothing says where they go (was: applied, its backlog compacted away, one info
    line); with ``takes_over`` the renamed sink delivers all 200, once; a start without the
    sink and without ``takes_over`` exits 78 naming it; ``delivery.drop_backlog`` drops a
    backlog on purpose, logged with the count."""
    emu = emulator()
    first_sinks = sinks_toml(tmp_path, hook="#")
    async with emu.running():
        cfg = config_with(emu, tmp_path, first_sinks, ["archive", "hook"])
        async with daemon_process(cfg) as child:
            await child.wait_log("subscribed")
            await publish_delivered(emu, child, 0, 200)  # archive's; hook retries
            await child.wait_log("sink_retry")
            config_with(emu, tmp_path, sinks_toml(tmp_path, webhook="#"), ["archive", "webhook"])
            child.process.send_signal(signal.SIGHUP)
            await child.wait_log("reload_refused")
            config_with(emu, tmp_path, sinks_toml(tmp_path, webhook='takes_over = ["hook"]'),
                        ["archive", "webhook"])
            child.process.send_signal(signal.SIGHUP)
            await child.wait_log("reloaded")
            await child.wait_for(lambda: child.delivered() >= 400, "200 delivered by webhook")
            child.process.send_signal(signal.SIGTERM)
            assert await child.process.wait() == 0
        [refused] = child.events("reload_refused")
        assert refused["problems"] == [
            "sinks.hook: removed with 200 undelivered events; keep it until they are "
            "delivered, name it in another sink's takes_over to deliver them there, or list "
            "it in delivery.drop_backlog to drop them"]
        assert [(e["sink"], e["to"], e["events"])
                for e in child.events("sink_backlog_handed_over")] == [("hook", "webhook", 200)]
        webhook = Counter(r["body"]["id"] for r in read_records(tmp_path / "webhook"))
        assert webhook == Counter({f"m{n}": 1 for n in range(200)})

        # a backlog left behind at a stop: the next start without the sink is refused
        config_with(emu, tmp_path, first_sinks, ["archive", "hook"])
        async with daemon_process(cfg) as child:
            await child.wait_log("subscribed")
            await publish_delivered(emu, child, 200, 5)
            child.process.send_signal(signal.SIGTERM)
            assert await child.process.wait() == 0
        config_with(emu, tmp_path, sinks_toml(tmp_path, webhook="#"), ["archive", "webhook"])
        with anyio.fail_after(TIMEOUT):
            start = await anyio.run_process(
                [sys.executable, "-m", "a2pd", "run", "-c", str(cfg)], check=False)
        assert start.returncode == 78
        assert "sinks.hook: removed with 5 undelivered events" in start.stderr.decode()

        config_with(emu, tmp_path, sinks_toml(tmp_path), ["archive"], drop=["hook"])
        async with daemon_process(cfg) as child:
            await child.wait_log("subscribed")
            child.process.send_signal(signal.SIGTERM)
            assert await child.process.wait() == 0
        assert [(e["sink"], e["events"]) for e in child.events("sink_backlog_dropped")] == [
            ("hook", 5)]
    print(f"\nrename with a backlog: 200 behind, reload refused; handed over "
          f"{len(webhook)} unique / {sum(webhook.values())} lines to webhook; "
          f"5 left at a stop: start refused (78), then dropped on purpose")


async def test_the_file_sink_on_a_full_then_deleted_directory_loses_and_repeats_nothing(
        tmp_path: Path) -> None:
    """The real daemon's file sink on a small disk: the disk fills under a stream (each
    batch retried until space is back, then written once: was up to three times), then its
    directory is deleted (`rm -rf`) and the stream goes on without a SIGHUP (was: written to
    the deleted file, unseen, until a SIGHUP)."""
    emu = emulator()
    events_dir = tmp_path / "events"
    async with emu.running():
        with tmpfs(events_dir, "2m") as disk:
            cfg = tmp_path / "a2pd.toml"
            cfg.write_text(settings_text(emu, tmp_path, sinks=f"""
[sinks.archive]
type = "file"
directory = "{events_dir}"
path = "{{kind}}/all.jsonl"
fsync = "interval"
fsync_interval = "50ms"
"""))
            async with daemon_process(cfg) as child:
                await child.wait_log("subscribed")
                await publish_delivered(emu, child, 0, 100)
                fill(disk)
                for n in range(100, 300):
                    await emu.publish("message", plain(f"m{n}"))
                await child.wait_log("sink_retry", 3)
                free(disk)
                await child.wait_for(lambda: child.delivered() >= 300, "300 delivered")
                before = Counter(r["body"]["id"] for r in read_records(events_dir))

                shutil.rmtree(events_dir / "outbound")
                await publish_delivered(emu, child, 300, 200)
                child.process.send_signal(signal.SIGTERM)
                assert await child.process.wait() == 0
            after = Counter(r["body"]["id"] for r in read_records(events_dir))
    retries = len(child.events("sink_retry"))
    reopened = [line["reason"] for line in child.events("file_reopened")]
    print(f"\nfile sink: 300 published onto a disk full for {retries} retries: "
          f"{len(before)} unique / {sum(before.values())} lines; directory deleted, "
          f"200 more: {len(after)} unique / {sum(after.values())} lines, reopened {reopened}")
    assert before == Counter({f"m{n}": 1 for n in range(300)})
    assert after == Counter({f"m{n}": 1 for n in range(300, 500)})
    assert reopened == ["deleted"]


async def test_a_journal_turned_read_only_stops_the_daemon_cleanly_with_exit_74(
        tmp_path: Path) -> None:
    """The journal stops taking writes under a stream (SQLite refuses them: the database is
    made query-only, as a read-only remount would): the commit's error is fatal; the daemon
    stops the graceful way, promptly, with one fatal line, and ends with the journal's error
    (exit 74). Was, in this change's first version: a session save waiting for the commit
    raised the error out of the task group (an ExceptionGroup: a traceback and exit 1), and
    with the committer gone a stop waited out the whole shutdown_timeout."""
    emu = emulator()
    async with emu.running():
        settings = config.loads(settings_text(emu, tmp_path).replace(
            "shutdown_timeout = 5", "shutdown_timeout = 600"), source="test", env={})
        daemon = Daemon(settings)
        ended: list[Exception | None] = []

        async def run() -> None:
            try:
                await daemon.run(handle_signals=False)
            except Exception as exc:
                ended.append(exc)
            else:
                ended.append(None)

        # the whole run, its stop included: it ends by itself, promptly
        with capture_logs() as logs, anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                await daemon.subscribed.wait()
                assert daemon.journal is not None
                for n in range(3):
                    await emu.publish("message", plain(f"m{n}"))
                await daemon.journal.counters.wait_for("committed", 3)
                daemon.journal.database.conn.execute("PRAGMA query_only = 1")
                for n in range(3, 53):
                    await emu.publish("message", plain(f"m{n}"))
    [stopped] = ended
    assert isinstance(stopped, JournalError), repr(stopped)
    assert stopped.exit_code == 74
    assert [line["event"] for line in logs if line["event"] in ("fatal", "stopping")] == [
        "fatal", "stopping"]


async def test_a_gap_reported_during_a_listing_is_written_at_once(tmp_path: Path) -> None:
    """A second gap opens while the backfill is still retrying the first one's listing:
    it is in the journal at once, so a stop (or a crash) then cannot lose it (was: kept in
    memory until the listing ended, and a stop meanwhile marked the run clean)."""
    emu = emulator()
    async with emu.running():
        settings = settings_for(emu, tmp_path, extra=FAST_BACKFILL)
        async with running_daemon(settings) as daemon:
            assert daemon.pipeline is not None
            counters = daemon.pipeline.counters
            emu.a2p.fail_lists(503, times=None)  # the listing keeps being retried
            await failed_recovery_gap(emu, daemon, 2)
            with anyio.fail_after(TIMEOUT):
                await counters.wait_for("backfill_errors", 1)
            emu.fail_next_recovery()
            await publish_while_away(emu, 1)
            with anyio.fail_after(TIMEOUT):
                await counters.wait_for("gaps_recorded", 2)
    journal = await Journal.open_for_admin(Path(settings.state.directory) / "journal.db")
    try:
        assert len(await journal.gaps.pending()) == 2
    finally:
        await journal.aclose()
