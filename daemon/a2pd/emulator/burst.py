"""A fast path for benchmarks: notification frames encoded up front, written in bulk.

The normal path (``Emulator.publish``) builds each notification's JSON, queues it per socket
and writes it through the ASGI layer, with bookkeeping for tests (``sent``, waiters): tens of
microseconds a frame, which would make the emulator the bottleneck of a benchmark. Here a
whole burst is encoded before it is sent, as complete server-to-client WebSocket frames
(RFC 6455, unmasked text frames), and written straight to each subscribed socket's
transport in chunks, obeying the transport's flow control.

Frames follow PROTOCOL.md §2.7 exactly as the gateway writes them (``ServerNotification``
header with ``messageId`` = ``uuid``, the envelope ``uuid``/``event``/``timestamp``/
``subscriptionId``/``ownerId``/``body``), for the subscription active on each socket and the
first of its filters that matches, plus one extra envelope field, ``benchSentNs``: the
``time.monotonic_ns()`` at which the chunk holding the frame was written (a fixed-width
string patched in at send time), so a consumer's latency can be measured end to end.

What this path does not do, on purpose: burst notifications get no ``sequence``, are not
kept in the session's recovery buffer, and are not recorded in ``emu.sent`` or
``emu.generated``; a recovery replays only what the normal path published.

This module never imports from the rest of ``a2pd`` (like the whole emulator).
"""

from __future__ import annotations

import asyncio
import json
import random
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from a2pd.emulator.errors import EmulatorConfigError
from a2pd.emulator.filters import EventKind, first_match
from a2pd.emulator.gateway import Subscription, iso_millis
from a2pd.emulator.server import Emulator

#: the envelope field carrying the send time (nanoseconds of the monotonic clock)
STAMP_FIELD = "benchSentNs"
STAMP_WIDTH = 19
#: digits of a burst uuid after the run prefix: the event's index in the burst
INDEX_WIDTH = 12
#: frames per chunk at most (one ``transport.write`` each)
CHUNK = 64
#: a new connection gets burst frames only this long after it opened, once its writer
#: queue is empty (ConnectionDetails and any replay are written first)
SETTLE = 0.05
_KINDS = ("batch", "message", "optout")
_INDEX = "\x00i\x00"
_STAMP = "\x00s\x00"


@dataclass(frozen=True, slots=True)
class FrameTemplate:
    """One complete WebSocket frame, cut where the uuid's index and the send time go."""

    segments: tuple[bytes, ...]
    #: what goes between segments: "i" the index digits, "s" the stamp digits
    holes: tuple[str, ...]

    def render(self, index: bytes, stamp: bytes) -> bytes:
        """The frame for ``index`` (``INDEX_WIDTH`` digits) sent at ``stamp``."""
        parts = [self.segments[0]]
        for hole, segment in zip(self.holes, self.segments[1:], strict=True):
            parts.append(index if hole == "i" else stamp)
            parts.append(segment)
        return b"".join(parts)


def ws_text_frame(payload: bytes) -> bytes:
    """An unmasked, final RFC 6455 text frame (what a server sends) carrying ``payload``."""
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", 0x81, size)
    elif size < 1 << 16:
        head = struct.pack("!BBH", 0x81, 126, size)
    else:
        head = struct.pack("!BBQ", 0x81, 127, size)
    return head + payload


def stamp_now() -> bytes:
    """The current monotonic time as the fixed-width digits a frame carries."""
    return b"%019d" % time.monotonic_ns()


def index_digits(index: int) -> bytes:
    """An event index as the fixed-width digits of its uuid."""
    return b"%012d" % index


def run_prefix() -> str:
    """A random 7-digit uuid prefix: burst uuids never repeat another run's."""
    return str(random.SystemRandom().randrange(10**6, 10**7))


