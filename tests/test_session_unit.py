"""One session's decisions against a scripted gateway on loopback (websockets' own server,
every frame chosen by the test): the connect URL, handshake and recovery, the subscription's
answer, which frames end a session and how, heartbeats, frame size, and the probe
(test_daemon.py covers the whole path against the emulator)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from websockets.asyncio.server import ServerConnection, serve

from a2pd import counts, protocol
from a2pd.config import ConnectionConfig
from a2pd.errors import (
    A2pdError,
    ConfigError,
    ConnectionLost,
    FatalPlatformError,
    RateLimited,
    SubscriptionLimit,
)
from a2pd.protocol import Wsc
from a2pd.session import SessionState, connect_url, probe_subscription, run_session
from tests.harness import TIMEOUT

FILTERS = ["/restapi/v1.0/account/~/a2p-sms/messages", "/restapi/v1.0/account/~/a2p-sms/batches"]
LIMIT = 64 * 1024  # the smallest max_frame_bytes
#: keep-alive timers out of the way unless a test is about them
QUIET = {"heartbeat_interval": 600.0, "keepalive_interval": 600.0, "heartbeat_timeout": 600.0,
         "max_frame_bytes": LIMIT}
Script = Callable[[ServerConnection], Awaitable[None]]


def frame(header: dict[str, Any], body: Any = None) -> str:
    return json.dumps([header] if body is None else [header, body])


def details(recovery: str | None = None, *, wsc: str = "wsc-1", sequence: int = 0) -> str:
    """A ConnectionDetails frame (recoveryTimeout 90 s)."""
    body = {"recoveryTimeout": 90} if recovery is None else {"recoveryTimeout": 90,
                                                             "recoveryState": recovery}
    return frame({"type": "ConnectionDetails", "messageId": "cd", "status": 200,
                  "wsc": {"token": wsc, "sequence": sequence}}, body)


def error(code: str, status: int = 400) -> str:
    return frame({"type": "Error", "status": status}, {"errorCode": code, "message": code})


def notification(n: int, sequence: int) -> str:
    return frame({"type": "ServerNotification", "messageId": f"m{n}", "status": 200,
                  "wsc": {"token": f"wsc-{sequence}", "sequence": sequence}},
                 {"uuid": f"u{n}", "event": "/x", "body": {}})


def subscription(subscription_id: str = "sub-1", **extra: Any) -> dict[str, Any]:
    return {"id": subscription_id, "status": "Active", "eventFilters": FILTERS, **extra}


async def answer(ws: ServerConnection, status: int, body: Any) -> list[Any]:
    """Read one ClientRequest and answer it with ``status`` and ``body``; the request."""
    request: list[Any] = json.loads(await ws.recv())
    await ws.send(frame({"type": "ClientRequest", "messageId": request[0]["messageId"],
                         "status": status}, body))
    return request


@asynccontextmanager
async def gateway(script: Script) -> AsyncIterator[str]:
    """A WebSocket server on loopback running ``script`` per connection; its URL."""
    async with serve(script, "127.0.0.1", 0, ping_interval=None, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws?access_token=wst"


class Client:
    """run_session's caller: the state it keeps and what the session handed it."""

    def __init__(self, state: SessionState | None = None) -> None:
        self.state = state or SessionState()
        self.notifications: list[str] = []
        self.bad_frames: list[bytes] = []
        self.subscribed = anyio.Event()
        #: the notification handler waits for this (backpressure while unset)
        self.release = anyio.Event()
        self.release.set()

    async def run(self, script: Script, *, presented_wsc: bool = False,
                  **connection: Any) -> A2pdError:
        """One session against ``script``; the error it ended with."""

        async def on_notification(message: protocol.ServerNotification) -> None:
            self.notifications.append(message.body["uuid"])
            await self.release.wait()

        async def on_bad_frame(bad: protocol.FrameError) -> None:
            self.bad_frames.append(bad.raw)

        async with gateway(script) as url:
            with anyio.fail_after(TIMEOUT):
                try:
                    await run_session(url, filters=FILTERS, state=self.state,
                                      cfg=ConnectionConfig(**{**QUIET, **connection}),
                                      on_notification=on_notification,
                                      on_bad_frame=on_bad_frame, presented_wsc=presented_wsc,
                                      oauth_session="oauth-1", on_subscribed=self.subscribed.set)
                except A2pdError as exc:
                    return exc
        raise AssertionError("run_session returned")


