"""``a2pd run`` as a child process, for the tests that need a real process (exit codes,
signals, SIGKILL, sd_notify, restarts): its config file, the process, its JSON log lines.

    write_config, crash_config   the config file a child daemon reads (harness.settings_text's)
    started                      ``a2pd run -c config``, killed on the way out if it still runs
    stderr_lines, read_until     its stderr, read up to a log event
    run_then_kill, BATCH_MAX     a burst of traffic, then SIGKILL mid-delivery

A child process reads its config from a file, never from the test: the client secret sits in
a file beside it and the JWT comes from $A2PD_JWT, which ``started`` sets.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from a2pd.emulator import Emulator
from tests.harness import TIMEOUT, settings_text

#: the largest batch a daemon of ``crash_config`` delivers
BATCH_MAX = 64


def write_config(tmp_path: Path, emu: Emulator, secret: str | None = None,
                 **options: Any) -> Path:
    """``tmp_path/a2pd.toml``: a config pointing at ``emu`` (``options`` are
    ``settings_text``'s), the client secret (``secret``, or the emulator's) in a file beside
    it, the JWT left to $A2PD_JWT."""
    secret_file = tmp_path / "client_secret"
    secret_file.write_text((secret if secret is not None else emu.config.client_secret) + "\n")
    path = tmp_path / "a2pd.toml"
    path.write_text(settings_text(emu, tmp_path, client_secret_file=secret_file, **options))
    return path


def crash_config(tmp_path: Path, emu: Emulator, **options: Any) -> Path:
    """``write_config``'s, for ``run_then_kill``: commits every 20 ms, batches of at most
    ``BATCH_MAX`` events, so a kill lands while batches are committed and delivered."""
    return write_config(tmp_path, emu, journal={"commit_interval": 0.02},
                        delivery={"batch_max": BATCH_MAX}, **options)


@asynccontextmanager
async def started(config: Path, jwt: str,
                  env: dict[str, str] | None = None) -> AsyncIterator[Process]:
    """``a2pd run -c config`` as a child process; killed on the way out if it still runs
    (a failed test must not wait for a daemon nobody stops)."""
    env = {**os.environ, "A2PD_JWT": jwt, "PYTHONUNBUFFERED": "1", **(env or {})}
    process = await anyio.open_process(
        [sys.executable, "-m", "a2pd", "run", "-c", str(config)], env=env,
        stdin=subprocess.DEVNULL)
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        with anyio.CancelScope(shield=True):
            await process.aclose()


def stderr_lines(process: Process) -> BufferedByteReceiveStream:
    assert process.stderr is not None
    return BufferedByteReceiveStream(process.stderr)


async def read_until(stream: BufferedByteReceiveStream, event: str, lines: list[str]) -> None:
    """Collect whole stderr lines until a JSON log line with ``event`` appears."""
    while True:
        try:
            line = (await stream.receive_until(b"\n", 1 << 20)).decode()
        except (anyio.EndOfStream, anyio.IncompleteRead):
            raise AssertionError(f"stderr ended before {event!r}") from None
        lines.append(line)
        if line.startswith("{") and json.loads(line).get("event") == event:
            return


async def run_then_kill(config: Path, emu: Emulator, rng: random.Random,
                        body: dict[str, Any], published: int,
                        lines: list[str] | None = None,
                        make: Callable[[int], dict[str, Any]] | None = None) -> int:
    """Start ``a2pd run`` (``config``: a ``crash_config``), publish a burst of 200-400
    messages (ids from ``published`` on; ``make(n)``, when given, is the n-th message's
    body instead) and SIGKILL it while batches are being committed and delivered; the new
    ``published``. Its stderr lines go to ``lines``."""
    lines = [] if lines is None else lines
    async with started(config, emu.config.jwt) as process:
        stream = stderr_lines(process)
        try:
            with anyio.fail_after(TIMEOUT):
                await read_until(stream, "subscribed", lines)
                burst = rng.randint(200, 400)
                for _ in range(burst):
                    await emu.publish("message", make(published) if make else
                                      {**body, "id": f"m{published}"})
                    published += 1
                # a batch holds at most BATCH_MAX events, so the burst alone makes at least
                # ceil(burst / BATCH_MAX) "delivered" lines: wait for fewer, then kill
                for _ in range(rng.randint(1, -(-burst // BATCH_MAX))):
                    await read_until(stream, "delivered", lines)
        except BaseException:
            print("\n".join(lines[-40:]), file=sys.stderr)
            raise
        finally:
            # never leave a live daemon behind (closing the process would wait for it)
            process.send_signal(signal.SIGKILL)
        assert await process.wait() == -signal.SIGKILL
    return published
