"""The two consumers a2pd is compared with, each run in its own process by bench/side_by_side.py.

    python bench/consumers.py limit SERVER OUT JWT   bare websockets loop: every frame, as
                                                   received, appended to OUT (one line each)
    python bench/consumers.py peer SERVER OUT JWT    the official RingCentral SDK's
                                                   WebSocketClient; each notification appended
                                                   to OUT as a JSON line by a callback

Both log in to the emulator at SERVER with its demo JWT, subscribe to every A2P filter and
reconnect at once when the socket drops (a new session and subscription: neither does
session recovery). Both write each line with one write() to the OS, like a2pd's file sink
hands each batch to the OS: what a tail reader can see, and no user-space buffering that
would hide latency. They run until killed.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from typing import Any

FILTERS = [
    "/restapi/v1.0/account/~/a2p-sms/batches",
    "/restapi/v1.0/account/~/a2p-sms/messages?direction=Inbound",
    "/restapi/v1.0/account/~/a2p-sms/messages?direction=Outbound",
    "/restapi/v1.0/account/~/a2p-sms/opt-outs",
]
CLIENT_ID, CLIENT_SECRET = "demo-client-id", "demo-client-secret"


async def limit(server: str, out: str, jwt: str) -> None:
    """What no Python consumer can beat: receive a frame, append it to the file. No
    parsing, no journal, no validation."""
    import httpx
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    async with httpx.AsyncClient(base_url=server, timeout=30) as http:
        reply = await http.post("/restapi/oauth/token", auth=(CLIENT_ID, CLIENT_SECRET), data={
            "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": jwt})
        access = reply.json()["access_token"]
        while True:
            token = (await http.post("/restapi/oauth/wstoken",
                                     headers={"Authorization": f"Bearer {access}"})).json()
            try:
                async with connect(f"{token['uri']}?access_token={token['ws_access_token']}",
                                   ping_interval=None, compression=None, max_size=None) as ws:
                    await ws.recv()  # ConnectionDetails
                    await ws.send(json.dumps([
                        {"type": "ClientRequest", "messageId": str(uuid.uuid4()),
                         "method": "POST", "path": "/restapi/v1.0/subscription/"},
                        {"eventFilters": FILTERS,
                         "deliveryMode": {"transportType": "WebSocket"}}]))
                    while True:
                        os.write(fd, await ws.recv(decode=False) + b"\n")
            except (ConnectionClosed, OSError):
                continue  # reconnect at once


def peer(server: str, out: str, jwt: str) -> None:
    """What a user of the official SDK would write instead of a2pd."""
    from ringcentral import SDK  # type: ignore[import-untyped]
    from ringcentral.websocket.events import WebSocketEvents  # type: ignore[import-untyped]

    sdk = SDK(CLIENT_ID, CLIENT_SECRET, server)
    sdk.platform().login(jwt=jwt)
    sink = open(out, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - for the process' life

    def on_notification(message: list[Any]) -> None:
        sink.write(json.dumps(message[1]) + "\n")

    async def run() -> None:
        while True:
            client = sdk.create_web_socket_client()
            client.on(WebSocketEvents.receiveSubscriptionNotification, on_notification)
            client.on(WebSocketEvents.connectionCreated,
                      lambda c: asyncio.ensure_future(c.create_subscription(FILTERS)))
            try:
                await client.create_new_connection()
            except Exception:
                continue  # the socket dropped: reconnect at once

    asyncio.run(run())


if __name__ == "__main__":
    which, server, out, jwt = sys.argv[1:5]
    if which == "limit":
        asyncio.run(limit(server, out, jwt))
    elif which == "peer":
        peer(server, out, jwt)
    else:
        raise SystemExit(f"unknown consumer {which!r}")
