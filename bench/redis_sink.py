"""Redis Streams sink throughput next to the file sink's, side by side in one run.

    python bench/redis_sink.py [--events N] [--batch B] [--repeat R]

Each run hands N realistic outbound-status events to a fresh sink in batches of B (the
pipeline's default batch_max is 512) and reports delivered events per second, counting
from the first send() to the last one's return. Sinks measured, alternating in every round:

    file            the file sink, fsync = "interval" (its default)
    redis           the redis sink (dedup script + XADD per event, pipelined) against a
                    redis-server on loopback with no persistence
    redis+aof       the same against a server with appendonly yes, appendfsync everysec
    redis, resend   the same batches again: every event is a duplicate (dedup-key hits)

redis-server is started here (a free loopback port, a temporary directory) and killed at
the end. This machine has 2 cores shared with others, so runs are repeated and the median
is reported. Results go to bench/results/redis.json. The target is checked here, never in
tests: the redis sink delivers at least TARGET_RATIO times what the file sink does in the
same run (a ratio, because absolute figures move with the load of this shared machine);
the exit status is 1 when it does not.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import anyio
import redis

from a2pd import events
from a2pd.sinks import Sink, SinkContext
from a2pd.sinks.file import FileOptions, FileSink
from a2pd.sinks.redis import RedisOptions, RedisSink

TARGET_RATIO = 0.5
ENVELOPE = {
    "uuid": "3301827364519200002",
    "event": "/restapi/v1.0/account/400123456789/a2p-sms/messages?direction=Outbound",
    "timestamp": "2026-01-10T08:10:02Z", "subscriptionId": "5e1b2c3d-0000-4000-8000-00000000abcd",
    "ownerId": "400123456789",
    "body": {"id": "90011", "batchId": "a1b2c3d4-0000-4000-8000-0000000000b1",
             "from": "+16505550111", "to": ["+14155550122"],
             "text": "Your appointment is tomorrow at 10:00", "direction": "Outbound",
             "messageStatus": "Delivered", "segmentCount": 1, "cost": 0.007,
             "creationTime": "2026-01-10T08:09:56Z", "lastModifiedTime": "2026-01-10T08:10:01Z"},
}


def make_events(n: int) -> list[events.Event]:
    made = []
    for i in range(n):
        event = events.decode_notification({**ENVELOPE, "uuid": f"bench-{i:08d}"}, b"")
        assert not isinstance(event, events.EventError)
        made.append(event)
    return made


@contextmanager
def redis_server(directory: Path, *aof: str) -> Iterator[int]:
    """A redis-server on a free loopback port for the block; its port."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    directory.mkdir(parents=True, exist_ok=True)
    persistence = list(aof) if aof else ["--appendonly", "no"]
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
         "--save", "", "--logfile", str(directory / "redis.log"), *persistence],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port, socket_connect_timeout=1)
        deadline = time.monotonic() + 15
        while True:  # readiness: PING, bounded
            try:
                if client.ping():
                    break
            except redis.RedisError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"redis-server did not start ({directory})") from None
                time.sleep(0.02)
        client.close()
        yield port
    finally:
        process.kill()
        process.wait()


async def timed(sink: Sink, stream: Sequence[events.Event], batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(stream), batch):
        await sink.send(stream[i:i + batch])
    return len(stream) / (time.perf_counter() - start)


async def file_run(stream: Sequence[events.Event], batch: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        sink = FileSink("file", FileOptions(directory=Path(tmp)), SinkContext(Path(tmp)))
        try:
            return await timed(sink, stream, batch)
        finally:
            await sink.aclose()


async def redis_run(port: int, stream: Sequence[events.Event], batch: int,
                    resend: bool = False) -> float:
    flush = redis.Redis(port=port)
    flush.flushall()
    flush.close()
    options = RedisOptions.model_validate({"url": f"redis://127.0.0.1:{port}/0"},
                                          context={"env": {}})
    sink = RedisSink("redis", options, SinkContext(Path(".")))
    try:
        if resend:
            await timed(sink, stream, batch)
        rate = await timed(sink, stream, batch)
        # every event written once; on the resend round every event was a duplicate
        assert sink.written == len(stream), sink.written
        assert sink.duplicates == (len(stream) if resend else 0), sink.duplicates
        return rate
    finally:
        await sink.aclose()


async def main(n: int, batch: int, repeat: int) -> dict[str, float]:
    stream = make_events(n)
    rates: dict[str, list[float]] = {"file": [], "redis": [], "redis+aof": [],
                                     "redis, resend": []}
    with tempfile.TemporaryDirectory() as tmp, \
            redis_server(Path(tmp) / "plain") as plain, \
            redis_server(Path(tmp) / "aof", "--appendonly", "yes",
                         "--appendfsync", "everysec") as aof:
        runs: dict[str, Callable[[], object]] = {
            "file": lambda: file_run(stream, batch),
            "redis": lambda: redis_run(plain, stream, batch),
            "redis+aof": lambda: redis_run(aof, stream, batch),
            "redis, resend": lambda: redis_run(plain, stream, batch, resend=True),
        }
        for _ in range(repeat):
            for name, run in runs.items():
                rates[name].append(await run())  # type: ignore[misc]
    return {name: statistics.median(values) for name, values in rates.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    result = anyio.run(main, args.events, args.batch, args.repeat)
    print(f"sink throughput, {args.events} events in batches of {args.batch}, "
          f"median of {args.repeat} runs")
    for name, rate in result.items():
        print(f"  {name:<14} {rate:>10,.0f} events/s")
    ratio = result["redis"] / result["file"]
    passed = ratio >= TARGET_RATIO
    print(f"redis / file: {ratio:.2f} (target >= {TARGET_RATIO}): "
          f"{'PASS' if passed else 'FAIL'}")
    print(f"README: | `redis` (no persistence) | ~{result['redis']:,.0f} | "
          f"`file` ~{result['file']:,.0f} (x{ratio:.2f}) |")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "redis.json").write_text(json.dumps(
        {"events": args.events, "batch": args.batch, "repeat": args.repeat,
         "events_per_second": result, "redis_over_file": ratio,
         "target_ratio": TARGET_RATIO, "passed": passed}, indent=2) + "\n")
    raise SystemExit(0 if passed else 1)
