"""Soak: the real daemon process against the documented platform, above its recovery buffer.

A2P traffic at 200 and at 1,000 events/s (batches Processing → Completed, outbound messages
Queued → Sent → final, inbound replies, opt-outs and opt-ins) through a seeded schedule of
six faults 2-4 s apart: three outages of 1-10 s (connections refused, the socket dropped:
every one overflows the 100-notification replay), a failed recovery, two SIGKILLs of the
daemon with a restart 1-5 s later. The emulator keeps the documented limits: the Light
rate group (time scaled 30x), short list pages, the subscription limit, the gateway's
pings. At the end:

- every final state of every message, batch and opt-out pair the emulator published is in
  the file sink;
- nothing is invented: every state in the sink was published;
- no state twice: a state reaches the sink under one uuid only (as many times as it was
  published, for opt-outs that toggle); the same record again is at-least-once delivery
  after a SIGKILL (bounded by kills x batch_max) and is counted apart.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import anyio
import pytest
from anyio.abc import Process

from a2pd.config import DeliveryConfig
from a2pd.emulator import Emulator
from a2pd.emulator.traffic import FINAL_STATUSES, RECIPIENTS, SENDERS, iso_micros
from tests.harness import emulator, read_records, settings_text

#: the delivery batch size (DeliveryConfig's default): what one kill may deliver again
BATCH_MAX = DeliveryConfig().batch_max
#: an outage or a restart never lasts longer than this
FAULT_MAX = 10.0


@dataclass
class Flows:
    """Traffic stamped with the wall time it is published at (creation times too)."""

    rng: random.Random
    next_id: int = 100_000
    #: message id → (body so far, the statuses still to come)
    messages: dict[str, tuple[dict[str, Any], list[str]]] = field(default_factory=dict)
    #: batch id → (body, ids of its messages not final yet)
    batches: dict[str, tuple[dict[str, Any], set[str]]] = field(default_factory=dict)
    opted_out: set[tuple[str, str]] = field(default_factory=set)
    #: content keys published, with how often
    published: Counter[str] = field(default_factory=Counter)
    #: batches whose messages are all final, to be published Completed
    completions: list[dict[str, Any]] = field(default_factory=list)

    def next_event(self, wall: float) -> tuple[str, dict[str, Any]]:
        """The next event: a message moves on, a batch starts or completes, an inbound
        reply, an opt-out or opt-in."""
        rng, stamp = self.rng, iso_micros(wall)
        roll = rng.random()
        if self.messages and roll < 0.7:
            msg_id = rng.choice(list(self.messages))
            body, steps = self.messages[msg_id]
            status = steps.pop(0)
            body = {**body, "messageStatus": status, "lastModifiedTime": stamp}
            if status in ("DeliveryFailed", "SendingFailed"):
                body["errorCode"] = "SMS-CAR-411"
            if steps:
                self.messages[msg_id] = (body, steps)
            else:
                del self.messages[msg_id]
                self._message_final(body)
            return self._out("message", body)
        if roll < 0.8 or not self.messages:
            return self._start_batch(stamp)
        if roll < 0.92:
            self.next_id += 1
            return self._out("message", {
                "id": str(self.next_id), "from": rng.choice(RECIPIENTS),
                "to": [rng.choice(SENDERS)], "text": "OK", "direction": "Inbound",
                "messageStatus": "Delivered", "segmentCount": 1, "cost": 0.007,
                "creationTime": stamp, "lastModifiedTime": stamp})
        pair = (rng.choice(SENDERS), rng.choice(RECIPIENTS))
        active = pair not in self.opted_out
        (self.opted_out.add if active else self.opted_out.discard)(pair)
        return self._out("optout", {"from": pair[0], "to": pair[1], "active": active})

    def _start_batch(self, stamp: str) -> tuple[str, dict[str, Any]]:
        rng = self.rng
        batch_id = f"b{rng.getrandbits(48):x}"
        sender = rng.choice(SENDERS)
        size = rng.randint(1, 8)
        members = set()
        for _ in range(size):
            self.next_id += 1
            msg_id = str(self.next_id)
            roll = rng.random()
            steps = ["Sent", "SendingFailed"] if roll < 0.05 else \
                ["Sent", "DeliveryFailed"] if roll < 0.15 else ["Sent", "Delivered"]
            if steps[1] == "SendingFailed":
                steps = ["SendingFailed"]
            self.messages[msg_id] = ({
                "id": msg_id, "batchId": batch_id, "from": sender,
                "to": [rng.choice(RECIPIENTS)], "text": "Your code is 123456",
                "direction": "Outbound", "messageStatus": "Queued", "segmentCount": 1,
                "cost": 0.007, "creationTime": stamp, "lastModifiedTime": stamp}, steps)
            members.add(msg_id)
        body = {"id": batch_id, "from": sender, "batchSize": size, "processedCount": 0,
                "status": "Processing", "creationTime": stamp, "lastModifiedTime": stamp}
        self.batches[batch_id] = (body, members)
        # the Queued states are not published one by one: the batch's creation stands for
        # them (the platform may well skip them too); their later states are
        return self._out("batch", body)

    def _message_final(self, body: dict[str, Any]) -> None:
        batch_id = body.get("batchId")
        if batch_id is None or batch_id not in self.batches:
            return
        batch, members = self.batches[batch_id]
        members.discard(body["id"])
        if not members:
            del self.batches[batch_id]
            self.completions.append({**batch, "status": "Completed",
                                     "processedCount": batch["batchSize"]})

    def _out(self, kind: str, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        self.published[state_key(kind, body)] += 1
        return kind, body

    def completed(self, wall: float) -> list[tuple[str, dict[str, Any]]]:
        """Batches whose messages are all final, stamped now."""
        done, self.completions = self.completions, []
        return [self._out("batch", {**body, "lastModifiedTime": iso_micros(wall)})
                for body in done]


def state_key(kind: str, body: dict[str, Any]) -> str:
    """A state's identity (the daemon's content key, events.content_key)."""
    if kind in ("optout", "optin"):
        return f"optout:{body['from']}:{body['to']}:{str(body['active']).lower()}"
    if kind == "batch":
        return f"batch:{body['id']}:{body['status']}:{body['lastModifiedTime']}"
    return f"message:{body['id']}:{body['messageStatus']}:{body['lastModifiedTime']}"


def final_keys(emu: Emulator) -> set[str]:
    """The final state of every object, as the platform's store holds it."""
    keys = {state_key("message", body) for body in emu.a2p.messages.values()
            if body["messageStatus"] in FINAL_STATUSES or body["direction"] == "Inbound"}
    keys |= {state_key("batch", body) for body in emu.a2p.batches.values()
             if body["status"] == "Completed"}
    keys |= {state_key("optout", {"from": row["from"], "to": row["to"],
                                  "active": row["optStatus"] == "OptOut"})
             for row in emu.a2p.optouts.values()}
    return keys


