"""Crash safety: SIGKILL at random moments during a stream, repeated, loses nothing committed.

An event counts as received once the journal committed it. The contract checked here:
every committed notification reaches the file sink at least once, nothing is invented, and
duplicates stay within what at-least-once allows (at most one in-flight batch per kill).
Notifications the daemon had not committed when it was killed (still in the socket or in
the commit window) are counted and printed; recovering those is session recovery's job.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import anyio

from a2pd.journal import Journal
from tests.harness import TIMEOUT, emulator, read_records, running_daemon, seed, settings_for
from tests.processes import BATCH_MAX, crash_config, run_then_kill

SINKS = """
[sinks.archive]
type = "file"
directory = "{events}"
path = "{{kind}}.jsonl"
fsync = "never"
"""


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
        config = crash_config(tmp_path, emu)
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
