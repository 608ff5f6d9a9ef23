"""End to end: the daemon against the emulator over real loopback HTTP and WebSockets."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest
from pydantic import SecretStr

from a2pd.app import Daemon
from a2pd.errors import FatalPlatformError
from tests.harness import (
    TIMEOUT,
    delivered,
    emulator,
    read_dead_letters,
    read_records,
    running_daemon,
    seed,
    seed_kind,
    session_count,
    settings_for,
)

SEEDS = ["batch.json", "inbound.json", "outbound.json", "outbound_failed.json", "optout.json",
         "optin.json"]


async def test_every_seed_event_kind_arrives_decoded(tmp_path: Path) -> None:
    """Each seed example published by the emulator lands decoded in the file sink."""
    emu = emulator()
    async with emu.running():
        settings = settings_for(emu, tmp_path)
        async with running_daemon(settings) as daemon:
            for name in SEEDS:
                await emu.publish(seed_kind(name), seed(name)["body"])
            await delivered(daemon, "archive", len(SEEDS))
    records = read_records(tmp_path / "events")
    by_kind = {r["kind"]: r for r in records}
    assert sorted(by_kind) == ["batch", "inbound", "optin", "optout", "outbound"]
    assert len(records) == len(SEEDS)
    for name in SEEDS:
        body = seed(name)["body"]
        assert [r for r in records if r["body"] == body], name
    sent_uuids = {s.uuid for s in emu.sent}
    assert {r["uuid"] for r in records} == sent_uuids
    subscription_ids = {r["subscriptionId"] for r in records}
    assert len(subscription_ids) == 1


async def test_routes_fan_out_and_filter(tmp_path: Path) -> None:
    """Routes send failures and opt-outs to their sinks, everything to the archive."""
    sinks = "".join(f"""
[sinks.{name}]
type = "file"
directory = "{tmp_path / name}"
path = "out.jsonl"
fsync = "never"
""" for name in ("archive", "failures", "optouts", "rest"))
    routes = """
[[routes]]
name = "all"
sinks = ["archive"]

[[routes]]
name = "failures"
match = { kind = "outbound", status = ["DeliveryFailed", "SendingFailed"] }
sinks = ["failures"]

[[routes]]
name = "optouts"
match = { kind = "optout", active = true }
sinks = ["optouts"]
stop = true

