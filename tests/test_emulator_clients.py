"""Third-party clients against the emulator: the official RingCentral SDK, and its own CLI."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from typing import Any

import httpx
from ringcentral import SDK  # type: ignore[import-untyped]
from ringcentral.websocket.events import WebSocketEvents  # type: ignore[import-untyped]
from websockets.exceptions import ConnectionClosed

from a2pd.emulator import DEFAULT_JWT, Emulator, EmulatorConfig
from a2pd.emulator.cli import main
from tests.harness import TIMEOUT

FILTERS = ["/restapi/v1.0/account/~/a2p-sms/opt-outs",
           "/restapi/v1.0/account/~/a2p-sms/messages?direction=Inbound"]
OPTOUT = {"from": "+16505550100", "to": "+12125550100", "active": True}


def run_sdk(base_url: str) -> list[Any]:
    """In a worker thread: log in with the SDK, subscribe over its WebSocket client, and
    return the first notification it hands to its listener."""
    sdk = SDK("demo-client-id", "demo-client-secret", base_url)
    sdk.platform().login(jwt=DEFAULT_JWT)
    # the SDK makes blocking HTTP calls inside its coroutines: give it its own event loop
    return asyncio.run(_sdk_websocket(sdk))


async def _sdk_websocket(sdk: SDK) -> list[Any]:
    client = sdk.create_web_socket_client()
    connected = asyncio.Event()
    notified = asyncio.Event()
    notifications: list[Any] = []

    def on_notification(message: list[Any]) -> None:
        notifications.append(message)
        notified.set()

    client.on(WebSocketEvents.connectionCreated, lambda _client: connected.set())
    client.on(WebSocketEvents.receiveSubscriptionNotification, on_notification)
    connection = asyncio.create_task(client.create_new_connection())
    try:
        async with asyncio.timeout(TIMEOUT):
            await connected.wait()
        await client.create_subscription(FILTERS)
        async with asyncio.timeout(TIMEOUT):
            await notified.wait()
    finally:
        await client.close_connection()
        with contextlib.suppress(ConnectionClosed):
            await connection
    return notifications


async def test_the_official_sdk_logs_in_subscribes_and_gets_a_notification() -> None:
    """ringcentral's SDK: JWT login, wstoken, WebSocketClient subscription, a notification."""
    emu = Emulator(EmulatorConfig())
    async with emu.running():
        worker = asyncio.create_task(asyncio.to_thread(run_sdk, emu.base_url))
        subscription_id = await emu.wait_for_subscription(timeout=TIMEOUT)
        assert await emu.publish("optout", OPTOUT) == 1
        async with asyncio.timeout(TIMEOUT):
            notifications = await worker
    header, body = notifications[0]
    assert header["type"] == "ServerNotification"
    assert body["body"] == OPTOUT
    assert body["subscriptionId"] == subscription_id
    assert body["event"] == "/restapi/v1.0/account/400123456789/a2p-sms/opt-outs"
    assert [r[:2] for r in emu.requests] == [("POST", "/restapi/oauth/token"),
                                             ("POST", "/restapi/oauth/wstoken")]


async def serving_then_sigint(process: asyncio.subprocess.Process,
                              line: str) -> tuple[bytes, bytes]:
    """The emulator whose first line was ``line`` answers its health check; SIGINT; what
    it wrote (stdout, stderr) until it ended."""
    found = re.fullmatch(r"emulator listening on (http://127\.0\.0\.1:\d+)", line)
    assert found, line
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        health = await http.get(found[1] + "/_emulator/health")
    assert health.json()["status"] == "ok"
    process.send_signal(signal.SIGINT)
    async with asyncio.timeout(TIMEOUT):
        return await process.communicate()


async def reap(process: asyncio.subprocess.Process) -> None:
    """Kill ``process`` if a failed test left it running."""
    if process.returncode is None:
        process.kill()
        await process.wait()


async def test_the_cli_prints_where_it_listens_and_stops_on_sigint() -> None:
    """`python -m a2pd.emulator --port 0` prints its URL, serves, and exits 0 on SIGINT."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "a2pd.emulator", "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert process.stdout is not None
        async with asyncio.timeout(TIMEOUT):
            line = (await process.stdout.readline()).decode().strip()
        out, err = await serving_then_sigint(process, line)
    finally:
        await reap(process)
    assert process.returncode == 0, err
    assert b"demo-client-id" in out
    assert b"Traceback" not in err


def test_the_cli_refuses_a_bad_port_with_ex_config() -> None:
    """An impossible port is a configuration error: exit code 78."""
    assert main(["--port", "70000"]) == 78


def test_the_cli_refuses_an_unknown_permission_with_ex_config() -> None:
    """`--app-permissions` takes only the permission names a2pd knows: exit code 78."""
    assert main(["--app-permissions", "A2PSMS,ReadAcounts"]) == 78


async def test_the_cli_keeps_serving_when_its_reader_goes_and_stops_cleanly() -> None:
    """`a2pd emulator --port 0 | head -1`: the reader goes after the first line; the
    emulator keeps serving, and SIGINT stops it with exit 0 and nothing on stderr (no
    "cannot listen", no broken pipe, no traceback)."""
    read_end, write_end = os.pipe()
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "a2pd.emulator", "--port", "0",
            stdout=write_end, stderr=asyncio.subprocess.PIPE)
    finally:
        os.close(write_end)
    try:
        with open(read_end, "rb", buffering=0) as reader:
            async with asyncio.timeout(TIMEOUT):
                line = (await asyncio.to_thread(reader.readline)).decode().strip()
        # the pipe has no reader any more, as after `head -1`: its "emulator stopping" line
        # meets EPIPE
        _, err = await serving_then_sigint(process, line)
    finally:
        await reap(process)
    assert process.returncode == 0, err
    assert err == b""


async def test_the_cli_sets_up_the_app_as_its_flags_say() -> None:
    """`--app-permissions` and `--no-refresh-tokens`: the token reply's scope lists just
    those permissions, and it carries no refresh token."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "a2pd.emulator", "--port", "0",
        "--app-permissions", "ReadAccounts,A2PSMS", "--no-refresh-tokens",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert process.stdout is not None
        async with asyncio.timeout(TIMEOUT):
            line = (await process.stdout.readline()).decode().strip()
        found = re.fullmatch(r"emulator listening on (http://127\.0\.0\.1:\d+)", line)
        assert found, line
        async with httpx.AsyncClient(base_url=found[1], timeout=TIMEOUT) as http:
            reply = await http.post(
                "/restapi/oauth/token", auth=("demo-client-id", "demo-client-secret"),
                data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                      "assertion": DEFAULT_JWT})
        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(TIMEOUT):
            _, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert reply.status_code == 200, reply.text
    assert reply.json()["scope"] == "A2PSMS ReadAccounts"
    assert "refresh_token" not in reply.json()
    assert process.returncode == 0, err
