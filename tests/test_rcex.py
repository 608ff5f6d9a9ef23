"""RingCentral's own client agrees with the emulator: the TypeScript WebSocket extension of
ringcentral-extensible (@rc-ex/ws, installed by .ci/setup into tests/rcex/node_modules) logs
in with a JWT, subscribes, receives a notification, and recovers a dropped session with its
``wsc``, getting what was sent meanwhile replayed (tests/rcex/agree.cjs)."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from tests.harness import TIMEOUT, emulator, seed

SCRIPT = Path(__file__).parent / "rcex" / "agree.cjs"
FILTER = "/restapi/v1.0/account/~/a2p-sms/messages?direction=Outbound"


def message(msg_id: str) -> dict[str, Any]:
    """An outbound message body stamped now."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {**seed("outbound.json")["body"], "id": msg_id, "creationTime": now,
            "lastModifiedTime": now}


async def next_line(lines: BufferedByteReceiveStream, key: str) -> Any:
    """The value of the next line the client printed that has ``key`` (errors fail)."""
    with anyio.fail_after(TIMEOUT):
        while True:
            line = json.loads(await lines.receive_until(b"\n", 1 << 20))
            assert "error" not in line, line["error"]
            if key in line:
                return line[key]


async def until_recovered_with(lines: BufferedByteReceiveStream, msg_id: str,
                               ) -> tuple[str, list[str]]:
    """Follow the client until it said it recovered and printed ``msg_id``: the recovery
    state and the ids of the events it printed meanwhile."""
    recovered: str | None = None
    seen: list[str] = []
    with anyio.fail_after(TIMEOUT):
        while recovered is None or msg_id not in seen:
            line = json.loads(await lines.receive_until(b"\n", 1 << 20))
            assert "error" not in line, line["error"]
            recovered = line.get("recovered", recovered)
            if "event" in line:
                seen.append(line["event"]["id"])
    return recovered, seen


async def test_rcex_ws_subscribes_receives_and_recovers_with_wsc() -> None:
    """@rc-ex/ws logs in, subscribes, gets a notification; after an abrupt drop it recovers
    (recoveryState Successful, same subscription) and gets the notification sent while it
    was away, replayed."""
    node = shutil.which("node")
    assert node is not None, "node is needed (.ci/setup installs it)"
    assert (SCRIPT.parent / "node_modules" / "@rc-ex" / "ws").is_dir(), \
        "run .ci/setup: it installs @rc-ex/ws into tests/rcex/node_modules"
    emu = emulator()
    async with emu.running():
        config = emu.config
        process: Process = await anyio.open_process(
            [node, str(SCRIPT), emu.base_url, config.client_id, config.client_secret,
             config.jwt, FILTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        async with process:
            assert process.stdout is not None
            assert process.stdin is not None
            lines = BufferedByteReceiveStream(process.stdout)
            subscription = await next_line(lines, "ready")
            assert subscription == emu.gateway.active_subscription()
            await emu.publish("message", message("rcex-live"))
            assert (await next_line(lines, "event"))["id"] == "rcex-live"
            await emu.drop_connections(mode="abrupt")
            await emu.publish("message", message("rcex-away"))  # nobody is connected
            recovered, seen = await until_recovered_with(lines, "rcex-away")
            assert recovered == "Successful"
            # the replay starts after the wsc the client holds: with none on notifications
            # (the emulator's default, as in the docs' samples) that is the ConnectionDetails'
            # one, so what it had received comes again too (a client dedups by uuid)
            assert set(seen) <= {"rcex-live", "rcex-away"}
            assert seen.count("rcex-away") == 1
            assert emu.gateway.active_subscription() == subscription
            assert any(info.recovered for info in emu.gateway.connection_infos())
            await process.stdin.aclose()
            with anyio.fail_after(TIMEOUT):
                assert await process.wait() == 0
