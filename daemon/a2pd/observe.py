"""Counters a2pd keeps about itself, and a way to wait for them.

``Counters`` is a flat map of dotted names (``delivered.archive``, ``frames_malformed``) to
integers. Anything can ``wait_for`` a counter to reach a value: the wait wakes on each
increment instead of polling, which is what tests, the graceful stop and (later) readiness
checks use. Metrics endpoints render the same map.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio


class Counters:
    """Monotonic counters with event-driven waiting. Use from one event loop."""

    def __init__(self) -> None:
        self._values: dict[str, int] = {}
        self._changed: anyio.Event | None = None

    def inc(self, key: str, n: int = 1) -> None:
        self._values[key] = self._values.get(key, 0) + n
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def get(self, key: str) -> int:
        return self._values.get(key, 0)

    def __getitem__(self, key: str) -> int:
        return self._values.get(key, 0)

    def snapshot(self, prefix: str = "") -> dict[str, int]:
        """Every counter whose name starts with ``prefix`` (the prefix removed)."""
        return {k[len(prefix):]: v for k, v in self._values.items() if k.startswith(prefix)}

    async def wait_for(self, key: str, at_least: int) -> int:
        """Return once ``key`` has reached ``at_least`` (its value then)."""
        while self._values.get(key, 0) < at_least:
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()
        return self._values.get(key, 0)


class LogThrottle:
    """At most ``burst`` log lines per ``window`` seconds for one kind of line; the lines
    held back are counted, and the next line let through says how many (``suppressed``).

    For lines hostile input can trigger at wire speed (a malformed frame, an undecodable
    notification): counters and dead letters keep every one, the log keeps a sample, so a
    flood cannot flood journald. No timers: a window ends when the next line comes.
    """

    def __init__(self, burst: int = 10, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.window = window
        self._clock = clock
        self._window_start = -float("inf")
        self._in_window = 0
        self._held = 0

    def allow(self) -> int | None:
        """``None``: skip this line; else log it, with the returned number of lines held
        back since the last one logged."""
        now = self._clock()
        if now - self._window_start >= self.window:
            self._window_start = now
            self._in_window = 0
        if self._in_window >= self.burst:
            self._held += 1
            return None
        self._in_window += 1
        held, self._held = self._held, 0
        return held
