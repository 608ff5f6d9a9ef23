"""Crash safety: SIGKILL at random moments during a stream, repeated, loses nothing committed.

An event counts as received once the journal committed it. The contract checked here:
every committed notification reaches the file sink at least once, nothing is invented, and
duplicates stay within what at-least-once allows (at most one in-flight batch per kill).
Notifications the daemon had not committed when it was killed (still in the socket or in
the commit window) are counted and printed; recovering those is session recovery's job.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process

from a2pd.emulator import Emulator
from a2pd.journal import Journal
from tests.harness import TIMEOUT, emulator, read_records, running_daemon, seed, settings_for
from tests.test_cli import read_until, stderr_lines

BATCH_MAX = 64

SINKS = """
[sinks.archive]
type = "file"
directory = "{events}"
path = "{{kind}}.jsonl"
fsync = "never"
"""


def config_text(settings_path: Path, server: str, client_id: str, secret: str, jwt: str,
                state: Path, events: Path) -> None:
    settings_path.write_text(f"""
[platform]
server = "{server}"
client_id = "{client_id}"
client_secret = "{secret}"
jwt = "{jwt}"

[connection]
backoff_initial = 0.05
wstoken_min_interval = 0.01

[state]
directory = "{state}"

[journal]
commit_interval = 0.02

[delivery]
batch_max = {BATCH_MAX}

[ops]
# a free port: tests run daemons side by side
listen = "127.0.0.1:0"

[log]
level = "debug"
""" + SINKS.format(events=events) + '\n[default_route]\nsinks = ["archive"]\n')


async def start_daemon(config: Path) -> Process:
    return await anyio.open_process(
        [sys.executable, "-m", "a2pd", "run", "-c", str(config)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL)


async def run_then_kill(config: Path, emu: Emulator, rng: random.Random,
                        body: dict[str, Any], published: int,
                        lines: list[str] | None = None) -> int:
    """Start ``a2pd run``, publish a burst of 200-400 messages (ids from ``published`` on)
    and SIGKILL it while batches are being committed and delivered; the new ``published``.
    Its stderr lines go to ``lines``."""
    lines = [] if lines is None else lines
    process = await start_daemon(config)
    async with process:
        stream = stderr_lines(process)
        try:
            with anyio.fail_after(TIMEOUT):
                await read_until(stream, "subscribed", lines)
                burst = rng.randint(200, 400)
                for _ in range(burst):
                    await emu.publish("message", {**body, "id": f"m{published}"})
                    published += 1
                # a batch holds at most BATCH_MAX events, so the burst alone makes at least
                # ceil(burst / BATCH_MAX) "delivered" lines: wait for fewer, then kill
                for _ in range(rng.randint(1, -(-burst // BATCH_MAX))):
                    await read_until(stream, "delivered", lines)
        except BaseException:
            print("\n".join(lines[-40:]), file=sys.stderr)
            raise
        finally:
            # never leave a live daemon behind (closing the process would wait for it)
            process.send_signal(signal.SIGKILL)
        assert await process.wait() == -signal.SIGKILL
    return published


async def test_sigkill_during_a_stream_loses_nothing_committed(tmp_path: Path) -> None:
    """Five SIGKILLs at random points of a 3,000-event stream (mid-delivery), then a clean
    run: every
    committed event is in the sink, none invented, duplicates within the contract."""
    rng = random.Random(20261123)
    total, kills = 3000, 5
    body = seed("outbound.json")["body"]
    emu = emulator()
    state, events_dir = tmp_path / "state", tmp_path / "events"
    async with emu.running():
        config = tmp_path / "a2pd.toml"
        config_text(config, emu.base_url, emu.config.client_id, emu.config.client_secret,
                    emu.config.jwt, state, events_dir)
        published = 0
        for _ in range(kills):
            published = await run_then_kill(config, emu, rng, body, published)

        # a last, clean run (in-process, so the test can wait on its counters)
        # settings_for keeps the state in tmp_path/"state": the journal the kills left behind
        settings = settings_for(emu, tmp_path, sinks=SINKS.format(events=events_dir))
        assert settings.state.directory == state
        async with running_daemon(settings) as daemon:
            assert daemon.journal is not None
            before = daemon.journal.counters["committed"]
            final = total - published
            for _ in range(final):
                await emu.publish("message", {**body, "id": f"m{published}"})
                published += 1
            with anyio.fail_after(TIMEOUT):
                await daemon.journal.counters.wait_for("committed", before + final)
        # leaving the block stops the daemon gracefully: every committed event is delivered

    journal = await Journal.open_for_admin(state / "journal.db")
    try:
        committed = {row[0] for row in journal.database.conn.execute(
            "SELECT uuid FROM seen UNION SELECT uuid FROM events")}
        stats = await journal.stats()
    finally:
        await journal.aclose()
    written = Counter(r["uuid"] for r in read_records(events_dir))
    sent = {s.uuid for s in emu.sent}
    duplicates = sum(n - 1 for n in written.values())
    lost_in_flight = len(sent - committed)
    print(f"\npublished {published}, committed {len(committed)}, written {sum(written.values())}"
          f" ({len(written)} unique), duplicates {duplicates}, "
          f"not committed before a kill {lost_in_flight}, kills {kills}")
    assert published == total
    assert committed <= set(written), "a committed event never reached the sink"
    assert set(written) <= sent, "the sink holds an event the emulator never sent"
    assert duplicates <= kills * BATCH_MAX
    assert stats["lag"] == {"archive": 0}
    assert len(committed) > final + kills  # every killed run had committed events