@pytest.mark.parametrize(("uri", "wsc", "url"), [
    ("wss://ws.test/ws", None, "wss://ws.test/ws?access_token=a%2Fb%2Bc%3D%26"),
    ("wss://ws.test/ws?x=1", Wsc(token="w=1&2", sequence=3),
     "wss://ws.test/ws?x=1&access_token=a%2Fb%2Bc%3D%26&wsc=w%3D1%262"),
])
def test_the_connect_url_carries_the_token_and_the_wsc_percent_encoded(
        uri: str, wsc: Wsc | None, url: str) -> None:
    """connect_url appends access_token (and wsc), percent-encoded, to the URI's own query."""
    assert connect_url(uri, "a/b+c=&", wsc) == url


@pytest.mark.parametrize("recovery", [None, "Successful", "Failed"])
async def test_the_handshake_decides_whether_to_subscribe_and_what_outlives_the_session(
        recovery: str | None) -> None:
    """Only a successful recovery skips the subscription; the rest outlives it in SessionState."""
    recovered = recovery == "Successful"
    requests: list[list[Any]] = []

    async def script(ws: ServerConnection) -> None:
        await ws.send(details(recovery, wsc="wsc-0" if recovered else "wsc-1",
                              sequence=5 if recovered else 0))
        if not recovered:
            requests.append(await answer(ws, 200, subscription("sub-1")))
        await client.subscribed.wait()
        await ws.send(error("WSG-902"))
        await ws.wait_closed()

    client = Client(SessionState(subscription_id="sub-0", wsc=Wsc(token="wsc-0", sequence=5)))
    await client.run(script, presented_wsc=recovery is not None)
    state = client.state
    if recovered:
        assert (state.subscription_id, state.stale_subscriptions, requests) == ("sub-0", [], [])
        assert state.wsc == Wsc(token="wsc-0", sequence=5)
    else:
        assert (state.subscription_id, state.stale_subscriptions) == ("sub-1", ["sub-0"])
        [(header, body)] = requests
        assert (header["method"], header["path"]) == ("POST", protocol.SUBSCRIPTION_PATH)
        assert body["eventFilters"] == FILTERS
        assert state.wsc == Wsc(token="wsc-1", sequence=0)
    assert (state.wsc_oauth_session, state.recovery_timeout) == ("oauth-1", 90.0)
    assert state.disconnected_at is not None
    assert not state.connected
    assert state.counters[counts.RECOVERIES_SUCCESSFUL] == recovered
    assert state.counters[counts.RECOVERIES_FAILED] == (recovery == "Failed")


@pytest.mark.parametrize(("stage", "last", "code", "recoverable"), [
    ("handshake", error("WSG-400"), "WSG-400", False),
    ("handshake", error("OAU-128", 401), "OAU-128", True),
    ("handshake", frame({"type": "Heartbeat", "messageId": "h"}), None, False),
    ("session", error("WSG-902"), "WSG-902", True),
    ("session", error("WSG-903"), "WSG-903", True),
    ("session", error("WSG-400"), "WSG-400", False),
    ("session", None, "close-1000", True),
    ("session", "x" * (LIMIT + 1), "close-1009", False),
], ids=["refused-WSG-400", "refused-OAU-128", "not-details", "WSG-902", "WSG-903", "WSG-400",
        "closed", "oversized"])
