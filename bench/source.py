"""The benchmark's event source: the bundled emulator in a process of its own.

    python bench/source.py [--seed N]

Prints ``{"server": URL}`` once it listens, then takes one JSON command per line on stdin
and answers each with one JSON line on stdout (same ``id``); commands run concurrently:

    {"id": 1, "op": "subscribed"}                    wait for a subscribed socket, encode
    {"id": 2, "op": "send", "count": N, "rate": R}   send N events (R events/s, or null:
                                                     as fast as the socket takes them)
    {"id": 3, "op": "drop"}                          drop every socket (no close frame)
    {"id": 4, "op": "cpu"}                           this process' CPU seconds so far

Events come from the emulator's seeded traffic planner — a realistic High Volume SMS mix:
batches going Processing → Completed, every message Queued → Sent → Delivered or failing,
inbound replies, STOP/START — and go out through the emulator's fast path
(``daemon.emulator.burst``): frames encoded before they are needed, stamped with the send
time, written in chunks under the transport's flow control.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from typing import Any

from a2pd.emulator import Emulator, EmulatorConfig
from a2pd.emulator.burst import Burst
from a2pd.emulator.traffic import TrafficPlanner


def pool(seed: int) -> list[tuple[str, dict[str, Any]]]:
    """A realistic A2P mix: 40 batches of 100 messages, inbound replies, STOP/START."""
    planned = TrafficPlanner(seed).plan(batches=40, batch_size=100, inbound=300, optouts=60)
    return [(event.kind, event.body) for event in planned]


def mix(events: list[tuple[str, dict[str, Any]]]) -> dict[str, int]:
    """How many events of each kind (outbound/inbound messages told apart)."""
    return dict(Counter(body.get("direction", kind).lower() for kind, body in events))


async def main(seed: int) -> None:
    emu = Emulator(EmulatorConfig(seed=seed, ping_interval=None))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    events = pool(seed)
    burst = Burst(emu, events)
    tasks: set[asyncio.Task[None]] = set()

    def answer(doc: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(doc) + "\n")
        sys.stdout.flush()

    async def handle(command: dict[str, Any]) -> None:
        op, reply = command["op"], {"id": command.get("id")}
        if op == "subscribed":
            await emu.wait_for_subscription(timeout=60)
            reply["sockets"] = burst.prepare()
        elif op == "send":
            report = await burst.send(int(command["count"]), command.get("rate"))
            reply.update(events=report.events, frames=report.frames,
                         first_ns=report.first_ns, last_ns=report.last_ns)
        elif op == "drop":
            reply["dropped_ns"] = time.monotonic_ns()
            reply["dropped"] = await emu.drop_connections("abrupt")
        elif op == "cpu":
            times = os.times()
            reply["cpu"] = times.user + times.system
        answer(reply)

    async with emu.running():
        answer({"server": emu.base_url, "pool": len(events), "mix": mix(events)})
        while line := await reader.readline():
            task = asyncio.create_task(handle(json.loads(line)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7)
    asyncio.run(main(parser.parse_args().seed))
