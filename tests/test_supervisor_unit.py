"""The reconnect loop's decisions, with sessions scripted in place of run_session (its edge
to the socket) and a clock the test moves: backoff per kind of ending, stable_after, when
the wsc is presented, and how gaps are counted and reported (test_faults.py runs the real
loop against the emulator)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import anyio
import anyio.lowlevel
import pytest

from a2pd import counts, protocol, supervisor
from a2pd.auth import TokenManager, WsToken
from a2pd.backoff import backoff
from a2pd.config import ConnectionConfig
from a2pd.errors import (
    A2pdError,
    ConnectionLost,
    FatalPlatformError,
    PlatformError,
    RateLimited,
    SubscriptionLimit,
)
from a2pd.session import SessionState
from a2pd.supervisor import Supervisor
from tests.harness import TIMEOUT

STOP = FatalPlatformError("the script ends here")


class VirtualTime:
    """anyio as supervisor.py sees it, on the test's clock: sleep() records and moves it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(anyio, name)

    def current_time(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay
        await anyio.lowlevel.checkpoint()


class TopDraw(random.Random):
    """Full jitter without the jitter: every draw is the top of its range."""

    def uniform(self, a: float, b: float) -> float:
        return b


def no_jitter(initial: float, factor: float, cap: float) -> Iterator[float]:
    return backoff(initial, factor, cap, rng=TopDraw())


class FakeAuth:
    """TokenManager as the supervisor uses it: a WS token per attempt, and the OAuth session
    (the next of ``sessions`` with each token; the last one stays)."""

    def __init__(self, *sessions: str) -> None:
        self.sessions = list(sessions or ["oauth-1"])
        self.session_id: str | None = None

    async def ws_token(self) -> WsToken:
        self.session_id = self.sessions.pop(0) if len(self.sessions) > 1 else self.sessions[0]
        return WsToken("ws-token", "wss://gateway.test/ws", 600.0)


@dataclass
class Turn:
    """One scripted session: subscribed or not (then ``notifications`` handed over and
    ``lasted`` seconds up), the recoveryState a presented wsc meets, how it ends."""

    ends: A2pdError
    subscribed: bool = False
    lasted: float = 0.0
    recovery: str = "Successful"
    notifications: int = 0


class Done(NamedTuple):
    supervisor: Supervisor
    sleeps: list[float]
    #: (url, presented_wsc) per attempt
    attempts: list[tuple[str, bool]]
    #: on_gap's calls
    gaps: list[tuple[float, str]]


async def run(monkeypatch: pytest.MonkeyPatch, turns: list[Turn], auth: FakeAuth | None = None,
              stale: tuple[str, ...] = (), **connection: Any) -> Done:
    """Run a supervisor through ``turns``, each played with run_session's contract on
    SessionState (the last turn ends it with STOP)."""
    clock = VirtualTime()
    attempts: list[tuple[str, bool]] = []
    gaps: list[tuple[float, str]] = []

    async def run_session(url: str, *, state: SessionState, presented_wsc: bool,
                          oauth_session: str | None, on_notification: Any, on_subscribed: Any,
                          **_: Any) -> None:
        attempts.append((url, presented_wsc))
        turn = turns.pop(0)
        if turn.subscribed:
            n = len(attempts)
            if presented_wsc and turn.recovery == "Successful":
                state.count(counts.RECOVERIES_SUCCESSFUL)
            else:
                if presented_wsc:
                    state.count(counts.RECOVERIES_FAILED)
                state.leave_subscription()
                state.subscription_id = f"sub-{n}"
                state.wsc = protocol.Wsc(token=f"wsc-{n}", sequence=0)
                state.wsc_oauth_session = oauth_session
            on_subscribed()
            for i in range(turn.notifications):
                await on_notification(protocol.decode(json.dumps([
                    {"type": "ServerNotification", "messageId": f"m{i}"},
                    {"uuid": f"u{n}-{i}", "event": "/x", "body": {}}])))
            clock.now += turn.lasted
            state.disconnected_at = clock.now
        raise turn.ends

    async def delete(_: str) -> bool:
        return True

    async def ignore(_: object) -> None:
        return None

    monkeypatch.setattr(supervisor, "anyio", clock)
    monkeypatch.setattr(supervisor, "backoff", no_jitter)
    monkeypatch.setattr(supervisor, "run_session", run_session)
    cfg = ConnectionConfig(**{"backoff_initial": 1.0, "backoff_max": 100.0,
                              "stable_after": 60.0, **connection})
    sup = Supervisor(cast(TokenManager, auth or FakeAuth()), ["/restapi/x"], cfg, ignore, ignore,
                     on_gap=lambda start, reason: gaps.append((start, reason)),
                     delete_subscription=delete)
    sup.state.stale_subscriptions.extend(stale)
    with anyio.fail_after(TIMEOUT), pytest.raises(FatalPlatformError) as info:
        await sup.run()
    assert info.value is STOP
    assert turns == []
    return Done(sup, clock.sleeps, attempts, gaps)


def lost(recoverable: bool = True) -> ConnectionLost:
    return ConnectionLost("gone", recoverable=recoverable)


async def test_backoff_grows_to_its_cap_and_a_stable_session_resets_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoff doubles to its cap; a session up for stable_after reconnects at once, reset."""
    done = await run(monkeypatch, [
        Turn(lost()), Turn(lost()), Turn(lost()), Turn(lost()),
        Turn(lost(), subscribed=True, lasted=60.0), Turn(lost()),
        Turn(lost(), subscribed=True, lasted=59.0), Turn(STOP),
    ], backoff_max=4.0)
    assert done.sleeps == [1.0, 2.0, 4.0, 4.0, 0.0, 1.0, 2.0]
    assert done.supervisor.reconnects == 7


async def test_each_kind_of_ending_has_its_own_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    """429: max(Retry-After, backoff); other errors: backoff; SUB-505: at once if stale gone."""
    limit = SubscriptionLimit("limit", status=403, code="SUB-505")
    done = await run(monkeypatch, [
        Turn(RateLimited("429", retry_after=30.0)), Turn(RateLimited("429", retry_after=0.5)),
        Turn(PlatformError("503", status=503)), Turn(limit), Turn(limit), Turn(STOP),
    ], stale=("left-behind",))
    assert done.sleeps == [30.0, 2.0, 4.0, 0.0, 8.0]
    assert done.supervisor.state.stale_subscriptions == []
    assert done.supervisor.state.counters[counts.SUBSCRIPTION_LIMIT] == 2


@pytest.mark.parametrize(("case", "presented"), [
    ("same session, inside the window", True),
    ("same session, at the window's margin", True),
    ("same session, past the margin", False),
    ("a non-recoverable loss", False),
    ("a new OAuth session", False),
])
async def test_the_wsc_is_presented_only_for_the_same_oauth_session_inside_the_window(
        monkeypatch: pytest.MonkeyPatch, case: str, presented: bool) -> None:
    """The wsc is presented only after a recoverable loss, same OAuth session, inside the window."""
    # away from the loss: 1 s of backoff, then max(Retry-After, 2 s); the window is 180 s
    retry_after = {"same session, at the window's margin": 177.0,
                   "same session, past the margin": 177.5}.get(case, 0.0)
    auth = FakeAuth("oauth-1", "oauth-1", "oauth-2") if "OAuth" in case else FakeAuth()
    done = await run(monkeypatch, [
        Turn(lost(recoverable="non-recoverable" not in case), subscribed=True, lasted=10.0),
        Turn(RateLimited("429", retry_after=retry_after)),
        Turn(STOP, subscribed=True),
    ], auth)
    url, presented_wsc = done.attempts[2]
    assert presented_wsc is presented
    assert ("&wsc=wsc-1" in url) is presented
    assert done.supervisor.gaps == (0 if presented else 1)


@pytest.mark.parametrize(("case", "gaps", "reason"), [
    ("fresh session", 1, "fresh session"),
    ("recovery failed", 0, "recovery failed"),
    ("recovered", 0, "recovery (the replay holds at most recoveryBufferSize notifications)"),
])
async def test_a_gap_is_counted_once_and_reported_from_the_last_notification(
        monkeypatch: pytest.MonkeyPatch, case: str, gaps: int, reason: str) -> None:
    """A fresh session is one gap however many attempts; gaps start at the last notification."""
    fresh = case == "fresh session"
    done = await run(monkeypatch, [
        Turn(lost(recoverable=not fresh), subscribed=True, lasted=10.0, notifications=2),
        *([Turn(lost()), Turn(lost())] if fresh else []),
        Turn(STOP, subscribed=True, recovery="Failed" if case == "recovery failed" else
             "Successful"),
    ])
    assert done.attempts[-1][1] is not fresh
    assert done.supervisor.gaps == gaps
    assert done.supervisor.last_notification_wall is not None
    assert done.gaps == [(done.supervisor.last_notification_wall, reason)]
