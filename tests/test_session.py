"""The receive loop's ordering rules, on a stub socket (pure units; the emulator covers the
whole path in test_daemon.py)."""

from __future__ import annotations

import json
from typing import Any, cast

import anyio
from websockets.asyncio.client import ClientConnection

from a2pd import protocol
from a2pd.config import ConnectionConfig
from a2pd.session import SessionState
from a2pd.session.connection import Connection


class StubSocket:
    """Hands out queued frames, then waits forever; records what is sent."""

    def __init__(self, frames: list[str]) -> None:
        self.frames = frames
        self.sent: list[str] = []

    async def recv(self, decode: bool | None = None) -> bytes:
        assert decode is False  # a2pd reads frames as bytes, and decodes them itself
        if not self.frames:
            await anyio.sleep_forever()
        return self.frames.pop(0).encode()

    async def send(self, text: str) -> None:
        self.sent.append(text)


def notification(n: int) -> str:
    header = {"type": "ServerNotification", "messageId": f"m{n}", "status": 200,
              "wsc": {"token": f"wsc-{n}", "sequence": n}}
    return json.dumps([header, {"uuid": f"u{n}", "event": "/x", "body": {}}])


async def test_wsc_is_kept_only_after_the_handler_took_the_notification() -> None:
    """A handler cancelled mid-way (the journal was full and the session ended) must leave
    the recovery token at the previous notification, so recovery replays this one."""
    state = SessionState()
    handled: list[str] = []
    entered = anyio.Event()

    async def on_notification(message: protocol.ServerNotification) -> None:
        body = cast(dict[str, Any], message.body)
        if body["uuid"] == "u2":
            entered.set()
            await anyio.sleep_forever()  # waits for room that never comes
        handled.append(body["uuid"])

    async def on_bad_frame(frame: protocol.FrameError) -> None:
        raise AssertionError(frame.reason)

    socket = StubSocket([notification(1), notification(2)])
    conn = Connection(cast(ClientConnection, socket), ConnectionConfig(), state,
                       on_notification, on_bad_frame, oauth_session="s")
    async with anyio.create_task_group() as tg:
        tg.start_soon(conn.receive_loop)
        with anyio.fail_after(5):
            await entered.wait()
        assert conn.handling
        tg.cancel_scope.cancel()
    assert handled == ["u1"]
    assert state.wsc == protocol.Wsc(token="wsc-1", sequence=1)
    assert not conn.handling