async def test_how_the_gateway_ends_a_session_decides_whether_recovery_is_worth_it(
        stage: str, last: str | None, code: str | None, recoverable: bool) -> None:
    """Each way the gateway ends a session is recoverable or not; WSG-400 forgets the wsc."""
    saved = Wsc(token="wsc-0", sequence=5)

    async def script(ws: ServerConnection) -> None:
        if stage == "session":
            await ws.send(details("Successful", wsc="wsc-0", sequence=5))
            await client.subscribed.wait()
        if last is not None:  # else the handler returns: websockets closes with 1000
            await ws.send(last)
            await ws.wait_closed()

    client = Client(SessionState(subscription_id="sub-0", wsc=saved))
    ended = await client.run(script, presented_wsc=True)
    assert isinstance(ended, ConnectionLost)
    assert (ended.code, ended.recoverable) == (code, recoverable)
    forgotten = stage == "handshake" and code == "WSG-400"
    assert client.state.wsc == (None if forgotten else saved)
    assert (client.state.disconnected_at is None) is (stage == "handshake")
    assert client.state.counters[counts.FRAMES_OVERSIZED] == (code == "close-1009")


@pytest.mark.parametrize(("status", "body", "kind", "subscription_id"), [
    (429, {"errorCode": "CMN-301"}, RateLimited, None),
    (403, {"errorCode": "SUB-505"}, SubscriptionLimit, None),
    (403, {"errorCode": "SUB-528"}, FatalPlatformError, None),
    (403, {"errorCode": "CMN-408"}, FatalPlatformError, None),
    (400, {"errorCode": "SUB-508"}, ConfigError, None),
    (503, {"errorCode": "CMN-211"}, ConnectionLost, None),
    (200, {"status": "Active"}, ConnectionLost, None),
    (200, subscription(disabledFilters=[{"filter": f} for f in FILTERS]), ConfigError, None),
    (200, subscription(disabledFilters=[{"filter": FILTERS[0]}]), ConnectionLost, "sub-1"),
])
async def test_the_subscription_answer_is_classified(
        status: int, body: Any, kind: type[A2pdError], subscription_id: str | None) -> None:
    """Each refused subscription answer raises its own error; some disabled filters do not."""

    async def script(ws: ServerConnection) -> None:
        await ws.send(details())
        await answer(ws, status, body)
        if subscription_id is not None:
            await client.subscribed.wait()
            await ws.send(error("WSG-902"))
        await ws.wait_closed()

    client = Client()
    ended = await client.run(script)
    assert type(ended) is kind
    assert client.state.subscription_id == subscription_id
    if isinstance(ended, RateLimited):
        assert ended.retry_after == 30.0
    if isinstance(ended, ConnectionLost) and status == 503:
        assert not ended.recoverable


async def test_a_refusal_and_the_end_of_the_connection_at_once_raise_one_error() -> None:
    """A refused subscription and a gateway error at once still raise one A2pdError, the
    refusal (regression: two except* clauses each raised, so an ExceptionGroup escaped)."""

    async def script(ws: ServerConnection) -> None:
        await ws.send(details())
        await answer(ws, 429, {"errorCode": "CMN-301"})
        await ws.send(error("WSG-902"))
        await ws.wait_closed()

    ended = await Client().run(script)
    assert isinstance(ended, RateLimited)  # the refusal says more than the loss


async def test_bad_unknown_and_other_error_frames_do_not_end_a_session() -> None:
    """Malformed, unknown and other error frames never end a session; only a newer wsc is kept."""
    frames = ["{oops", "x" * LIMIT, notification(1, 3), frame({"type": "Surprise"}),
              frame({"type": "Heartbeat"}), error("WSG-999"), notification(2, 2)]

    async def script(ws: ServerConnection) -> None:
        await ws.send(details())
        await answer(ws, 200, subscription())
        for text in [*frames, error("WSG-903")]:
            await ws.send(text)
        await ws.wait_closed()

    client = Client()
    ended = await client.run(script)
    assert isinstance(ended, ConnectionLost)
    assert ended.code == "WSG-903"
    assert client.bad_frames == [b"{oops", b"x" * LIMIT]
    assert client.notifications == ["u1", "u2"]
    assert client.state.wsc == Wsc(token="wsc-3", sequence=3)
    # the subscription's answer, these frames and the error that ended it
    assert client.state.counters[counts.FRAMES] == len(frames) + 2


