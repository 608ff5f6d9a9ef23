"""The daemon against the emulator's injected platform faults: rate limits and errors on the
token endpoints, tokens that stop working, refused upgrades, a stalled peer."""

from __future__ import annotations

from pathlib import Path

import anyio

from tests.harness import (
    TIMEOUT,
    delivered,
    emulator,
    read_records,
    running_daemon,
    seed,
    session_count,
    settings_for,
)

BODY = seed("outbound.json")["body"]


def token_statuses(emu: object, path: str) -> list[int]:
    return [status for _, p, status in emu.requests if p == path]  # type: ignore[attr-defined]


async def test_token_rate_limit_and_server_errors_are_retried(tmp_path: Path) -> None:
    """429 with Retry-After (obeyed: nothing is asked sooner), then two 503s on the token
    endpoint and a 502 on the wstoken endpoint: the daemon waits, retries and subscribes."""
    emu = emulator()
    emu.fail_http("token", 429, retry_after=1)
    emu.fail_http("token", 503, times=2)
    emu.fail_http("wstoken", 502)
    async with emu.running():
        settings = settings_for(emu, tmp_path)
        started = anyio.current_time()
        async with running_daemon(settings) as daemon:
            waited = anyio.current_time() - started
            await emu.publish("message", {**BODY, "id": "after-faults"})
            await delivered(daemon, "archive", 1)
            assert daemon.auth is not None
            assert daemon.auth.counters["rate_limited"] == 1
            assert daemon.auth.counters["grants"] == 1
    assert waited >= 1.0  # the Retry-After
    assert token_statuses(emu, "/restapi/oauth/token") == [429, 503, 503, 200]
    assert token_statuses(emu, "/restapi/oauth/wstoken") == [502, 200]


async def test_expired_access_token_is_refreshed_and_the_session_recovered(
        tmp_path: Path) -> None:
    """Access tokens expire mid-connection, then the socket drops: the wstoken call gets 401,
    the daemon refreshes (same OAuth session) and recovers; nothing lost or doubled."""
    emu = emulator()
    async with emu.running():
        settings = settings_for(emu, tmp_path)
        async with running_daemon(settings) as daemon:
            await emu.publish("message", {**BODY, "id": "m0"})
            await delivered(daemon, "archive", 1)
            emu.expire_access_tokens()
            await emu.drop_connections(mode="abrupt")
            await emu.publish("message", {**BODY, "id": "m1"})
            await session_count(daemon, "recoveries_successful", 1)
            await delivered(daemon, "archive", 2)
            assert daemon.auth is not None
            assert daemon.auth.counters["grants"] == 1
            assert daemon.auth.counters["refreshes"] >= 1
    assert 401 in token_statuses(emu, "/restapi/oauth/wstoken")
    assert sorted(r["body"]["id"] for r in read_records(tmp_path / "events")) == ["m0", "m1"]


async def test_refused_refresh_token_means_a_new_grant_and_a_new_subscription(
        tmp_path: Path) -> None:
    """The refresh token stops working: after the 401, the refresh is refused, the daemon
    grants afresh (a new OAuth session, so the old wsc is useless), subscribes again and
    counts the gap."""
    emu = emulator()
    async with emu.running():
        settings = settings_for(emu, tmp_path)
        async with running_daemon(settings) as daemon:
            emu.break_refresh_tokens()
            emu.expire_access_tokens()
            await emu.drop_connections(mode="abrupt")
            await session_count(daemon, "subscriptions", 2)
            await emu.publish("message", {**BODY, "id": "on-the-new-session"})
            await delivered(daemon, "archive", 1)
            assert daemon.auth is not None
            assert daemon.auth.counters["grants"] == 2
            assert daemon.supervisor is not None
            assert daemon.supervisor.gaps == 1
    assert 400 in token_statuses(emu, "/restapi/oauth/token")


async def test_refused_upgrades_are_retried_then_the_session_recovered(tmp_path: Path) -> None:
    """While the gateway refuses upgrades (HTTP 503) the daemon keeps trying with backoff;
    once it accepts again, recovery replays what was published meanwhile."""
    emu = emulator()
    async with emu.running():
        settings = settings_for(emu, tmp_path)
        async with running_daemon(settings) as daemon:
            emu.refuse_connections()
            await emu.drop_connections(mode="abrupt")
            for i in range(3):
                await emu.publish("message", {**BODY, "id": f"during-{i}"})
            await session_count(daemon, "reconnect_attempts", 3)
            assert emu.faults.injected.get("refused", 0) >= 2
            emu.accept_connections()
            await session_count(daemon, "recoveries_successful", 1)
            await delivered(daemon, "archive", 3)
    assert sorted(r["body"]["id"] for r in read_records(tmp_path / "events")) == \
        [f"during-{i}" for i in range(3)]


async def test_a_stalled_peer_is_found_by_heartbeats_and_recovered(tmp_path: Path) -> None:
    """The gateway keeps the TCP connection but answers nothing: the Heartbeat goes
    unanswered, the daemon reconnects and recovers, and the notifications the stalled
    connection held arrive by replay."""
    emu = emulator()
    async with emu.running():
        settings = settings_for(emu, tmp_path, connection={
            "heartbeat_interval": 0.3, "heartbeat_timeout": 0.3})
        async with running_daemon(settings) as daemon:
            try:
                assert emu.stall_connections()
                for i in range(2):
                    await emu.publish("message", {**BODY, "id": f"held-{i}"})
                await session_count(daemon, "recoveries_successful", 1)
                await delivered(daemon, "archive", 2)
            finally:
                emu.unstall_connections()
            with anyio.fail_after(TIMEOUT):
                assert daemon.supervisor is not None
                assert daemon.supervisor.state.counters["heartbeats_sent"] >= 1
    assert sorted(r["body"]["id"] for r in read_records(tmp_path / "events")) == \
        ["held-0", "held-1"]
