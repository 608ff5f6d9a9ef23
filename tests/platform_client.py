"""A raw client of the in-process emulator, for the emulator's own tests: its HTTP endpoints
over httpx, its WebSocket gateway as JSON frames (``Socket``), and the A2P bodies those tests
publish. Every wait is bounded by harness.TIMEOUT.

    platform                     a running emulator and an HTTP client pointed at it
    grant, login, refresh, ws_token, basic    OAuth calls
    Socket, open_socket, session, closed      the WebSocket gateway
    OUTBOUND, INBOUND, BATCH, OPTOUT, A2P, ACCOUNT, ALL_FILTERS    what they publish and ask for

The daemon's own client is never used here: these tests hold the emulator to the platform's
protocol on their own.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from a2pd.emulator import DEFAULT_JWT, Emulator, EmulatorConfig
from tests.harness import TIMEOUT

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ACCOUNT = "400123456789"
A2P = "/restapi/v1.0/account/~/a2p-sms"
SENDER = "+16505550111"
RECIPIENT = "+12406680432"

OUTBOUND = {
    "id": "90011", "batchId": "a1b2c3d4-0000-4000-8000-0000000000b1", "from": SENDER,
    "to": ["+14155550122"], "text": "Your appointment is tomorrow at 10:00",
    "direction": "Outbound", "messageStatus": "Delivered", "segmentCount": 1, "cost": 0.007,
    "creationTime": "2026-01-10T08:09:56.000000Z",
    "lastModifiedTime": "2026-01-10T08:10:01.500000Z",
}
INBOUND = {
    "id": "7119", "from": "+19287680662", "to": [RECIPIENT], "text": "Thank you",
    "direction": "Inbound", "messageStatus": "Delivered", "segmentCount": 1, "cost": 0.007,
    "creationTime": "2021-05-26T04:16:42.985974Z",
    "lastModifiedTime": "2021-05-26T04:16:42.985974Z",
}
BATCH = {
    "id": "a1b2c3d4-0000-4000-8000-0000000000b1", "from": SENDER, "batchSize": 3,
    "processedCount": 3, "status": "Completed", "creationTime": "2026-01-10T08:09:55.100000Z",
    "lastModifiedTime": "2026-01-10T08:09:59.900000Z", "cost": 0.021,
}
OPTOUT = {"from": SENDER, "to": "+14155550122", "active": True}
ALL_FILTERS = [f"{A2P}/batches", f"{A2P}/messages", f"{A2P}/opt-outs"]


@asynccontextmanager
async def platform(**overrides: Any) -> AsyncIterator[tuple[Emulator, httpx.AsyncClient]]:
    """A running emulator and an HTTP client pointed at it."""
    emu = Emulator(EmulatorConfig(**overrides))
    async with emu.running(), httpx.AsyncClient(base_url=emu.base_url,
                                                timeout=TIMEOUT) as http:
        yield emu, http


def basic(client_id: str = "demo-client-id",
          secret: str = "demo-client-secret") -> str:  # noqa: S107 - the demo secret
    """A Basic authorization header value."""
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


async def grant(http: httpx.AsyncClient, **form: str) -> httpx.Response:
    """POST a JWT grant (fields overridable), Basic client auth."""
    data = {"grant_type": JWT_GRANT, "assertion": DEFAULT_JWT, **form}
    return await http.post("/restapi/oauth/token", data=data,
                           headers={"Authorization": basic()})


async def login(http: httpx.AsyncClient) -> dict[str, Any]:
    """A fresh OAuth session's TokenInfo."""
    response = await grant(http)
    assert response.status_code == 200, response.text
    info: dict[str, Any] = response.json()
    return info


async def refresh(http: httpx.AsyncClient, refresh_token: str) -> httpx.Response:
    """POST a refresh grant."""
    return await http.post("/restapi/oauth/token",
                           data={"grant_type": "refresh_token", "refresh_token": refresh_token},
                           headers={"Authorization": basic()})


async def ws_token(http: httpx.AsyncClient, access_token: str) -> dict[str, Any]:
    """A WS token for the session behind ``access_token``."""
    response = await http.post("/restapi/oauth/wstoken",
                               headers={"Authorization": f"Bearer {access_token}"})
    assert response.status_code == 200, response.text
    doc: dict[str, Any] = response.json()
    return doc


class Socket:
    """A raw-frame WebSocket client: JSON arrays in and out, requests matched by messageId."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.held: list[list[Any]] = []

    async def frame(self) -> list[Any]:
        """The next frame (held frames first)."""
        if self.held:
            return self.held.pop(0)
        async with asyncio.timeout(TIMEOUT):
            data = await self.ws.recv()
        frame: list[Any] = json.loads(data)
        return frame

    async def send(self, frame: object) -> None:
        """Send one frame as JSON."""
        await self.ws.send(json.dumps(frame))

    async def request(self, method: str, path: str, body: object = None) -> list[Any]:
        """A ClientRequest; returns the reply with the same messageId, holding other frames."""
        message_id = str(uuid.uuid4())
        header = {"type": "ClientRequest", "messageId": message_id, "method": method,
                  "path": path}
        await self.send([header] if body is None else [header, body])
        return await self.reply(message_id)

    async def reply(self, message_id: str) -> list[Any]:
        """The frame answering ``message_id``; frames before it are held."""
        while True:
            async with asyncio.timeout(TIMEOUT):
                frame: list[Any] = json.loads(await self.ws.recv())
            if frame[0].get("messageId") == message_id:
                return frame
            self.held.append(frame)

    async def subscribe(self, filters: list[str]) -> dict[str, Any]:
        """POST a subscription; the SubscriptionInfo body."""
        reply = await self.request("POST", "/restapi/v1.0/subscription/", {
            "eventFilters": filters, "deliveryMode": {"transportType": "WebSocket"}})
        assert reply[0]["status"] == 200, reply
        info: dict[str, Any] = reply[1]
        return info

    async def notification(self) -> dict[str, Any]:
        """The body of the next ServerNotification frame."""
        while True:
            frame = await self.frame()
            if frame[0]["type"] == "ServerNotification":
                body: dict[str, Any] = frame[1]
                return body


@asynccontextmanager
async def open_socket(emu: Emulator, token: str | None,
                      wsc: str | None = None) -> AsyncIterator[Socket]:
    """A WebSocket to the emulator with ``access_token`` (and ``wsc``) on the URL."""
    url = emu.ws_url
    params = [f"access_token={token}"] if token is not None else []
    if wsc is not None:
        params.append(f"wsc={wsc}")
    if params:
        url += "?" + "&".join(params)
    async with connect(url, open_timeout=TIMEOUT, close_timeout=TIMEOUT,
                       ping_interval=None) as ws:
        yield Socket(ws)


@asynccontextmanager
async def session(emu: Emulator, http: httpx.AsyncClient, tokens: dict[str, Any] | None = None,
                  wsc: str | None = None) -> AsyncIterator[tuple[Socket, list[Any]]]:
    """A socket on a fresh WS token (of ``tokens``' session or a new one) and its first frame."""
    tokens = tokens if tokens is not None else await login(http)
    ws = await ws_token(http, tokens["access_token"])
    async with open_socket(emu, ws["ws_access_token"], wsc) as sock:
        yield sock, await sock.frame()


async def closed(sock: Socket) -> ConnectionClosed:
    """Wait for the socket to be closed by the server; the close exception."""
    async def drain() -> None:
        async with asyncio.timeout(TIMEOUT):
            while True:
                await sock.ws.recv()

    with pytest.raises(ConnectionClosed) as info:
        await drain()
    return info.value
