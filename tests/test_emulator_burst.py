"""The emulator's benchmark fast path (emulator/burst.py) over a real loopback socket."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from a2pd import events, protocol
from a2pd.emulator import EmulatorConfigError
from a2pd.emulator.burst import STAMP_FIELD, Burst, encode_templates, index_digits
from a2pd.emulator.filters import parse_filter
from a2pd.emulator.gateway import Subscription
from tests.harness import TIMEOUT
from tests.platform_client import (
    A2P,
    ACCOUNT,
    BATCH,
    INBOUND,
    OPTOUT,
    OUTBOUND,
    login,
    platform,
    session,
)

POOL = [("batch", BATCH), ("message", OUTBOUND), ("message", INBOUND), ("optout", OPTOUT)]


def subscription(*filters: str) -> Subscription:
    """A subscription with ``filters`` (expanded for the emulator's default account)."""
    parsed = tuple(parse_filter(f, ACCOUNT, ACCOUNT) for f in filters)
    return Subscription("sub-1", parsed, (), 0.0)


def test_a_template_renders_a_gateway_notification_frame_with_uuid_and_stamp() -> None:
    """A rendered frame is one unmasked text frame holding a ServerNotification envelope."""
    [template] = encode_templates([("message", OUTBOUND)], subscription(f"{A2P}/messages"),
                                  ACCOUNT, "1234567")
    assert template is not None
    frame = template.render(index_digits(42), b"%019d" % 987654321)
    assert frame[0] == 0x81  # FIN + text, no mask bit on the length byte
    size = frame[1] & 0x7F
    offset = 2 if size < 126 else 4
    if size == 126:
        size = int.from_bytes(frame[2:4], "big")
    assert len(frame) == offset + size
    header, envelope = json.loads(frame[offset:])
    uuid = "1234567" + "000000000042"
    assert header == {"type": "ServerNotification", "messageId": uuid, "status": 200,
                      "headers": {"RCRequestId": uuid}}
    assert envelope["uuid"] == uuid
    assert envelope["event"] == f"/restapi/v1.0/account/{ACCOUNT}/a2p-sms/messages"
    assert envelope["subscriptionId"] == "sub-1"
    assert envelope["ownerId"] == ACCOUNT
    assert envelope[STAMP_FIELD] == "0000000000987654321"
    assert envelope["body"] == OUTBOUND
    decoded = protocol.decode(frame[offset:])
    assert isinstance(decoded, protocol.ServerNotification)
    assert isinstance(events.decode_notification(decoded.body, decoded.raw),
                      events.MessageEvent)


def test_events_no_filter_matches_have_no_template_and_unknown_kinds_are_refused() -> None:
    """Only matching events get frames (None keeps the pool's positions); a bad kind raises."""
    templates = encode_templates(POOL, subscription(f"{A2P}/opt-outs"), ACCOUNT, "1234567")
    assert [t is not None for t in templates] == [False, False, False, True]
    with pytest.raises(EmulatorConfigError):
        encode_templates([("fax", {})], subscription(f"{A2P}/opt-outs"), ACCOUNT, "1234567")


async def test_a_burst_reaches_a_subscribed_socket_in_order_with_send_stamps() -> None:
    """Burst.send writes every event, in index order, stamped no earlier than the call."""
    async with platform() as (emu, http), session(emu, http) as (sock, _):
        info = await sock.subscribe([f"{A2P}/batches", f"{A2P}/messages", f"{A2P}/opt-outs"])
        burst = Burst(emu, POOL, prefix="7654321")
        assert burst.prepare() == 1
        before = time.monotonic_ns()
        report = await burst.send(500)
        got = [await sock.notification() for _ in range(500)]
        assert report.events == report.frames == 500
        assert [n["uuid"] for n in got] == [burst.uuid(i) for i in range(500)]
        assert all(n["subscriptionId"] == info["id"] for n in got)
        assert [n["body"] for n in got[:4]] == [body for _, body in POOL]
        stamps = [int(n[STAMP_FIELD]) for n in got]
        assert stamps == sorted(stamps)
        assert before <= stamps[0] <= stamps[-1] <= time.monotonic_ns()
        assert report.first_ns == stamps[0]
        assert report.last_ns == stamps[-1]
        # the next burst continues the indexes; the normal path still works alongside
        await burst.send(1)
        assert (await sock.notification())["uuid"] == burst.uuid(500)
        assert await emu.publish("optout", OPTOUT) == 1
        assert (await sock.notification())["body"] == OPTOUT


async def test_a_paced_burst_keeps_its_rate_and_waits_for_a_subscriber() -> None:
    """At a fixed rate no event goes out before its time; with no subscriber, sending waits
    for one."""
    async with platform() as (emu, http):
        burst = Burst(emu, POOL)
        async with session(emu, http) as (sock, _):
            started = time.monotonic_ns()
            pending = asyncio.create_task(burst.send(40, rate=400.0))
            await asyncio.sleep(0)
            assert not pending.done()  # nobody is subscribed yet
            await sock.subscribe([f"{A2P}/batches", f"{A2P}/messages", f"{A2P}/opt-outs"])
            async with asyncio.timeout(TIMEOUT):
                report = await pending
            got = [await sock.notification() for _ in range(40)]
        assert [n["uuid"] for n in got] == [burst.uuid(i) for i in range(40)]
        assert report.first_ns is not None
        assert report.last_ns is not None
        # pacing: event i never goes out before i / rate after the call (a lower bound the
        # sender guarantees by construction, not a timing measurement)
        assert report.last_ns >= started + 39 / 400.0 * 1e9


async def test_a_recovered_session_gets_connection_details_before_any_burst_frame() -> None:
    """Burst frames never overtake what the normal path queued for a new socket: after a
    recovery, ConnectionDetails comes first, then the burst, on the same subscription."""
    async with platform() as (emu, http):
        tokens = await login(http)
        async with session(emu, http, tokens) as (sock, details):
            info = await sock.subscribe([f"{A2P}/batches", f"{A2P}/messages",
                                         f"{A2P}/opt-outs"])
            wsc = details[0]["wsc"]["token"]
        burst = Burst(emu, POOL)
        pending = asyncio.create_task(burst.send(200, rate=2000.0))
        async with session(emu, http, tokens, wsc=wsc) as (sock, first):
            assert first[0]["type"] == "ConnectionDetails"
            assert first[1]["recoveryState"] == "Successful"
            got = [await sock.notification() for _ in range(200)]
            async with asyncio.timeout(TIMEOUT):
                await pending
        assert [n["uuid"] for n in got] == [burst.uuid(i) for i in range(200)]
        assert {n["subscriptionId"] for n in got} == {info["id"]}