class Daemon:
    """``a2pd run`` as its own process; its log (warnings and errors) in a file."""

    def __init__(self, config: Path, log: IO[bytes]) -> None:
        self.config = config
        self.log = log
        self.process: Process | None = None
        self.kills = 0

    async def start(self, emu: Emulator) -> None:
        before = emu.gateway.subscriptions_created + \
            sum(1 for c in emu.gateway.connection_infos() if c.recovered)
        self.process = await anyio.open_process(
            [sys.executable, "-m", "a2pd", "run", "-c", str(self.config)],
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=self.log)
        await emu.wait_for(lambda: emu.gateway.subscriptions_created + sum(
            1 for c in emu.gateway.connection_infos() if c.recovered) > before, timeout=30)

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        assert await self.process.wait() == -signal.SIGKILL
        self.kills += 1

    async def stop(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(60):
            assert await self.process.wait() == 0


@pytest.mark.parametrize("rate", [200, 1000])
async def test_soak_loses_nothing_against_the_documented_platform(
        tmp_path: Path, rate: int) -> None:
    """Every final state published at ``rate`` events/s through outages of 1-10 s, failed
    recoveries and SIGKILLs reaches the sink; nothing is invented; no state twice."""
    rng = random.Random(20261130 + rate)
    emu = emulator(seed=rate, a2p_rate_limit=50, a2p_rate_window=2.0, a2p_rate_penalty=2.0,
                   a2p_page_limit=250, max_subscriptions=5, ping_interval=1.0,
                   pong_timeout=3.0)
    flows = Flows(rng)
    faults: Counter[str] = Counter()
    config = tmp_path / "a2pd.toml"
    sinks = f"""
[sinks.archive]
type = "file"
directory = "{tmp_path / 'events'}"
path = "{{kind}}.jsonl"
fsync = "never"
"""
    async with emu.running():
        config.write_text(settings_text(
            emu, tmp_path, sinks=sinks, log_level="warning",
            connection={"heartbeat_interval": 1.0, "heartbeat_timeout": 2.0},
            extra="[backfill]\nmargin = 5\nretry_initial = 0.1\nretry_max = 1\n"))
        with (tmp_path / "a2pd.log").open("wb") as log:
            daemon = Daemon(config, log)
            await daemon.start(emu)
            stop_traffic = anyio.Event()

            async def traffic() -> None:
                sent = 0
                began = anyio.current_time()
                while not stop_traffic.is_set():
                    for kind, body in flows.completed(wall()):
                        await emu.publish(kind, body)
                    kind, body = flows.next_event(wall())
                    await emu.publish(kind, body)
                    sent += 1
                    ahead = began + sent / rate - anyio.current_time()
                    if ahead > 0:
                        await anyio.sleep(ahead)

            async def chaos() -> None:
                # its own generator: the schedule does not depend on the traffic's timing
                plan = random.Random(rate)
                schedule = ["outage", "outage", "outage", "failed-recovery", "kill", "kill"]
                plan.shuffle(schedule)
                for fault in schedule:
                    await anyio.sleep(plan.uniform(2.0, 4.0))
                    faults[fault] += 1
                    if fault == "outage":
                        emu.refuse_connections()
                        await emu.drop_connections(mode="abrupt")
                        await anyio.sleep(plan.uniform(1.0, FAULT_MAX))
                        emu.accept_connections()
                    elif fault == "failed-recovery":
                        emu.fail_next_recovery()
                        await emu.drop_connections(mode="abrupt")
                    else:
                        await daemon.kill()
                        await anyio.sleep(plan.uniform(1.0, 5.0))
                        await daemon.start(emu)
                stop_traffic.set()

            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(traffic)
                    await chaos()
                expected = final_keys(emu)
                with anyio.fail_after(180):
                    while not expected <= sink_keys(tmp_path):
                        await anyio.sleep(0.5)
                await daemon.stop()
            except BaseException:
                if daemon.process is not None and daemon.process.returncode is None:
                    daemon.process.send_signal(signal.SIGKILL)
                    await daemon.process.wait()
                missing = final_keys(emu) - sink_keys(tmp_path)
                print(f"\nmissing {len(missing)}: {sorted(missing)[:10]}")
                print((tmp_path / "a2pd.log").read_text()[-6000:])
                raise
    records = read_records(tmp_path / "events")
    by_key: dict[str, set[str]] = {}
    copies: Counter[tuple[str, str]] = Counter()
    for record in records:
        key = state_key(record["kind"], record["body"])
        by_key.setdefault(key, set()).add(record["uuid"])
        copies[(key, record["uuid"])] += 1
    invented = set(by_key) - set(flows.published)
    twice = {k: len(u) for k, u in by_key.items() if len(u) > flows.published[k]}
    redelivered = sum(n - 1 for n in copies.values())
    backfilled = sum(1 for r in records if r.get("backfilled"))
    final = final_keys(emu)
    print(f"\nrate {rate}/s: published {sum(flows.published.values())} states "
          f"({len(final)} final), notifications {len(emu.generated)}, in the sink "
          f"{len(records)} ({backfilled} backfilled), final states missing "
          f"{len(final - set(by_key))}, invented {len(invented)}, a state under two uuids "
          f"{len(twice)}, redelivered after a kill {redelivered} (bound {daemon.kills} x "
          f"{BATCH_MAX}), faults {dict(faults)}, kills {daemon.kills}, list calls "
          f"{len(emu.a2p.calls)} ({sum(1 for c in emu.a2p.calls if c[1] == 429)} x 429)")
    for key in sorted(twice)[:5]:
        print("under two uuids:", key, sorted(by_key[key]), "published", flows.published[key])
    assert final <= set(by_key)
    assert not invented
    assert not twice
    assert redelivered <= daemon.kills * BATCH_MAX


def sink_keys(tmp_path: Path) -> set[str]:
    """The states in the file sink so far (a line being written is left for later)."""
    keys = set()
    for path in (tmp_path / "events").rglob("*.jsonl"):
        for line in path.read_bytes().split(b"\n"):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            keys.add(state_key(record["kind"], record["body"]))
    return keys


def wall() -> float:
    """Wall time for the bodies' stamps."""
    return time.time()
