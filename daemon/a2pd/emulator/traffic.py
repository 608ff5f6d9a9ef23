"""Realistic, seeded High Volume SMS traffic for the emulator (and the demo).

:class:`TrafficPlanner` is pure: from a seeded :class:`random.Random` it plans A2P flows as
``(kind, body)`` events with simulated timestamps:

- a batch from one of a few sender numbers goes ``Processing`` (batchSize, processedCount 0)
  and ends ``Completed`` (processedCount, cost) after all its messages reached a final state;
- every outbound message goes ``Queued`` → ``Sent`` → ``Delivered``, or ``Sent`` →
  ``DeliveryFailed``, or ``Queued`` → ``SendingFailed``, with realistic ``errorCode`` values;
- inbound replies (``direction: Inbound``, ``messageStatus: Delivered``, no ``batchId``);
- STOP / START events on the opt-outs filter (``active`` true / false).

:class:`Traffic` publishes a plan through the emulator (``emu.traffic``), at a given rate or
as fast as possible, once (:meth:`Traffic.run`) or in the background (:meth:`Traffic.start`).
Numbers are E.164 from the 555-01xx fiction range. Never used for secrets (``random``).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from a2pd.emulator.errors import EmulatorConfigError

SENDERS = ("+16505550100", "+13125550101", "+14155550102")
_AREAS = ("212", "646", "718", "917", "415", "510", "617", "305", "206", "512")
RECIPIENTS = tuple(f"+1{area}55501{n:02d}" for area in _AREAS for n in range(10, 100, 7))
_TEXTS = (
    "Your appointment is tomorrow at 10:00. Reply STOP to opt out.",
    "Your order #{n} has shipped and arrives Thursday.",
    "Your verification code is {n}.",
    "Reminder: your payment of $42.00 is due on the 15th.",
    "Thanks for visiting! Tell us how we did: https://example.com/s/{n}",
    "Flash sale today only: 20% off everything in store and online. "
    "Show this message at checkout or use code SAVE20 on the website. "
    "Offer ends at midnight; some exclusions apply. Reply STOP to opt out.",
)
_REPLIES = ("Yes, confirmed", "Thank you for the message", "Can we move it to 11?", "OK",
            "Who is this?")
#: upstream / carrier failures after sending, and RingCentral-side failures before it
DELIVERY_FAILURES = ("SMS-CAR-411", "SMS-UP-410", "SMS-CAR-104", "SMS-CAR-199")
SENDING_FAILURES = ("SMS-RC-503", "SMS-UP-410", "SMS-RC-410")
COST_PER_SEGMENT = 0.007
FINAL_STATUSES = frozenset({"Delivered", "DeliveryFailed", "SendingFailed"})


@dataclass(frozen=True)
class TrafficEvent:
    """One planned event: the ``emu.publish`` kind, its body and its simulated time."""

    kind: str
    body: dict[str, Any]
    at: float


def iso_micros(wall: float) -> str:
    """``2026-01-10T08:09:55.100000Z``, the A2P body time format of the seeds."""
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class TrafficPlanner:
    """Plans A2P traffic deterministically from a seed (and a start time)."""

    def __init__(self, seed: int = 0, now: Callable[[], float] = time.time) -> None:
        self.rng = random.Random(seed)
        self._now = now
        self._clock = 0.0
        self._message_id = 7000 + self.rng.randrange(1000)
        self._opted_out: set[tuple[str, str]] = set()

    def plan(self, *, batches: int = 1, batch_size: int = 5, inbound: int = 0,
             optouts: int = 0) -> list[TrafficEvent]:
        """The events of ``batches`` batches plus ``inbound`` replies and ``optouts`` STOP/START."""
        if min(batches, batch_size, inbound, optouts) < 0:
            raise EmulatorConfigError("traffic counts must be >= 0")
        start = max(self._clock, self._now())
        events: list[TrafficEvent] = []
        t = start
        for _ in range(batches):
            events += self._batch(t, batch_size)
            t += self.rng.uniform(0.1, 0.5)
        end = max([e.at for e in events], default=start) + 0.001
        for at in sorted(self.rng.uniform(start, end) for _ in range(inbound)):
            events.append(self._inbound(at))
        # in time order, so each STOP/START pair alternates as planned
        for at in sorted(self.rng.uniform(start, end) for _ in range(optouts)):
            events.append(self._optout(at))
        events.sort(key=lambda e: e.at)  # stable: each message keeps its own order
        self._clock = max([e.at for e in events], default=start) + 0.001
        return events

    def _batch(self, t0: float, size: int) -> list[TrafficEvent]:
        rng = self.rng
        batch_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        sender = rng.choice(SENDERS)
        created = iso_micros(t0)
        events = [TrafficEvent("batch", {
            "id": batch_id, "from": sender, "batchSize": size, "processedCount": 0,
            "status": "Processing", "creationTime": created, "lastModifiedTime": created,
        }, t0)]
        total_cost = 0.0
        last = t0
        for recipient in rng.sample(RECIPIENTS, min(size, len(RECIPIENTS))) + [
                rng.choice(RECIPIENTS) for _ in range(max(0, size - len(RECIPIENTS)))]:
            flow = self._outbound(batch_id, sender, recipient, t0 + rng.uniform(0.01, 0.5))
            events += flow
            total_cost += float(flow[-1].body["cost"])
            last = max(last, flow[-1].at)
        done = last + rng.uniform(0.05, 0.5)
        events.append(TrafficEvent("batch", {
            "id": batch_id, "from": sender, "batchSize": size, "processedCount": size,
            "status": "Completed", "creationTime": created, "lastModifiedTime": iso_micros(done),
            "cost": round(total_cost, 4),
        }, done))
        return events

    def _outbound(self, batch_id: str, sender: str, recipient: str,
                  created: float) -> list[TrafficEvent]:
        rng = self.rng
        self._message_id += 1
        text = rng.choice(_TEXTS).format(n=rng.randrange(100000, 999999))
        segments = max(1, math.ceil(len(text) / 160))
        base = {
            "id": str(self._message_id), "batchId": batch_id, "from": sender,
            "to": [recipient], "text": text, "direction": "Outbound",
            "segmentCount": segments, "creationTime": iso_micros(created),
        }
        roll = rng.random()
        steps: list[tuple[str, float, str | None]] = [("Queued", created, None)]
        sent_at = created + rng.uniform(0.05, 0.6)
        if roll < 0.06:
            steps.append(("SendingFailed", sent_at, rng.choice(SENDING_FAILURES)))
        else:
            steps.append(("Sent", sent_at, None))
            final_at = sent_at + rng.uniform(0.1, 2.0)
            if roll < 0.15:
                steps.append(("DeliveryFailed", final_at, rng.choice(DELIVERY_FAILURES)))
            else:
                steps.append(("Delivered", final_at, None))
        events = []
        for status, at, error in steps:
            charged = status not in ("Queued", "SendingFailed")
            body = {**base, "messageStatus": status,
                    "cost": round(segments * COST_PER_SEGMENT, 4) if charged else 0.0,
                    "lastModifiedTime": iso_micros(at)}
            if error is not None:
                body["errorCode"] = error
            events.append(TrafficEvent("message", body, at))
        return events

    def _inbound(self, at: float) -> TrafficEvent:
        rng = self.rng
        self._message_id += 1
        text = rng.choice(_REPLIES)
        stamp = iso_micros(at)
        return TrafficEvent("message", {
            "id": str(self._message_id), "from": rng.choice(RECIPIENTS),
            "to": [rng.choice(SENDERS)], "text": text, "direction": "Inbound",
            "messageStatus": "Delivered", "segmentCount": 1, "cost": COST_PER_SEGMENT,
            "creationTime": stamp, "lastModifiedTime": stamp,
        }, at)

    def _optout(self, at: float) -> TrafficEvent:
        pair = (self.rng.choice(SENDERS), self.rng.choice(RECIPIENTS))
        active = pair not in self._opted_out  # STOP unless already out, then START
        if active:
            self._opted_out.add(pair)
        else:
            self._opted_out.discard(pair)
        return TrafficEvent("optout", {"from": pair[0], "to": pair[1], "active": active}, at)


class Publisher(Protocol):
    """What the traffic generator publishes through (the emulator)."""

    async def publish(self, kind: str, body: dict[str, Any]) -> int: ...


class Traffic:
    """Publishes planned traffic through the emulator, once or in the background."""

    def __init__(self, publisher: Publisher, seed: int = 0,
                 now: Callable[[], float] = time.time) -> None:
        self.planner = TrafficPlanner(seed, now)
        self._now = now
        self._publisher = publisher
        self._task: asyncio.Task[None] | None = None
        #: events published so far (not notifications: one event may match many)
        self.published = 0

    async def run(self, *, batches: int = 1, batch_size: int = 5, inbound: int = 0,
                  optouts: int = 0, rate: float | None = None) -> int:
        """Publish one plan; its size. With ``rate`` (events/s) it is paced and no event goes
        out before its own simulated time (bodies never come from the future); None: as fast
        as possible."""
        if rate is not None and rate <= 0:
            raise EmulatorConfigError("rate must be > 0 events per second, or None")
        events = self.planner.plan(batches=batches, batch_size=batch_size, inbound=inbound,
                                   optouts=optouts)
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        for event in events:
            if rate is not None:
                delay = max(next_at - loop.time(), event.at - self._now())
                if delay > 0:
                    await asyncio.sleep(delay)  # pacing, not waiting for readiness
                next_at += 1.0 / rate
            await self._publisher.publish(event.kind, event.body)
            self.published += 1
        return len(events)

    @property
    def running(self) -> bool:
        """Whether background traffic is on."""
        return self._task is not None and not self._task.done()

    def start(self, rate: float = 5.0) -> None:
        """Start endless background traffic at ``rate`` events/s (needs a running loop)."""
        if rate <= 0:
            raise EmulatorConfigError("rate must be > 0 events per second")
        if self.running:
            return
        self._task = asyncio.get_running_loop().create_task(self._forever(rate),
                                                            name="emulator-traffic")

    def stop(self) -> None:
        """Ask background traffic to stop (``aclose`` waits for it)."""
        if self._task is not None:
            self._task.cancel()

    async def aclose(self) -> None:
        """Stop background traffic and wait until it has stopped."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        await asyncio.wait({task})  # never swallows a cancellation of the caller
        if not task.cancelled():
            task.result()  # a crash of the generator surfaces here

    async def _forever(self, rate: float) -> None:
        rng = self.planner.rng
        while True:
            await self.run(batches=1, batch_size=rng.randint(1, 6),
                           inbound=rng.randint(0, 2), optouts=int(rng.random() < 0.3),
                           rate=rate)