[[routes]]
name = "not-reached-by-optouts"
match = { kind = ["optout", "optin"] }
sinks = ["rest"]
"""
    emu = emulator()
    async with emu.running():
        settings = settings_for(emu, tmp_path, sinks=sinks, routes=routes)
        async with running_daemon(settings) as daemon:
            for name in SEEDS:
                await emu.publish(seed_kind(name), seed(name)["body"])
            await delivered(daemon, "archive", len(SEEDS) - 1)
            await delivered(daemon, "failures", 1)
            await delivered(daemon, "optouts", 1)
            await delivered(daemon, "rest", 1)
    kinds = {name: [r["kind"] for r in read_records(tmp_path / name)]
             for name in ("archive", "failures", "optouts", "rest")}
    # the opt-out stops at its own route, so the archive (matched first) still has it
    assert sorted(kinds["archive"]) == ["batch", "inbound", "optin", "optout", "outbound",
                                        "outbound"]
    assert kinds["failures"] == ["outbound"]
    assert kinds["optouts"] == ["optout"]
    assert kinds["rest"] == ["optin"]


async def test_dropped_connection_recovers_without_duplicates(tmp_path: Path) -> None:
    """An abrupt drop is recovered with wsc; replayed events are not written twice."""
    emu = emulator()
    async with emu.running():
        settings = settings_for(emu, tmp_path)
        async with running_daemon(settings) as daemon:
            body = seed("outbound.json")["body"]
            for i in range(5):
                await emu.publish("message", {**body, "id": f"before-{i}"})
            await delivered(daemon, "archive", 5)
            subscription = daemon.supervisor.state.subscription_id
            await emu.drop_connections(mode="abrupt")
            for i in range(3):
                await emu.publish("message", {**body, "id": f"during-{i}"})
            await session_count(daemon, "recoveries_successful", 1)
            await delivered(daemon, "archive", 8)
            state = daemon.supervisor.state
            assert state.subscription_id == subscription
            assert state.counters["subscriptions"] == 1
    replayed = [s for s in emu.sent if s.replay]
    assert replayed, "the emulator replayed nothing"
    records = read_records(tmp_path / "events")
    uuids = [r["uuid"] for r in records]
    assert len(uuids) == len(set(uuids)) == 8
    assert sorted(r["body"]["id"] for r in records) == sorted(
        [f"before-{i}" for i in range(5)] + [f"during-{i}" for i in range(3)])
    assert daemon.pipeline is not None
    assert daemon.pipeline.counters["duplicates"] == len(replayed) - 3


async def test_backpressure_keeps_the_session_and_loses_nothing(tmp_path: Path) -> None:
    """A sink fails while a tiny journal (block policy) fills, so the receive loop waits for
    room: heartbeats must not call the silent socket dead, and the wsc each notification
    carries must not get ahead of what is journaled — a drop during the wait is recovered
    from the last journaled notification. Once the sink is back every event arrives once."""
    emu = emulator(wsc_on_notifications=1)
    blocker = tmp_path / "events" / "outbound.jsonl"
    blocker.mkdir(parents=True)  # the file sink cannot open its file: a transient failure
    async with emu.running():
        settings = settings_for(emu, tmp_path, journal={"max_events": 3},
                                connection={"heartbeat_interval": 0.2,
                                            "heartbeat_timeout": 0.2})
        assert settings.journal.full_policy == "block"
        body = seed("outbound.json")["body"]
        async with running_daemon(settings) as daemon:
            assert daemon.journal is not None
            assert daemon.supervisor is not None
            for i in range(8):
                await emu.publish("message", {**body, "id": f"bp-{i}"})
            # a heartbeat went unanswered (nothing is read) and the session was kept
            await session_count(daemon, "heartbeats_deferred", 1)
            state = daemon.supervisor.state
            assert daemon.journal.counters["full_waits"] >= 1
            assert state.counters["connections"] == 1
            await emu.drop_connections(mode="abrupt")
            blocker.rmdir()
            await session_count(daemon, "recoveries_successful", 1)
            await delivered(daemon, "archive", 8)
            assert state.counters["subscriptions"] == 1
    records = read_records(tmp_path / "events")
    assert sorted(r["body"]["id"] for r in records) == [f"bp-{i}" for i in range(8)]


async def test_a_journal_stall_longer_than_the_pong_deadline_keeps_the_session(
        tmp_path: Path) -> None:
    """The gateway pings and drops a client that does not pong in time (10 s; 0.3 s here,
    the stall threshold scaled with it). With the journal full (block policy, a failing
    sink) for ten times that, the daemon keeps reading the socket, so pongs go out and the
    session stays; once the sink is back every event arrives once, on the first connection."""
    emu = emulator(ping_interval=0.05, pong_timeout=0.3)
    blocker = tmp_path / "events" / "outbound.jsonl"
    blocker.mkdir(parents=True)  # the file sink cannot open its file: a transient failure
    async with emu.running():
        settings = settings_for(emu, tmp_path, journal={"max_events": 20},
                                connection={"stall_read_after": 0.05})
        body = seed("outbound.json")["body"]
        async with running_daemon(settings) as daemon:
            assert daemon.journal is not None
            assert daemon.supervisor is not None
            first = emu.gateway.live_connections()
            for i in range(200):  # far more frames than websockets queues (16)
                await emu.publish("message", {**body, "id": f"stall-{i}"})
            with anyio.fail_after(TIMEOUT):
                await daemon.journal.counters.wait_for("full_waits", 1)
            await anyio.sleep(3.0)  # the stall itself: ten pong deadlines
            # the gateway's view: a client that missed a pong is closed (1011) there, and
            # a client that is not reading would not even notice
            assert emu.gateway.live_connections() == first
            blocker.rmdir()
            await delivered(daemon, "archive", 200)
            assert emu.gateway.live_connections() == first
            assert daemon.supervisor.state.counters["connections"] == 1
    records = read_records(tmp_path / "events")
    assert sorted(r["body"]["id"] for r in records) == sorted(f"stall-{i}" for i in range(200))


@pytest.mark.parametrize("code", ["WSG-1005", "WSG-1003"])
async def test_failed_recovery_resubscribes(tmp_path: Path, code: str) -> None:
    """When recovery answers Failed, the daemon subscribes again on the same socket."""
    emu = emulator()
    async with emu.running():
        settings = settings_for(emu, tmp_path)
        async with running_daemon(settings) as daemon:
            state = daemon.supervisor.state
            first = state.subscription_id
            emu.fail_next_recovery(code=code)
            await emu.drop_connections(mode="abrupt")
            await session_count(daemon, "subscriptions", 2)
            assert state.counters["recoveries_failed"] == 1
            assert state.subscription_id != first
            await emu.publish("optout", seed("optout.json")["body"])
            await delivered(daemon, "archive", 1)
            assert state.counters["connections"] == 2


@pytest.mark.parametrize("mode", ["error902", "error903", "close"])
async def test_gateway_timeouts_reconnect_and_recover(tmp_path: Path, mode: str) -> None:
    """WSG-902/903 and a plain close lead to a recovered session that keeps delivering."""
    emu = emulator()
    async with emu.running():
        settings = settings_for(emu, tmp_path)
        async with running_daemon(settings) as daemon:
            await emu.drop_connections(mode=mode)
            await session_count(daemon, "recoveries_successful", 1)
            await emu.publish("batch", seed("batch.json")["body"])
            await delivered(daemon, "archive", 1)


async def test_malformed_frames_are_counted_and_dead_lettered(tmp_path: Path) -> None:
    """A malformed frame and an undecodable notification are dead-lettered; flow continues."""
    emu = emulator()
    async with emu.running():
        settings = settings_for(emu, tmp_path)
        async with running_daemon(settings) as daemon:
            await emu.publish_raw_frame("not-json{")
            bad = dict(seed("outbound.json")["body"], **{"from": "not-a-number"})
            await emu.publish("message", bad)
            await emu.publish("message", seed("outbound.json")["body"])
            await delivered(daemon, "archive", 1)
            state = daemon.supervisor.state
            assert state.counters["frames_malformed"] == 1
            assert daemon.pipeline is not None
            assert daemon.pipeline.counters["dead_letters"] == 2
            assert state.counters["connections"] == 1
    letters = await read_dead_letters(settings)
    assert [(d.sink, d.size > 0) for d in letters] == [("frame", True), ("notification", True)]
    assert letters[0].raw == b"not-json{"
    assert "body.from" in letters[1].reason
    assert b"not-a-number" in letters[1].raw


async def test_heartbeats_keep_an_idle_session_alive(tmp_path: Path) -> None:
    """With no traffic, Heartbeats are sent and answered and the idle timeout never fires."""
    emu = emulator(idle_timeout=1.0)
    async with emu.running():
        settings = settings_for(emu, tmp_path, connection={"heartbeat_interval": 0.2,
                                                           "heartbeat_timeout": 2.0})
        async with running_daemon(settings) as daemon:
            # 8 heartbeats at 0.2 s of silence each span well past the 1 s idle timeout
            await session_count(daemon, "heartbeats_sent", 8)
            state = daemon.supervisor.state
            assert state.counters["connections"] == 1


async def test_keepalive_heartbeats_while_notifications_stream(tmp_path: Path) -> None:
    """A busy inbound stream does not stop our Heartbeats: the idle timer never fires."""
    emu = emulator(idle_timeout=1.0)
    async with emu.running():
        settings = settings_for(emu, tmp_path, connection={"heartbeat_interval": 30.0,
                                                           "keepalive_interval": 0.3})
        async with running_daemon(settings) as daemon:
            body = seed("outbound.json")["body"]
            for i in range(40):
                await emu.publish("message", {**body, "id": str(i)})
                await delivered(daemon, "archive", i + 1)
                # pace the stream by its own deliveries; 40 round trips outlast 1 s
            await session_count(daemon, "heartbeats_sent", 4)
            state = daemon.supervisor.state
            assert state.counters["connections"] == 1


async def test_token_refresh_keeps_the_session_recoverable(tmp_path: Path) -> None:
    """Access tokens are refreshed before expiry and recovery still succeeds afterwards."""
    emu = emulator(access_token_ttl=0.6)
    async with emu.running():
        settings = settings_for(emu, tmp_path)
        async with running_daemon(settings) as daemon:
            assert daemon.auth is not None
            with anyio.fail_after(TIMEOUT):
                await daemon.auth.counters.wait_for("refreshes", 3)
            await emu.drop_connections(mode="abrupt")
            await session_count(daemon, "recoveries_successful", 1)
            state = daemon.supervisor.state
            assert state.counters["recoveries_failed"] == 0
            assert daemon.auth.counters["grants"] == 1


async def test_an_app_without_refresh_tokens_is_named_once_and_still_loses_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Refresh tokens are off by default for a RingCentral app: the first grant without one
    logs one warning naming the app setting; each expiry is a new grant (a new OAuth
    session, so a drop after it is not recovered) and the gap is backfilled, not lost."""
    emu = emulator(issue_refresh_tokens=False, access_token_ttl=0.6)
    async with emu.running():
        settings = settings_for(emu, tmp_path)
        async with running_daemon(settings) as daemon:
            assert daemon.auth is not None
            with anyio.fail_after(TIMEOUT):
                await daemon.auth.counters.wait_for("grants", 3)
            await emu.drop_connections(mode="abrupt")
            now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            await emu.publish("message", {**seed("outbound.json")["body"],
                                          "creationTime": now, "lastModifiedTime": now})
            await delivered(daemon, "archive", 1)
            assert daemon.auth.counters["refreshes"] == 0
    out = capsys.readouterr().out
    assert out.count("no_refresh_token") == 1
    assert "Issue refresh tokens" in out


async def test_rejected_jwt_stops_with_a_fatal_error(tmp_path: Path) -> None:
    """A JWT the platform refuses stops the daemon (no retry loop) with FatalPlatformError."""
    emu = emulator()
    async with emu.running():
        settings = replace(settings_for(emu, tmp_path), jwt=SecretStr("a.wrong.jwt"))
        daemon = Daemon(settings)
        with anyio.fail_after(TIMEOUT), pytest.raises(FatalPlatformError) as info:
            await daemon.run(handle_signals=False)
    assert "JWT" in str(info.value)
    token_calls = [r for r in emu.requests if r[1] == "/restapi/oauth/token"]
    assert len(token_calls) == 1


def test_records_are_json_lines(tmp_path: Path) -> None:
    """read_records reads what the file sink writes (guards the helper itself)."""
    (tmp_path / "a.jsonl").write_text(json.dumps({"a": 1}) + "\n")
    assert read_records(tmp_path) == [{"a": 1}]