@pytest.mark.parametrize(("case", "timers", "code", "sent", "deferred"), [
    ("inbound silence", {"heartbeat_interval": 0.05}, "WSG-902", 2, 0),
    ("outbound silence", {"keepalive_interval": 0.05}, "WSG-902", 2, 0),
    ("no answer", {"heartbeat_interval": 0.05, "heartbeat_timeout": 0.1}, None, 1, 0),
    ("handler stalls", {"heartbeat_interval": 0.05, "heartbeat_timeout": 0.1}, None, 2, 1),
])
async def test_heartbeats_after_silence_and_what_an_unanswered_one_means(
        case: str, timers: dict[str, Any], code: str | None, sent: int, deferred: int) -> None:
    """Silence sends a Heartbeat; an unanswered one ends the session unless a handler waits."""
    received: list[str] = []

    async def script(ws: ServerConnection) -> None:
        await ws.send(details())
        await answer(ws, 200, subscription())
        if case == "handler stalls":
            await ws.send(notification(1, 1))
        if code is not None:
            for _ in range(2):
                header = json.loads(await ws.recv())[0]
                received.append(header["type"])
                await ws.send(frame({"type": "Heartbeat", "messageId": header["messageId"]}))
            await ws.send(error(code))
        await ws.wait_closed()

    client = Client()
    if case == "handler stalls":
        client.release = anyio.Event()
    ended: list[A2pdError] = []

    async def run() -> None:
        ended.append(await client.run(script, **timers))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        if deferred:
            with anyio.fail_after(TIMEOUT):
                await client.state.counters.wait_for(counts.HEARTBEATS_DEFERRED, 1)
            client.release.set()
    [lost] = ended
    assert isinstance(lost, ConnectionLost)
    assert (lost.code, lost.recoverable) == (code, True)
    assert received == (["Heartbeat", "Heartbeat"] if code else [])
    counters = client.state.counters
    assert (counters[counts.HEARTBEATS_SENT], counters[counts.HEARTBEATS_DEFERRED]) == (
        sent, deferred)


@pytest.mark.parametrize(("subscribed", "deleted"), [(200, 200), (200, 404), (403, None)])
async def test_the_probe_deletes_what_it_created_and_reports_the_answer(
        subscribed: int, deleted: int | None) -> None:
    """probe_subscription reports the answer and deletes (id encoded) only what it created."""
    requests: list[list[Any]] = []

    async def script(ws: ServerConnection) -> None:
        await ws.send(details())
        body = subscription("sub/1") if subscribed == 200 else {"errorCode": "SUB-528"}
        requests.append(await answer(ws, subscribed, body))
        if deleted is not None:
            requests.append(await answer(ws, deleted, None))
        await ws.wait_closed()

    async with gateway(script) as url:
        with anyio.fail_after(TIMEOUT):
            probe = await probe_subscription(url, FILTERS, ConnectionConfig(**QUIET))
    assert probe.reply.header.status == subscribed
    assert (probe.info.id if probe.info else None) == ("sub/1" if subscribed == 200 else None)
    assert probe.deleted is (deleted == 200)
    assert [request[0]["method"] for request in requests] == (
        ["POST"] if deleted is None else ["POST", "DELETE"])
    if deleted is not None:
        assert requests[1][0]["path"] == protocol.SUBSCRIPTION_PATH + "/sub%2F1"
