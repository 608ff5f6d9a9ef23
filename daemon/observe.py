"""Counters a2pd keeps about itself, and a way to wait for them.

``Counters`` is a flat map of dotted names (``delivered.archive``, ``frames_malformed``) to
integers. Anything can ``wait_for`` a counter to reach a value: the wait wakes on each
increment instead of polling, which is what tests, the graceful stop and (later) readiness
checks use. Metrics endpoints render the same map.
"""

from __future__ import annotations

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
        return self._values[key]
