"""examples/redis_consumer.py against a real redis-server: a consumer group scales out the
streams the Redis sink writes (XREADGROUP / XACK / XAUTOCLAIM)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from tests.harness import TIMEOUT, sample_events
from tests.redis_server import RedisServer, make_sink, redis_server

CONSUMER = Path(__file__).parent.parent / "examples" / "redis_consumer.py"
STREAMS = ("a2p:outbound", "a2p:inbound")


async def start_consumer(server: RedisServer, name: str, *extra: str) -> Process:
    process = await anyio.open_process(
        [sys.executable, str(CONSUMER), "--url", server.url, "--group", "workers",
         "--consumer", name, "--block", "0.2", *extra, *STREAMS],
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdin=subprocess.DEVNULL)
    assert process.stderr is not None
    stderr = BufferedByteReceiveStream(process.stderr)
    with anyio.fail_after(TIMEOUT):
        line = (await stderr.receive_until(b"\n", 65536)).decode()
    assert "ready" in line, line
    return process


async def collect(process: Process, name: str, into: list[dict[str, Any]],
                  total: int, done: anyio.Event) -> None:
    """Read the consumer's JSON lines until every consumer together has handled ``total``."""
    assert process.stdout is not None
    lines = BufferedByteReceiveStream(process.stdout)
    while len(into) < total:
        try:
            raw = await lines.receive_until(b"\n", 1 << 20)
        except (anyio.EndOfStream, anyio.IncompleteRead):
            return
        record = json.loads(raw)
        assert record["consumer"] == name
        into.append(record)
    done.set()


async def stop(process: Process) -> int:
    """SIGTERM, and the consumer's exit code once it acknowledged what it had in hand."""
    process.send_signal(signal.SIGTERM)
    with anyio.fail_after(TIMEOUT):
        return await process.wait()


async def pending(server: RedisServer, stream: str) -> int:
    client = server.client()
    try:
        summary = await client.xpending(stream, "workers")
        return int(summary["pending"])
    finally:
        await client.aclose()


async def test_two_consumers_in_a_group_read_every_event_once(tmp_path: Path) -> None:
    """Two example consumers in one group share the sink's streams: together they handle
    every event exactly once, both take part, and nothing is left pending."""
    outbound = sample_events(300, uuid="o{:05d}".format)
    inbound = sample_events(100, "inbound.json", uuid="i{:05d}".format)
    async with redis_server(tmp_path) as server:
        a = await start_consumer(server, "a")
        try:
            b = await start_consumer(server, "b")
            try:
                handled: list[dict[str, Any]] = []
                done = anyio.Event()
                sink = make_sink(server)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(collect, a, "a", handled, 400, done)
                    tg.start_soon(collect, b, "b", handled, 400, done)
                    try:
                        for i in range(0, 300, 30):
                            await sink.send(outbound[i:i + 30] + inbound[i // 3:i // 3 + 10])
                    finally:
                        await sink.aclose()
                    with anyio.fail_after(TIMEOUT):
                        await done.wait()
                    tg.cancel_scope.cancel()
            finally:
                code_b = await stop(b)
        finally:
            code_a = await stop(a)
        left = [await pending(server, stream) for stream in STREAMS]
    uuids = Counter(record["uuid"] for record in handled)
    per_consumer = Counter(record["consumer"] for record in handled)
    assert set(uuids) == {e.uuid for e in [*outbound, *inbound]}
    assert max(uuids.values()) == 1, "an event was handled twice"
    assert per_consumer["a"] > 0
    assert per_consumer["b"] > 0
    assert {r["stream"] for r in handled} == set(STREAMS)
    assert (code_a, code_b) == (0, 0)
    assert left == [0, 0]


async def test_entries_a_dead_consumer_left_pending_are_claimed(tmp_path: Path) -> None:
    """Entries read by a consumer that died before XACK are taken over (XAUTOCLAIM) and
    handled by a live one; nothing stays pending."""
    stream = sample_events(40, uuid="o{:05d}".format)
    async with redis_server(tmp_path) as server:
        sink = make_sink(server)
        try:
            await sink.send(stream)
        finally:
            await sink.aclose()
        client = server.client()
        try:
            for name in STREAMS:
                await client.xgroup_create(name, "workers", id="0", mkstream=True)
            # a consumer that reads 25 entries and dies without acknowledging them
            await client.xreadgroup("workers", "ghost", {STREAMS[0]: ">"}, count=25)
        finally:
            await client.aclose()
        assert await pending(server, STREAMS[0]) == 25
        live = await start_consumer(server, "live", "--claim-idle", "0")
        try:
            handled: list[dict[str, Any]] = []
            done = anyio.Event()
            with anyio.fail_after(TIMEOUT):
                await collect(live, "live", handled, 40, done)
        finally:
            code = await stop(live)
        left = await pending(server, STREAMS[0])
    assert sorted(r["uuid"] for r in handled) == [e.uuid for e in stream]
    assert code == 0
    assert left == 0
