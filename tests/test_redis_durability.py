"""Exactly once per uuid in Redis, end to end: the daemon SIGKILLed mid-delivery and
restarted, and redis-server itself SIGKILLed and restarted mid-stream.

The journal delivers at least once (a batch written before a kill is sent again after the
restart); the sink's dedup keys turn that into exactly one stream entry per notification.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import anyio

from a2pd.journal import Journal
from a2pd.sinks.redis import RedisSink
from tests.harness import TIMEOUT, delivered, emulator, running_daemon, seed, settings_for
from tests.processes import crash_config, run_then_kill
from tests.redis_server import RedisServer, redis_server


def redis_sink_toml(url: str) -> str:
    return f"""
[sinks.redis]
type = "redis"
url = "{url}"
stream = "a2p:{{kind}}"
connect_timeout = 2
timeout = 5
"""


async def stream_uuids(server: RedisServer, stream: str = "a2p:outbound") -> Counter[str]:
    """How many entries each uuid has in ``stream``."""
    client = server.client()
    try:
        found: Counter[str] = Counter()
        for _id, fields in await client.xrange(stream):
            found[fields["uuid"]] += 1
            assert json.loads(fields["json"])["uuid"] == fields["uuid"]
        return found
    finally:
        await client.aclose()


async def test_daemon_sigkill_and_restart_leave_one_entry_per_uuid(tmp_path: Path) -> None:
    """Four SIGKILLs of the daemon right after it delivered batches to Redis, then a clean
    run: every committed notification is in its stream exactly once, nothing invented."""
    rng = random.Random(20261123)
    total, kills = 2000, 4
    body = seed("outbound.json")["body"]
    emu = emulator()
    state = tmp_path / "state"
    async with redis_server(tmp_path / "redis") as server, emu.running():
        config = crash_config(tmp_path, emu, sinks=redis_sink_toml(server.url),
                              routes='[default_route]\nsinks = ["redis"]\n')
        published = 0
        skipped_after_restart = 0
        for _ in range(kills):
            lines: list[str] = []
            published = await run_then_kill(config, emu, rng, body, published, lines)
            skipped_after_restart += sum(
                json.loads(line).get("events", 0) for line in lines
                if '"redis_duplicates_skipped"' in line)

        settings = settings_for(emu, tmp_path, sinks=redis_sink_toml(server.url),
                                routes='[default_route]\nsinks = ["redis"]\n')
        async with running_daemon(settings) as daemon:
            assert daemon.journal is not None
            before = daemon.journal.counters["committed"]
            final = total - published
            for _ in range(final):
                await emu.publish("message", {**body, "id": f"m{published}"})
                published += 1
            with anyio.fail_after(TIMEOUT):
                await daemon.journal.counters.wait_for("committed", before + final)
            sink = daemon.sinks["redis"]
            assert isinstance(sink, RedisSink)
        # leaving the block stops the daemon gracefully: every committed event is delivered
        skipped_after_restart += sink.duplicates
        entries = await stream_uuids(server)

    journal = await Journal.open_for_admin(state / "journal.db")
    try:
        committed = {row[0] for row in journal.database.conn.execute(
            "SELECT uuid FROM seen UNION SELECT uuid FROM events")}
        stats = await journal.stats()
    finally:
        await journal.aclose()
    sent = {s.uuid for s in emu.sent}
    print(f"\npublished {published}, committed {len(committed)}, stream entries "
          f"{sum(entries.values())} ({len(entries)} unique), redeliveries skipped by the "
          f"dedup keys {skipped_after_restart}, kills {kills}")
    assert published == total
    assert committed <= set(entries), "a committed event never reached Redis"
    assert set(entries) <= sent, "Redis holds an event the emulator never sent"
    assert max(entries.values()) == 1, "a uuid has more than one stream entry"
    assert stats["lag"] == {"redis": 0}


async def test_redis_killed_and_restarted_mid_stream_keeps_one_entry_per_uuid(
        tmp_path: Path) -> None:
    """redis-server (appendonly, fsync always) SIGKILLed mid-stream and restarted: the sink
    retries through the outage, reloads its script, and every event is there exactly once."""
    body = seed("outbound.json")["body"]
    emu = emulator()
    async with redis_server(tmp_path / "redis", appendonly=True) as server, emu.running():
        settings = settings_for(emu, tmp_path, sinks=redis_sink_toml(server.url),
                                routes='[default_route]\nsinks = ["redis"]\n',
                                log_level="info")
        async with running_daemon(settings) as daemon:
            assert daemon.pipeline is not None
            sink = daemon.sinks["redis"]
            assert isinstance(sink, RedisSink)
            for i in range(600):
                await emu.publish("message", {**body, "id": f"a{i}"})
            await delivered(daemon, "redis", 150)
            server.kill()  # SIGKILL, while batches are still being sent
            for i in range(400):
                await emu.publish("message", {**body, "id": f"b{i}"})
            with anyio.fail_after(TIMEOUT):
                await daemon.pipeline.counters.wait_for("retries.redis", 1)
            await server.restart()
            for i in range(200):
                await emu.publish("message", {**body, "id": f"c{i}"})
            await delivered(daemon, "redis", 1200)
            retries = daemon.pipeline.counters["retries.redis"]
        entries = await stream_uuids(server)
    sent = [s.uuid for s in emu.sent]
    print(f"\nentries {sum(entries.values())}, retries {retries}, script loads "
          f"{sink.script_loads}, redeliveries skipped {sink.duplicates}")
    assert len(sent) == 1200
    assert set(entries) == set(sent)
    assert max(entries.values()) == 1
    assert sink.script_loads >= 2, "the restarted server's script cache was not reloaded"