def encode_templates(events: Iterable[tuple[str, dict[str, Any]]], subscription: Subscription,
                     owner_id: str, prefix: str, wall: float | None = None,
                     ) -> list[FrameTemplate | None]:
    """One frame template per event (``(kind, body)``, kinds as ``Emulator.publish``) for
    ``subscription``; None where no filter of it matches the event. A frame's uuid is
    ``prefix`` + the index it is rendered with (19 digits, like the platform's)."""
    timestamp = iso_millis(time.time() if wall is None else wall)
    uuid = prefix + _INDEX
    templates: list[FrameTemplate | None] = []
    for kind, body in events:
        if kind not in _KINDS:
            raise EmulatorConfigError(f"event kind must be one of {_KINDS}, got {kind!r}")
        event_kind = cast(EventKind, kind)
        matched = first_match(subscription.filters, event_kind, body)
        if matched is None:
            templates.append(None)
            continue
        header = {"type": "ServerNotification", "messageId": uuid, "status": 200,
                  "headers": {"RCRequestId": uuid}}
        envelope = {"uuid": uuid, "event": matched.expanded, "timestamp": timestamp,
                    "subscriptionId": subscription.id, "ownerId": owner_id,
                    STAMP_FIELD: _STAMP, "body": body}
        text = json.dumps([header, envelope], separators=(",", ":"), ensure_ascii=False)
        holes: list[str] = []
        parts = [part.encode("utf-8") for part in _split(text, holes)]
        size = sum(map(len, parts)) + sum(INDEX_WIDTH if hole == "i" else STAMP_WIDTH
                                          for hole in holes)
        head = ws_text_frame(bytes(size))[:-size] if size else ws_text_frame(b"")
        templates.append(FrameTemplate((head + parts[0], *parts[1:]), tuple(holes)))
    return templates


def _split(text: str, holes: list[str]) -> list[str]:
    """``text`` cut at every placeholder (as json.dumps escapes them), in order; ``holes``
    gets which placeholder each cut was."""
    marks = {"i": json.dumps(_INDEX)[1:-1], "s": json.dumps(_STAMP)[1:-1]}
    parts: list[str] = []
    rest = text
    while True:
        cuts = [(rest.find(mark), name, mark) for name, mark in marks.items()
                if mark in rest]
        if not cuts:
            parts.append(rest)
            return parts
        pos, name, mark = min(cuts)
        parts.append(rest[:pos])
        holes.append(name)
        rest = rest[pos + len(mark):]


def subscribed_sockets(emu: Emulator) -> list[tuple[int, Subscription]]:
    """``(connection_id, subscription)`` of every live socket with an active subscription."""
    found = []
    gateway = emu.gateway
    for connection_id in gateway.live_connections():
        session = gateway.sessions.get(gateway.connections[connection_id].session_id)
        if session is not None and session.subscription is not None:
            found.append((connection_id, session.subscription))
    return found


@dataclass
class BurstReport:
    """What one ``Burst.send`` did."""

    #: events sent (to at least one socket); indexes ``start`` .. ``start + events - 1``
    events: int = 0
    #: frames written, over every socket
    frames: int = 0
    first_ns: int | None = None
    last_ns: int | None = None


