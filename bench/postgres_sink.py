"""PostgreSQL sink throughput next to the file sink's, side by side in one run.

    python bench/postgres_sink.py [--events N] [--batch B] [--repeat R]

Each run hands N realistic outbound-status events to a fresh sink in batches of B (the
pipeline's default batch_max is 512) and reports delivered events per second, counting
from the first send() to the last one's return. The events are the Redis benchmark's
notification with three per message (Queued, Sent, Delivered, a second apart), so every
event is a new row in the events table and each message's row moves forward in the
messages table. Sinks measured, alternating in every round:

    file                the file sink, fsync = "interval" (its default)
    postgres            the postgres sink (one transaction, one statement per batch) against
                        a postgres on loopback with fsync = off (tests/postgres_server.py)
    postgres+fsync      the same against a server with fsync = on and synchronous_commit =
                        on (PostgreSQL's defaults: every batch's COMMIT waits for its WAL flush)
    postgres, resend    the same batches again: every event is a duplicate (uuid conflicts,
                        no state row moves)

The servers are started here (tests/postgres_server.py: free loopback ports, temporary
directories, run as the postgres user when root) and removed at the end; their tables are
created once before the first round and emptied (TRUNCATE) before every run, so no run
times the migration. This machine has 2 cores shared with others, so runs are repeated and
the median is reported. Results go to bench/results/postgres.json.

Besides events/s, each sink's CPU per event in this process is reported (the server's own
work runs in its processes): that is what the sink takes from the daemon's core, to set
against the whole daemon's CPU per event (bench/side_by_side.py). No bar is checked: the
issue that asked for this benchmark set none, and the file sink (writes to the page cache)
is a reference point, not a peer.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from a2pd import events
from a2pd.logging import configure
from a2pd.sinks import Sink, SinkContext
from a2pd.sinks.file import FileOptions, FileSink

# the throwaway server of the sink's tests (run as `python bench/postgres_sink.py`: the
# repository's root is not on the path)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from redis_sink import ENVELOPE  # the Redis benchmark's notification (bench/ is on the path)

from tests.postgres_server import PostgresServer, make_sink, postgres_server

STATUSES = ("Queued", "Sent", "Delivered")
TABLES = "a2pd.events, a2pd.messages, a2pd.batches, a2pd.opt_outs"


def make_events(n: int) -> list[events.Event]:
    made = []
    for i in range(n):
        message, step = divmod(i, len(STATUSES))
        body = {**ENVELOPE["body"], "id": str(90000 + message),  # type: ignore[dict-item]
                "messageStatus": STATUSES[step],
                "lastModifiedTime": f"2026-01-10T08:10:0{step}Z"}
        event = events.decode_notification(
            {**ENVELOPE, "uuid": f"bench-{i:08d}", "body": body}, b"")
        assert not isinstance(event, events.EventError)
        made.append(event)
    return made


class DurableServer(PostgresServer):
    """The tests' server with PostgreSQL's own durability: fsync on (the tests turn it off)."""

    def _argv(self) -> list[str]:
        return [*super()._argv(), "-c", "fsync=on", "-c", "synchronous_commit=on"]


@asynccontextmanager
async def durable_server(directory: Path) -> AsyncIterator[PostgresServer]:
    """A DurableServer for the block, removed at the end (as ``postgres_server``)."""
    server = DurableServer(directory)
    try:
        await server.start()
        conn = await server.connect()
        async with conn:
            found = await (await conn.execute("SHOW fsync")).fetchone()
        assert found == ("on",), found
        yield server
    finally:
        server.remove()


async def prepare(server: PostgresServer) -> None:
    """The sink's tables, created by the sink itself (one event, emptied by every run)."""
    sink = make_sink(server, "bench", sslmode="disable")
    try:
        await sink.send(make_events(1))
    finally:
        await sink.aclose()


Measured = tuple[float, float]


async def timed(sink: Sink, stream: Sequence[events.Event], batch: int) -> Measured:
    """Events/s, and this process's CPU microseconds per event."""
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(stream), batch):
        await sink.send(stream[i:i + batch])
    wall, used = time.perf_counter() - start, time.process_time() - cpu
    return len(stream) / wall, used / len(stream) * 1e6


async def file_run(stream: Sequence[events.Event], batch: int) -> Measured:
    with tempfile.TemporaryDirectory() as tmp:
        sink = FileSink("file", FileOptions(directory=Path(tmp)), SinkContext(Path(tmp)))
        try:
            return await timed(sink, stream, batch)
        finally:
            await sink.aclose()


async def postgres_run(server: PostgresServer, stream: Sequence[events.Event], batch: int,
                       resend: bool = False) -> Measured:
    conn = await server.connect()
    async with conn:
        await conn.execute(f"TRUNCATE {TABLES}")
    sink = make_sink(server, "bench", sslmode="disable")
    try:
        if resend:
            await timed(sink, stream, batch)
        moved = sink.states_moved
        measured = await timed(sink, stream, batch)
        # every event written once; on the resend round every event was a duplicate and no
        # state row moved
        assert sink.written == len(stream), sink.written
        assert sink.duplicates == (len(stream) if resend else 0), sink.duplicates
        assert (sink.states_moved == moved) if resend else sink.states_moved > 0, \
            sink.states_moved
        return measured
    finally:
        await sink.aclose()


async def main(n: int, batch: int, repeat: int) -> dict[str, Measured]:
    configure("warning")  # the sink says "postgres_duplicates_skipped" for every resent batch
    stream = make_events(n)
    rates: dict[str, list[Measured]] = {"file": [], "postgres": [], "postgres+fsync": [],
                                        "postgres, resend": []}
    with tempfile.TemporaryDirectory() as tmp:
        async with postgres_server(Path(tmp) / "plain") as plain, \
                durable_server(Path(tmp) / "fsync") as durable:
            for server in (plain, durable):
                await prepare(server)
            runs: dict[str, Callable[[], object]] = {
                "file": lambda: file_run(stream, batch),
                "postgres": lambda: postgres_run(plain, stream, batch),
                "postgres+fsync": lambda: postgres_run(durable, stream, batch),
                "postgres, resend": lambda: postgres_run(plain, stream, batch, resend=True),
            }
            for _ in range(repeat):
                for name, run in runs.items():
                    rates[name].append(await run())  # type: ignore[misc]
    return {name: (statistics.median(r for r, _ in values),
                   statistics.median(c for _, c in values)) for name, values in rates.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    result = anyio.run(main, args.events, args.batch, args.repeat)
    print(f"sink throughput, {args.events} events in batches of {args.batch}, "
          f"median of {args.repeat} runs")
    for name, (rate, cpu) in result.items():
        print(f"  {name:<17} {rate:>10,.0f} events/s  {cpu:6.1f} us CPU per event here")
    ratio = result["postgres"][0] / result["file"][0]
    print(f"postgres / file: {ratio:.2f}")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "postgres.json").write_text(json.dumps(
        {"events": args.events, "batch": args.batch, "repeat": args.repeat,
         "events_per_second": {name: rate for name, (rate, _) in result.items()},
         "cpu_us_per_event": {name: cpu for name, (_, cpu) in result.items()},
         "postgres_over_file": ratio}, indent=2) + "\n")
