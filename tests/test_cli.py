"""The a2pd process: exit codes, signals, JSON logs on stderr, and no secret in any log line."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

from tests.harness import TIMEOUT, emulator, read_records, seed
from tests.processes import read_until, started, stderr_lines, write_config


async def drain(stream: BufferedByteReceiveStream, lines: list[str]) -> None:
    """Collect every remaining stderr line."""
    while True:
        try:
            lines.append((await stream.receive_until(b"\n", 1 << 20)).decode())
        except anyio.IncompleteRead:
            return
        except anyio.EndOfStream:
            return


async def test_run_delivers_then_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """`a2pd run` subscribes, delivers, exits 0 on SIGTERM, and logs JSON without secrets."""
    emu = emulator()
    async with emu.running():
        config = write_config(tmp_path, emu)
        lines: list[str] = []
        async with started(config, emu.config.jwt) as process:
            stream = stderr_lines(process)
            with anyio.fail_after(TIMEOUT):
                await read_until(stream, "subscribed", lines)
                await emu.publish("optout", seed("optout.json")["body"])
                await emu.publish("message", seed("inbound.json")["body"])
                await emu.drop_connections(mode="abrupt")
                await read_until(stream, "session_recovered", lines)
                process.send_signal(signal.SIGTERM)
                await drain(stream, lines)
                code = await process.wait()
    assert code == 0
    records = read_records(tmp_path / "events")
    assert sorted(r["kind"] for r in records) == ["inbound", "optout"]
    logs = [json.loads(line) for line in lines]
    assert {"subscribed", "session_recovered", "stopping", "stopped"} <= {e["event"] for e in logs}
    text = "\n".join(lines)
    for secret in emu_secrets(emu):
        assert secret not in text
    # nothing we wrote to disk holds the client secret or the JWT either
    for path in (tmp_path / "state").rglob("*"):
        if path.is_file():
            content = path.read_text(errors="replace")
            assert emu.config.client_secret not in content
            assert emu.config.jwt not in content


def emu_secrets(emu: object) -> list[str]:
    """Every secret the test knows: client secret, JWT, and tokens the emulator issued."""
    config = emu.config  # type: ignore[attr-defined]
    found = [config.client_secret, config.jwt]
    issued = getattr(emu, "issued_secrets", None)
    if callable(issued):
        found.extend(issued())
    return [s for s in found if s]


async def test_rejected_credentials_exit_77_with_one_clear_line(tmp_path: Path) -> None:
    """A wrong client secret stops the daemon with exit 77 and a clear message, no retries."""
    emu = emulator()
    async with emu.running():
        config = write_config(tmp_path, emu, "wrong-secret-value")
        lines: list[str] = []
        async with started(config, emu.config.jwt) as process:
            with anyio.fail_after(TIMEOUT):
                await drain(stderr_lines(process), lines)
                code = await process.wait()
    assert code == 77
    final = [line for line in lines if line.startswith("a2pd: stopped")]
    assert final
    assert "client id/secret" in final[0]
    assert "Traceback" not in "\n".join(lines)
    assert "wrong-secret-value" not in "\n".join(lines)
    assert sum(1 for r in emu.requests if r[1] == "/restapi/oauth/token") == 1


def test_version_command() -> None:
    """`a2pd version` prints the version."""
    result = subprocess.run([sys.executable, "-m", "a2pd", "version"], capture_output=True,
                            text=True, timeout=60, check=True)
    assert result.stdout.startswith("a2pd ")


def test_demo_runs_and_runs_again_in_the_same_directory(tmp_path: Path) -> None:
    """`a2pd demo` delivers events and stops cleanly; a second run in the same directory
    (same journal, same seed) delivers again: emulator uuids are unique across runs."""
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, "-m", "a2pd", "demo", "--duration", "3", "--rate", "50"],
            cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr[-2000:]
        kinds = {json.loads(line)["kind"] for line in result.stdout.splitlines()}
        assert {"batch", "outbound"} <= kinds
        assert "Traceback" not in result.stderr
    assert (tmp_path / "demo-output" / "events" / "batch").is_dir()


async def test_sighup_reopens_file_sinks(tmp_path: Path) -> None:
    """After logrotate moves a file away, SIGHUP (a reload of an unchanged config) makes
    the sink write a fresh one."""
    emu = emulator()
    async with emu.running():
        config = write_config(tmp_path, emu)
        lines: list[str] = []
        async with started(config, emu.config.jwt) as process:
            stream = stderr_lines(process)
            target = tmp_path / "events" / "optout.jsonl"
            with anyio.fail_after(TIMEOUT):
                await read_until(stream, "subscribed", lines)
                await emu.publish("optout", seed("optout.json")["body"])
                await read_until(stream, "delivered", lines)
                target.rename(tmp_path / "events" / "optout.jsonl.1")
                process.send_signal(signal.SIGHUP)
                await read_until(stream, "reloaded", lines)
                await emu.publish("optout", seed("optout.json")["body"])
                await read_until(stream, "delivered", lines)
                process.send_signal(signal.SIGTERM)
                await drain(stream, lines)
                assert await process.wait() == 0
    assert len(target.read_text().splitlines()) == 1
    assert len((tmp_path / "events" / "optout.jsonl.1").read_text().splitlines()) == 1


async def test_second_signal_skips_the_drain(tmp_path: Path) -> None:
    """A sink that cannot deliver holds the first SIGTERM in its drain; a second SIGTERM
    ends the daemon at once, with the undelivered events kept in the journal."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the sink wants a directory")
    emu = emulator()
    async with emu.running():
        config = write_config(tmp_path, emu,
                              delivery={"shutdown_timeout": "60s", "retry_max": 0.2})
        text = config.read_text().replace(str(tmp_path / "events"), str(blocker / "events"))
        config.write_text(text)
        lines: list[str] = []
        async with started(config, emu.config.jwt) as process:
            stream = stderr_lines(process)
            with anyio.fail_after(TIMEOUT):
                await read_until(stream, "subscribed", lines)
                await emu.publish("optout", seed("optout.json")["body"])
                await read_until(stream, "sink_retry", lines)
                process.send_signal(signal.SIGTERM)
                await read_until(stream, "stopping", lines)
                process.send_signal(signal.SIGTERM)
                await drain(stream, lines)
                code = await process.wait()
    assert code == 0
    incomplete = [json.loads(line) for line in lines if '"drain_incomplete"' in line]
    assert incomplete
    assert incomplete[0]["forced"] is True
    assert incomplete[0]["undelivered"] == {"archive": 1}