class Burst:
    """Sends a pool of planned events through one running emulator, as fast as the sockets
    take them or at a fixed rate, to every socket with an active subscription.

    Event ``i`` of a burst is ``pool[i % len(pool)]`` with uuid ``prefix + i`` (12 digits):
    a pool of a few thousand planned events makes a burst of any length, each event
    unique to the journal's deduplication. Frames are encoded once per subscription and
    pool entry, before they are needed at full speed (``prepare``)."""

    def __init__(self, emu: Emulator, pool: Sequence[tuple[str, dict[str, Any]]],
                 prefix: str | None = None) -> None:
        if not pool:
            raise EmulatorConfigError("a burst needs at least one event")
        self.emu = emu
        self.pool = list(pool)
        self.prefix = prefix if prefix is not None else run_prefix()
        self.next_index = 0
        self._templates: dict[str, list[FrameTemplate | None]] = {}

    def uuid(self, index: int) -> str:
        """The uuid of event ``index``."""
        return self.prefix + index_digits(index).decode()

    def prepare(self) -> int:
        """Encode the pool for every subscription active now; how many sockets are ready."""
        sockets = subscribed_sockets(self.emu)
        for _, subscription in sockets:
            self._templates_for(subscription)
        return len(sockets)

    def _templates_for(self, subscription: Subscription) -> list[FrameTemplate | None]:
        templates = self._templates.get(subscription.id)
        if templates is None:
            templates = encode_templates(self.pool, subscription, self.emu.config.extension_id,
                                         self.prefix)
            self._templates[subscription.id] = templates
        return templates

    async def send(self, count: int, rate: float | None = None) -> BurstReport:
        """Send the next ``count`` events: as fast as possible (``rate`` None; waits on each
        transport's flow control) or paced at ``rate`` events/s. Events due while no socket
        is subscribed (a reconnect) are sent once one is, never skipped."""
        if count < 0 or (rate is not None and rate <= 0):
            raise EmulatorConfigError("count must be >= 0 and rate > 0 (or None)")
        report = BurstReport()
        end = self.next_index + count
        start_ns = time.monotonic_ns()
        base = self.next_index
        while self.next_index < end:
            step = CHUNK
            if rate is not None:
                due = base + int((time.monotonic_ns() - start_ns) * rate / 1e9) + 1
                step = min(CHUNK, due - self.next_index)
                if step <= 0:
                    await asyncio.sleep(max(0.0005, (self.next_index - due + 1) / rate))
                    continue
            step = min(step, end - self.next_index)
            if not await self._write_next(step, report):
                # nobody subscribed (between a drop and the next subscription)
                await asyncio.sleep(0.001)
        return report

    async def _write_next(self, step: int, report: BurstReport) -> bool:
        sockets = subscribed_sockets(self.emu)
        targets = []
        for connection_id, subscription in sockets:
            protocol = self._protocol(connection_id)
            if protocol is None:
                continue
            writable: asyncio.Event | None = getattr(protocol, "writable", None)
            if writable is not None and not writable.is_set():
                await writable.wait()
                return True  # the world may have changed meanwhile: look again
            targets.append((protocol, self._templates_for(subscription)))
        if not targets:
            return False
        first = self.next_index
        pool = len(self.pool)
        stamp = stamp_now()
        for protocol, templates in targets:
            frames = []
            for index in range(first, first + step):
                template = templates[index % pool]
                if template is not None:
                    frames.append(template.render(index_digits(index), stamp))
            protocol.transport.write(b"".join(frames))
            report.frames += len(frames)
        self.next_index += step
        report.events += step
        now = int(stamp)
        report.first_ns = now if report.first_ns is None else report.first_ns
        report.last_ns = now
        await asyncio.sleep(0)  # let the emulator answer heartbeats and pings meanwhile
        return True

    def _protocol(self, connection_id: int) -> Any:
        # the uvicorn protocol under a live connection (the lookup Emulator._abort does);
        # None when it is gone or closing, or not settled yet: the normal path's frames
        # (ConnectionDetails first, replays) go through the connection's writer queue, and
        # a burst frame must never overtake them
        live = self.emu._lives.get(connection_id)  # same package, read only
        server = self.emu._server
        if live is None or live.aborted or server is None or live.client is None:
            return None
        connection = self.emu.gateway.connections.get(connection_id)
        if (connection is None or not live.queue.empty()
                or self.emu.gateway.clock() - connection.opened < SETTLE):
            return None
        for protocol in server.server_state.connections:
            if getattr(protocol, "client", None) == live.client:
                transport = getattr(protocol, "transport", None)
                if transport is None or transport.is_closing():
                    return None
                return protocol
        return None
