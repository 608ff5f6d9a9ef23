"""TokenManager's decisions against the emulator's OAuth endpoints on loopback, on a clock the
test moves by hand: when to refresh or grant afresh, which refusals are fatal, how WebSocket
tokens are paced and how a 429 holds back the Auth rate group (test_daemon.py covers the
daemon around it)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest

from a2pd import auth, counts
from a2pd.auth import REVOKE_PATH, TOKEN_PATH, WSTOKEN_PATH, TokenManager
from a2pd.auth import rest as auth_rest
from a2pd.config import ConnectionConfig, PlatformConfig
from a2pd.emulator import Emulator, EmulatorConfig
from a2pd.emulator.config import DAEMON_PERMISSIONS, WS_PERMISSION
from a2pd.errors import FatalPlatformError, PlatformError, RateLimited
from tests.harness import TIMEOUT


class Stop(Exception):
    """Ends a loop that would run for ever."""


class VirtualTime:
    """The clock TokenManager reads, and anyio as auth.py sees it: ``sleep`` records the wait
    and moves the clock instead of waiting (``stop_after`` sleeps, it raises ``Stop``)."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.stop_after = stop_after

    def __call__(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(anyio, name)

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay
        if len(self.sleeps) == self.stop_after:
            raise Stop
        await anyio.lowlevel.checkpoint()


@asynccontextmanager
async def platform(monkeypatch: pytest.MonkeyPatch, *, clock: VirtualTime | None = None,
                   refresh_at: float = 0.5, wstoken_min_interval: float = 15.0,
                   client_secret: str | None = None, jwt: str | None = None,
                   **emulator: Any) -> AsyncIterator[tuple[Emulator, TokenManager, VirtualTime]]:
    """An emulator, and a TokenManager for it on a virtual clock."""
    clock = clock or VirtualTime()
    monkeypatch.setattr(auth, "anyio", clock)
    monkeypatch.setattr(auth_rest, "anyio", clock)  # the 429 hold-back waits there
    async with Emulator(EmulatorConfig(**emulator)).running() as emu, \
            httpx.AsyncClient() as http:
        manager = TokenManager(
            PlatformConfig(server=emu.base_url, client_id=emu.config.client_id,
                           refresh_at=refresh_at),
            client_secret or emu.config.client_secret, jwt or emu.config.jwt,
            ConnectionConfig(wstoken_min_interval=wstoken_min_interval), http, clock=clock)
        with anyio.fail_after(TIMEOUT):
            yield emu, manager, clock


def calls(emu: Emulator, path: str) -> list[int]:
    """The statuses the emulator answered on ``path``, in order."""
    return [status for _, called, status in emu.requests if called == path]


async def test_a_refresh_falls_due_at_refresh_at_of_the_lifetime_and_keeps_the_session(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Refresh falls due at refresh_at of the lifetime, in use 5 s before expiry; same session."""
    async with platform(monkeypatch, refresh_at=0.75, access_token_ttl=100) as (
            _, manager, clock):
        first = await manager.access_token()
        session = manager.session_id
        assert session is not None
        assert manager.refresh_due_in() == 75.0
        clock.now += 74.5
        assert manager.refresh_due_in() == 0.5
        await manager.refresh_if_due()
        assert manager.counters[counts.REFRESHES] == 0
        clock.now += 0.5
        assert await manager.access_token() == first  # due is not expired: use does not refresh
        await manager.refresh_if_due()
        assert manager.counters[counts.REFRESHES] == 1
        assert manager.counters[counts.GRANTS] == 1
        assert manager.session_id == session
        second = await manager.access_token()
        assert second != first
        assert manager.refresh_due_in() == 75.0
        clock.now += 94.5  # in use, a token is refreshed 5 s before it expires
        assert await manager.access_token() == second
        clock.now += 0.5
        assert await manager.access_token() != second
        assert manager.counters[counts.REFRESHES] == 2


@pytest.mark.parametrize(("case", "options", "token_calls"), [
    ("refresh token refused", {}, [200, 400, 200]),
    ("none issued", {"issue_refresh_tokens": False}, [200, 200]),
    ("expired on our clock", {"refresh_token_ttl": 50.0}, [200, 200]),
])
async def test_a_refresh_that_cannot_keep_the_session_is_a_new_grant(
        monkeypatch: pytest.MonkeyPatch, case: str, options: dict[str, Any],
        token_calls: list[int]) -> None:
    """A refused, missing or expired refresh token means a JWT grant: a new OAuth session."""
    async with platform(monkeypatch, **options) as (emu, manager, clock):
        await manager.access_token()
        session = manager.session_id
        if case == "refresh token refused":
            emu.break_refresh_tokens()
        clock.now += 50.0
        await manager.refresh()
        assert manager.session_id not in (None, session)
        assert (manager.counters[counts.GRANTS], manager.counters[counts.REFRESHES]) == (2, 0)
        assert calls(emu, TOKEN_PATH) == token_calls


async def test_without_refresh_tokens_the_refresher_grants_at_expiry_not_before(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Without refresh tokens the OAuth session is kept until the access token expires
    (regression: a new JWT grant at refresh_at of the lifetime, twice as many new OAuth
    sessions, each making a dropped WebSocket session unrecoverable)."""
    async with platform(monkeypatch, issue_refresh_tokens=False, access_token_ttl=100) as (
            _, manager, clock):
        await manager.access_token()
        session = manager.session_id
        clock.now += 50.0  # refresh_at (0.5) of the lifetime: the token is good for 45 s more
        await manager.refresh_if_due()
        assert manager.session_id == session
        assert manager.counters[counts.GRANTS] == 1
        assert manager.refresh_due_in() == pytest.approx(45.0)
        clock.now += 45.0  # 5 s before it expires: a new grant, a new OAuth session
        await manager.refresh_if_due()
        assert manager.counters[counts.GRANTS] == 2
        assert manager.session_id != session


@pytest.mark.parametrize(("options", "status", "code"), [
    ({"client_secret": "not-the-right-one"}, 401, "invalid_client"),
    ({"jwt": "not-the-right-one"}, 400, "invalid_grant"),
    ({"jwt_flow": False}, 403, "unauthorized_client"),
    ({"app_permissions": DAEMON_PERMISSIONS - {WS_PERMISSION}}, 403, "InsufficientPermissions"),
])
async def test_refused_credentials_and_permissions_are_fatal_and_not_retried(
        monkeypatch: pytest.MonkeyPatch, options: dict[str, Any], status: int, code: str) -> None:
    """Refused credentials, grant type or permission: FatalPlatformError after one call."""
    async with platform(monkeypatch, **options) as (emu, manager, _):
        with pytest.raises(FatalPlatformError) as info:
            await manager.ws_token()
        assert (info.value.status, info.value.code) == (status, code)
        permission = "app_permissions" in options
        failed = [200, status] if permission else [status]
        assert calls(emu, TOKEN_PATH) + calls(emu, WSTOKEN_PATH) == failed
        assert manager.last_refusal is not None
        assert manager.last_refusal.status == status
        assert manager.last_refusal.permission == (WS_PERMISSION if permission else None)


async def test_wstokens_are_paced_by_the_min_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wstoken within wstoken_min_interval of the last one waits for the rest of it."""
    async with platform(monkeypatch, wstoken_min_interval=15.0) as (emu, manager, clock):
        token = await manager.ws_token()
        assert token.uri == emu.ws_url
        clock.now += 4.0
        await manager.ws_token()
        assert clock.sleeps == [11.0]
        clock.now += 15.0
        await manager.ws_token()
        assert clock.sleeps == [11.0]
        assert manager.counters[counts.WSTOKENS] == 3


@pytest.mark.parametrize("refusals", [1, 2])
async def test_a_refused_access_token_at_the_wstoken_is_refreshed_and_retried_once(
        monkeypatch: pytest.MonkeyPatch, refusals: int) -> None:
    """A 401 at the wstoken refreshes (same OAuth session) and asks once more, no more."""
    async with platform(monkeypatch) as (emu, manager, _):
        await manager.access_token()
        session = manager.session_id
        emu.fail_http("wstoken", 401, times=refusals)
        if refusals == 1:
            await manager.ws_token()
        else:
            with pytest.raises(PlatformError) as info:
                await manager.ws_token()
            assert type(info.value) is PlatformError
            assert info.value.status == 401
        assert calls(emu, WSTOKEN_PATH) == [401, 401 if refusals == 2 else 200]
        assert manager.counters[counts.REFRESHES] == 1
        assert manager.session_id == session


async def test_an_auth_429_holds_back_every_auth_call_until_retry_after(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An Auth 429 holds the next Auth call back for Retry-After, and never means a new grant."""
    async with platform(monkeypatch) as (emu, manager, clock):
        await manager.access_token()
        session = manager.session_id
        emu.fail_http("wstoken", 429, retry_after=7)
        with pytest.raises(RateLimited) as info:
            await manager.ws_token()
        assert info.value.retry_after == 7.0
        assert clock.sleeps == []
        emu.fail_http("token", 429, retry_after=3)
        with pytest.raises(RateLimited):
            await manager.refresh()
        assert clock.sleeps == [7.0]
        await manager.refresh()
        assert clock.sleeps == [7.0, 3.0]
        assert manager.counters[counts.RATE_LIMITED] == 2
        assert (manager.counters[counts.GRANTS], manager.counters[counts.REFRESHES]) == (1, 1)
        assert manager.session_id == session


async def test_the_refresher_sleeps_until_due_and_backs_off_after_failures(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """run_refresher grants, backs off 2 s, 4 s or Retry-After, then refreshes when due."""
    clock = VirtualTime(stop_after=9)
    async with platform(monkeypatch, clock=clock, access_token_ttl=100) as (emu, manager, _):
        emu.fail_http("token", 503, times=2)
        emu.fail_http("token", 429, retry_after=9)
        with pytest.raises(Stop):
            await manager.run_refresher()
        assert clock.sleeps == [0.0, 2.0, 0.0, 4.0, 0.0, 9.0, 0.0, 50.0, 50.0]
        assert (manager.counters[counts.GRANTS], manager.counters[counts.REFRESHES]) == (1, 1)


async def test_revoke_ends_the_oauth_session_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """revoke() ends the OAuth session and forgets the tokens; without one it asks nothing."""
    async with platform(monkeypatch) as (emu, manager, _):
        await manager.access_token()
        session = manager.session_id
        assert session is not None
        changes: list[str | None] = []
        manager.on_change = lambda: changes.append(manager.session_id)
        assert await manager.revoke() is True
        assert await manager.revoke() is True
        assert changes == [None]
        assert emu.oauth.sessions[session].ended
        assert calls(emu, REVOKE_PATH) == [200]
        await manager.access_token()
        assert manager.counters[counts.GRANTS] == 2


async def test_exported_tokens_resume_the_oauth_session_after_a_restart(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Tokens exported by one process are taken by the next (another monotonic clock): the
    same session, the same refresh time; unusable documents are refused, not half taken."""
    async with platform(monkeypatch, refresh_at=0.5, access_token_ttl=100) as (
            emu, manager, clock):
        access = await manager.access_token()
        clock.now += 20
        doc = manager.export()
        assert doc is not None
        assert manager.export() == doc  # unchanged tokens export unchanged
        later = VirtualTime()
        later.now = 5.0  # the next process's monotonic clock starts elsewhere
        async with httpx.AsyncClient() as http:
            resumed = TokenManager(
                PlatformConfig(server=emu.base_url, client_id=emu.config.client_id,
                               refresh_at=0.5),
                emu.config.client_secret, emu.config.jwt, ConnectionConfig(), http,
                clock=later)
            for broken in ({}, {**doc, "issued": "soon"}, {**doc, "refresh": None},
                           {**doc, "refresh_expires": doc["issued"]}):
                assert not resumed.restore(broken)
                assert resumed.session_id is None
            assert resumed.restore(doc)
            assert resumed.session_id == manager.session_id
            assert await resumed.access_token() == access  # no grant: still valid
            # 20 of its 100 s had passed: a refresh falls due 30 s on (at whole seconds)
            assert abs(resumed.refresh_due_in() - 30.0) <= 1.0
            assert resumed.counters[counts.GRANTS] == 0
