"""A real redis-server on a free loopback port, for the Redis sink's tests, and the sink
pointed at it (``make_sink``).

Started inside the test (``async with redis_server(tmp_path) as server``), never in a yield
fixture, and always killed when the block ends. Readiness is a bounded PING poll, never a
fixed sleep. A missing ``redis-server`` fails the test (CI installs it; nothing is skipped).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from a2pd.sinks import SinkContext
from a2pd.sinks.redis import RedisOptions, RedisSink

#: bound on a server's start (and restart) in seconds
START_TIMEOUT = 15.0


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process; ``restart`` keeps its port and data directory."""

    def __init__(self, directory: Path, *, appendonly: bool = False,
                 extra: Sequence[str] = (), tls: Mapping[str, Path] | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise AssertionError("redis-server is not installed (apt-get install redis-server;"
                                 " .ci/setup does it)")
        self.binary = binary
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self.extra = list(extra)
        #: ca, cert, key: serve TLS only (the plain port is closed)
        self.tls = dict(tls) if tls else None
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://127.0.0.1:{self.port}/0"

    def client(self, **kwargs: Any) -> Redis:
        """A client for the test's own checks (responses decoded to str)."""
        if self.tls:
            kwargs = {"ssl": True, "ssl_ca_certs": str(self.tls["ca"]), **kwargs}
        return Redis(host="127.0.0.1", port=self.port, decode_responses=True, **kwargs)

    def _argv(self) -> list[str]:
        if self.tls:
            listen = ["--port", "0", "--tls-port", str(self.port),
                      "--tls-cert-file", str(self.tls["cert"]),
                      "--tls-key-file", str(self.tls["key"]),
                      "--tls-ca-cert-file", str(self.tls["ca"]), "--tls-auth-clients", "no"]
        else:
            listen = ["--port", str(self.port)]
        argv = [self.binary, *listen, "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--save", "", "--daemonize", "no",
                "--logfile", str(self.directory / "redis.log"), "--protected-mode", "no"]
        if self.appendonly:
            # fsync before replying: an acknowledged write survives a SIGKILL of the server
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            argv += ["--appendonly", "no"]
        return argv + self.extra

    async def start(self) -> None:
        """Start on a free port and return once it answers PING."""
        for _attempt in range(3):
            self.port = free_port()
            if await self._spawn():
                return
            # lost the port to someone else between choosing and binding: try another
        raise AssertionError(f"redis-server did not start; see {self.directory / 'redis.log'}")

    async def _spawn(self) -> bool:
        self.process = subprocess.Popen(self._argv(), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if await self._wait_ready():
            return True
        self.kill()
        return False

    async def _wait_ready(self) -> bool:
        client = self.client(socket_connect_timeout=1.0, socket_timeout=1.0)
        try:
            with anyio.fail_after(START_TIMEOUT):
                while True:
                    assert self.process is not None
                    if self.process.poll() is not None:
                        return False
                    try:
                        if await client.ping():
                            return True
                    except (redis_errors.ConnectionError, redis_errors.TimeoutError):
                        pass
                    except redis_errors.BusyLoadingError:
                        pass
                    await anyio.sleep(0.02)  # a poll interval, bounded by fail_after
        finally:
            await client.aclose()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop the server now (SIGKILL by default) and reap it."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
        try:
            process.wait(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    async def restart(self, sig: int = signal.SIGKILL) -> None:
        """Kill the server and start it again on the same port with the same data."""
        self.kill(sig)
        if not await self._spawn():
            raise AssertionError(f"redis-server did not restart on port {self.port}; see "
                                 f"{self.directory / 'redis.log'}")


@asynccontextmanager
async def redis_server(directory: Path, *, appendonly: bool = False, extra: Sequence[str] = (),
                       tls: Mapping[str, Path] | None = None) -> AsyncIterator[RedisServer]:
    """A running redis-server for the block; killed when the block ends, whatever happens."""
    server = RedisServer(directory, appendonly=appendonly, extra=extra, tls=tls)
    try:
        await server.start()
        yield server
    finally:
        server.kill()


def make_sink(server: RedisServer, name: str = "r", env: dict[str, str] | None = None,
              **options: Any) -> RedisSink:
    """A Redis sink ``name`` writing to ``server`` (``options``: its table, ``env``: the
    environment its secrets are read from)."""
    opts = RedisOptions.model_validate({"url": server.url, **options},
                                       context={"env": env or {}})
    return RedisSink(name, opts, SinkContext(state_dir=Path(".")))
