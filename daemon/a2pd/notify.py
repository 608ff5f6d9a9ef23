"""systemd's sd_notify protocol, in-house: datagrams to the unix socket in $NOTIFY_SOCKET.

    READY=1                  the first subscription is active (Type=notify: "started")
    STATUS=...               one line for `systemctl status`: connection state, event rate
    WATCHDOG=1               from the event loop, twice per WatchdogSec ($WATCHDOG_USEC)
    RELOADING=1 + MONOTONIC_USEC, then READY=1   around a reload (SIGHUP)
    STOPPING=1               a graceful stop began

Outside systemd (no $NOTIFY_SOCKET) every call is a no-op. A failed send is logged once and
never stops the daemon.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

import anyio

from a2pd.logging import get_logger

__all__ = [
    "Notifier",
]

log = get_logger("notify")


class Notifier:
    """Sends sd_notify messages; see the module docstring."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        path = env.get("NOTIFY_SOCKET", "")
        if path.startswith("@"):
            path = "\0" + path[1:]  # an abstract socket
        self.address = path or None
        self.watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 2e6
        self._socket: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """Send one message (``READY=1`` is ``send(READY=1)``); False if it could not go."""
        if self.address is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            if self._socket is None:
                kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                self._socket = socket.socket(socket.AF_UNIX, kind)
                self._socket.setblocking(False)
            self._socket.sendto(message, self.address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("notify_failed", socket=self.address.lstrip("\0"),
                            error=exc.strerror or repr(exc))
            return False
        return True

    def ready(self, status: str = "") -> None:
        if status:
            self.send(READY=1, STATUS=status)
        else:
            self.send(READY=1)

    def status(self, text: str) -> None:
        self.send(STATUS=text)

    def watchdog(self) -> None:
        self.send(WATCHDOG=1)

    def reloading(self) -> None:
        self.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def stopping(self) -> None:
        self.send(STOPPING=1)

    async def keep_informed(self, status: Callable[[], str], every: float,
                            tick: Callable[[], None]) -> None:
        """For ever: WATCHDOG=1 from the event loop (a stuck loop stops the pings and
        systemd restarts the daemon), and every ``every`` seconds ``tick()`` then STATUS=
        ``status()``."""
        async with anyio.create_task_group() as tg:
            if self.watchdog_interval:
                tg.start_soon(self._ping, self.watchdog_interval)
            while True:
                tick()
                self.status(status())
                await anyio.sleep(every)

    async def _ping(self, interval: float) -> None:
        while True:
            self.watchdog()
            await anyio.sleep(interval)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
