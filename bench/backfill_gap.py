"""A large gap backfilled through the platform's documented rate limit: how long, how many calls.

    python bench/backfill_gap.py [--messages 30000] [--page-limit 1000 250] [--margin 60]

For each page limit: the bundled emulator with the documented "Light" group (50 calls per
user and app in a sliding 60 s window, a 60 s penalty that every refused call restarts) and
list pages of at most PAGE_LIMIT records; an in-process daemon (file sink) receives a few
live events, then its recovery fails while N outbound messages (a status each, 200 batches)
and one opt-out are published. Measured from the gap being recorded to the listing's
`gap_backfilled`: wall time, list calls (by status), rate-limit waits and 429s, and whether
every lost message arrived once. Results go to bench/results/backfill_gap.json.

This runs at the platform's real pace (minutes when the calls exceed 50): nothing is scaled.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from a2pd import config
from a2pd.app import Daemon
from a2pd.emulator import Emulator
from a2pd.emulator.config import EmulatorConfig
from a2pd.logging import configure

RESULTS = Path(__file__).parent / "results" / "backfill_gap.json"


def stamp(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def settings(emu: Emulator, directory: Path, margin: float) -> config.Settings:
    text = f"""
[platform]
server = "{emu.base_url}"
client_id = "{emu.config.client_id}"
client_secret = "{emu.config.client_secret}"
jwt = "{emu.config.jwt}"

[state]
directory = "{directory / 'state'}"

[ops]
listen = ""

[log]
level = "warning"

[backfill]
margin = {margin}

[sinks.archive]
type = "file"
directory = "{directory / 'events'}"
path = "{{kind}}.jsonl"

[default_route]
sinks = ["archive"]
"""
    return config.loads(text, source="bench", env={})


async def one_run(messages: int, page_limit: int, margin: float) -> dict[str, Any]:
    emu = Emulator(EmulatorConfig(a2p_page_limit=page_limit))
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        async with emu.running():
            daemon = Daemon(settings(emu, directory, margin))
            async with anyio.create_task_group() as tg:
                tg.start_soon(partial(daemon.run, handle_signals=False))
                with anyio.fail_after(30):
                    await daemon.subscribed.wait()
                assert daemon.pipeline is not None
                counters = daemon.pipeline.counters
                now = time.time()
                await emu.publish("message", outbound("live-0", now, "b-live"))
                with anyio.fail_after(30):
                    await counters.wait_for("delivered.archive", 1)
                emu.fail_next_recovery()
                await emu.drop_connections(mode="abrupt")
                for i in range(messages):
                    await emu.publish("message", outbound(f"lost-{i}", time.time(),
                                                          f"b-{i % 200}"))
                await emu.publish("optout", {"from": "+16505550111", "to": "+14155550100",
                                             "active": True})
                with anyio.fail_after(60):
                    await counters.wait_for("gaps_recorded", 1)
                began = time.monotonic()
                with anyio.fail_after(1800):
                    await counters.wait_for("gaps_backfilled", 1)
                took = time.monotonic() - began
                with anyio.fail_after(300):
                    await counters.wait_for("delivered.archive", 1 + messages + 1)
                snapshot = counters.snapshot()
                daemon.request_stop()
        records = [json.loads(line) for path in (directory / "events").rglob("*.jsonl")
                   for line in path.read_text().splitlines()]
    ids = [r["body"].get("id") for r in records if r["kind"] == "outbound"]
    statuses: dict[str, int] = {}
    for _, status, _ in emu.a2p.calls:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {
        "messages": messages, "page_limit": page_limit, "margin": margin,
        "seconds": round(took, 1), "calls": len(emu.a2p.calls), "calls_by_status": statuses,
        "paced_waits": snapshot.get("backfill_paced", 0),
        "rate_limited": snapshot.get("backfill_rate_limited", 0),
        "backfilled": sum(v for k, v in snapshot.items() if k.startswith("backfilled.")),
        "outbound_in_sink": len(ids), "outbound_unique": len(set(ids)),
        "every_lost_message_once": len(ids) == len(set(ids)) == messages + 1,
    }


def outbound(msg_id: str, wall: float, batch: str) -> dict[str, Any]:
    return {"id": msg_id, "batchId": batch, "from": "+16505550111", "to": ["+14155550122"],
            "text": "Your code is 123456", "direction": "Outbound", "messageStatus": "Delivered",
            "segmentCount": 1, "cost": 0.007, "creationTime": stamp(wall),
            "lastModifiedTime": stamp(wall)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--page-limit", type=int, nargs="+", default=[1000, 250])
    parser.add_argument("--margin", type=float, default=60.0)
    args = parser.parse_args()
    configure(level="warning", fmt="console")
    runs = []
    for page_limit in args.page_limit:
        result = anyio.run(one_run, args.messages, page_limit, args.margin)
        print(json.dumps(result))
        runs.append(result)
    RESULTS.write_text(json.dumps({"date": stamp(time.time()), "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
