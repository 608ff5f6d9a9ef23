"""Journal throughput: events/s committed, with and without fsync, side by side in one run.

    python bench/journal_throughput.py [--events N] [--repeat R]

Each run appends N realistic outbound-status records (the JSON a sink would receive) to a
fresh journal in a temporary directory, through the same group commit the daemon uses, and
reports committed events per second. Runs alternate between the modes and the median is
printed, since this machine is noisy. Results are also written to bench/results/journal.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import anyio

from a2pd.journal import Journal, JournalOptions

RECORD = json.dumps({
    "kind": "outbound", "uuid": "3301827364519200002",
    "event": "/restapi/v1.0/account/400123456789/a2p-sms/messages?direction=Outbound",
    "timestamp": "2026-01-10T08:10:02Z", "subscriptionId": "5e1b2c3d-0000-4000-8000-00000000abcd",
    "ownerId": "400123456789",
    "body": {"id": "90011", "batchId": "a1b2c3d4-0000-4000-8000-0000000000b1",
             "from": "+16505550111", "to": ["+14155550122"],
             "text": "Your appointment is tomorrow at 10:00", "direction": "Outbound",
             "messageStatus": "Delivered", "segmentCount": 1, "cost": 0.007,
             "creationTime": "2026-01-10T08:09:56Z", "lastModifiedTime": "2026-01-10T08:10:01Z"},
}).encode()


async def one_run(events: int, fsync: bool, commit_interval: float) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        journal = await Journal.open(Path(tmp) / "journal.db", JournalOptions(
            commit_interval=commit_interval, commit_max=1000, fsync=fsync, max_events=0,
            max_age=None, dedup_window=86400.0))
        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(journal.run_committer)
            for i in range(events):
                await journal.append(f"u{i}", "outbound", ["archive"], RECORD)
            await journal.commit()
            tg.cancel_scope.cancel()
        elapsed = time.perf_counter() - start
        assert journal.counters["committed"] == events
        await journal.aclose()
    return events / elapsed


async def main(events: int, repeat: int) -> dict[str, float]:
    rates: dict[str, list[float]] = {"fsync=off": [], "fsync=on": []}
    for _ in range(repeat):
        rates["fsync=off"].append(await one_run(events, False, 0.05))
        rates["fsync=on"].append(await one_run(events, True, 0.05))
    return {mode: statistics.median(values) for mode, values in rates.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    result = anyio.run(main, args.events, args.repeat)
    print(f"journal commit throughput, {args.events} events, median of {args.repeat} runs")
    for mode, rate in result.items():
        print(f"  {mode:<10} {rate:>10,.0f} events/s")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "journal.json").write_text(json.dumps(
        {"events": args.events, "repeat": args.repeat, "events_per_second": result},
        indent=2) + "\n")
