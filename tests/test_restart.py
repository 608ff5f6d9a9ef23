"""A restart inside the gateway's recovery window recovers the session and gets the replay.

The daemon keeps its OAuth tokens and the newest ``wsc`` (encrypted) in the state directory;
a new process presents them and the emulator replays what it sent while nobody listened.
"""

from __future__ import annotations

import json
import signal
import stat
from pathlib import Path

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

from tests.harness import TIMEOUT, emulator, read_records, seed
from tests.processes import read_until, started, stderr_lines, write_config


async def delivered_lines(stream: BufferedByteReceiveStream, lines: list[str],
                          count: int) -> None:
    """Read stderr until ``delivered`` log lines add up to ``count`` events."""
    total = 0
    while total < count:
        await read_until(stream, "delivered", lines)
        total += json.loads(lines[-1])["events"]


async def test_restart_inside_the_recovery_window_gets_the_replay(tmp_path: Path) -> None:
    """SIGKILL, events published while the daemon is down, a new process: it resumes the
    OAuth session (no new JWT grant), recovers the WebSocket session (no new subscription)
    and delivers what was sent meanwhile; the same after a graceful stop. Every event once."""
    emu = emulator()
    body = seed("outbound.json")["body"]
    async with emu.running():
        config = write_config(tmp_path, emu)
        published = 0

        async def publish(n: int) -> None:
            nonlocal published
            for _ in range(n):
                await emu.publish("message", {**body, "id": f"m{published}"})
                published += 1

        lines: list[str] = []
        # 1: deliver 5, make sure the session state is saved, then die without warning
        async with started(config, emu.config.jwt) as process:
            stream = stderr_lines(process)
            with anyio.fail_after(TIMEOUT):
                await read_until(stream, "subscribed", lines)
                await publish(5)
                await delivered_lines(stream, lines, 5)
                await read_until(stream, "session_state_saved", lines)
            process.send_signal(signal.SIGKILL)
            await process.wait()
        await publish(3)  # nobody is connected: the gateway buffers these for the session

        # 2: a new process recovers and gets the 3; then a graceful stop
        async with started(config, emu.config.jwt) as process:
            stream = stderr_lines(process)
            with anyio.fail_after(TIMEOUT):
                await read_until(stream, "session_state_restored", lines)
                await read_until(stream, "session_recovered", lines)
                await delivered_lines(stream, lines, 3)
                process.send_signal(signal.SIGTERM)
                assert await process.wait() == 0
        await publish(2)

        # 3: after a graceful stop too
        async with started(config, emu.config.jwt) as process:
            stream = stderr_lines(process)
            with anyio.fail_after(TIMEOUT):
                await read_until(stream, "session_recovered", lines)
                await delivered_lines(stream, lines, 2)
                process.send_signal(signal.SIGTERM)
                assert await process.wait() == 0

        grants = [r for r in emu.requests if r[1] == "/restapi/oauth/token"]
        secrets = emu.issued_secrets()
    ids = sorted(r["body"]["id"] for r in read_records(tmp_path / "events"))
    assert ids == sorted(f"m{i}" for i in range(10))
    replayed = [s for s in emu.sent if s.replay]
    assert len(replayed) >= 5
    assert len({s.subscription_id for s in emu.sent}) == 1  # never re-subscribed
    assert len(grants) == 1, grants  # one JWT grant: the OAuth session was kept
    state_file = tmp_path / "state" / "session.json"
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    saved = state_file.read_bytes()
    for secret in [*secrets, emu.config.jwt, emu.config.client_secret]:
        assert secret.encode() not in saved
    joined = "\n".join(lines)
    for secret in secrets:
        assert secret not in joined


async def test_other_credentials_ignore_the_saved_state(tmp_path: Path) -> None:
    """A state file written with other credentials cannot be read: a fresh session starts."""
    from a2pd.persist import SessionStore

    store = SessionStore(tmp_path, "secret-a", "jwt-a")
    store.save({"tokens": {"access": "x"}})
    assert store.load() == {"tokens": {"access": "x"}}
    assert SessionStore(tmp_path, "secret-b", "jwt-a").load() is None
    (tmp_path / "session.json").write_text("not json")
    assert store.load() is None


async def test_a_forced_stop_with_pending_events_ends_and_keeps_them(tmp_path: Path) -> None:
    """A second stop request while appends wait for their group commit: the daemon still
    ends promptly (no wait for a committer that is gone) and the journal's close commits
    them, so the next start delivers them."""
    from functools import partial

    from a2pd.app import Daemon
    from a2pd.journal import Journal
    from tests.harness import settings_for

    emu = emulator()
    async with emu.running():
        settings = settings_for(emu, tmp_path, journal={"commit_interval": 3600.0})
        daemon = Daemon(settings)
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(daemon.run, handle_signals=False))
            with anyio.fail_after(TIMEOUT):
                await daemon.subscribed.wait()
                assert daemon.pipeline is not None
                for i in range(3):
                    await emu.publish("message", {**seed("outbound.json")["body"],
                                                  "id": f"p{i}"})
                assert daemon.supervisor is not None
                await daemon.supervisor.state.counters.wait_for("notifications", 3)
                assert daemon.journal is not None
                # the first is committed at once, the other two wait for the interval
                while daemon.journal.waiting < 2:
                    await anyio.lowlevel.checkpoint()
            assert daemon.journal is not None
            assert not daemon.journal.all_durable
            daemon.request_stop()
            daemon.request_stop()
            with anyio.fail_after(TIMEOUT):
                while not daemon.journal.closed:
                    await daemon.journal.wait_committed()
        # run() returned (the task group ended)
    journal = await Journal.open_for_admin(tmp_path / "state" / "journal.db")
    try:
        assert len(await journal.read(0, 10)) == 3
    finally:
        await journal.aclose()
