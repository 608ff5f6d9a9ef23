"""Subscriptions on the platform's limit (403 SUB-505): a2pd deletes what it leaves behind."""

from __future__ import annotations

from pathlib import Path

import anyio

from a2pd import config
from tests.harness import (
    TIMEOUT,
    delivered,
    emulator,
    running_daemon,
    seed,
    session_count,
    settings_for,
    settings_text,
)


async def test_fresh_sessions_do_not_pile_up_subscriptions(tmp_path: Path) -> None:
    """Each failed recovery leaves a session (and its subscription) behind on the platform;
    once subscribed afresh the daemon deletes it, so a limit of two is never reached however
    often it happens, and events keep flowing."""
    emu = emulator(max_subscriptions=2)
    async with emu.running():
        settings = settings_for(emu, tmp_path)
        async with running_daemon(settings) as daemon:
            assert daemon.auth is not None
            for round_ in range(1, 5):
                emu.fail_next_recovery()
                await emu.drop_connections(mode="abrupt")
                await session_count(daemon, "subscriptions", round_ + 1)
                with anyio.fail_after(TIMEOUT):
                    await daemon.auth.counters.wait_for("subscriptions_deleted", round_)
                assert emu.gateway.subscription_count() == 1
            await emu.publish("message", seed("outbound.json")["body"])
            await delivered(daemon, "archive", 1)


async def test_a_limit_reached_by_our_last_run_is_cleared_and_retried(tmp_path: Path) -> None:
    """A restart that cannot recover (the window is too short) finds the platform at its
    limit of one, held by the last run's subscription: SUB-505 makes the daemon delete that
    one (it kept its id) and subscribe, instead of stopping with exit 77."""
    emu = emulator(max_subscriptions=1, recovery_timeout=1.0)
    async with emu.running():
        settings = settings_for(emu, tmp_path)
        async with running_daemon(settings) as daemon:
            first = daemon.supervisor.state.subscription_id
        assert emu.gateway.subscription_count() == 1
        async with running_daemon(settings) as daemon:
            state = daemon.supervisor.state
            assert state.counters["subscription_limit"] == 1
            assert state.subscription_id != first
            assert state.stale_subscriptions == []
            await emu.publish("message", seed("outbound.json")["body"])
            await delivered(daemon, "archive", 1)


async def test_a_stop_that_will_not_recover_deletes_its_subscription(tmp_path: Path) -> None:
    """With persist_session = false no restart can recover the session: a clean stop
    deletes its subscription rather than leave it counting against the limit."""
    emu = emulator()
    async with emu.running():
        text = settings_text(emu, tmp_path).replace(
            "[state]\n", "[state]\npersist_session = false\n", 1)
        settings = config.loads(text, source="test", env={})
        async with running_daemon(settings):
            assert emu.gateway.subscription_count() == 1
        assert emu.gateway.subscription_count() == 0
