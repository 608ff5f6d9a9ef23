"""Reconnect and retry delays: exponential growth, full jitter, a cap. Pure; no I/O, no sleeping.

Full jitter (a uniform draw in [0, min(cap, initial * factor**n)]) spreads a fleet of daemons
that lost the platform at the same moment, so they do not return in lock-step.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

__all__ = [
    "backoff",
]


def backoff(
    initial: float = 1.0,
    factor: float = 2.0,
    cap: float = 120.0,
    *,
    floor: float = 0.0,
    rng: random.Random | None = None,
) -> Iterator[float]:
    """Yield delays forever: attempt n waits a uniform draw in [floor, min(cap, initial*factor**n)].

    ``floor`` is a lower bound every delay honours (e.g. what the Auth rate group allows).
    """
    if initial <= 0 or factor < 1 or cap <= 0:
        raise ValueError("backoff needs initial > 0, factor >= 1, cap > 0")
    draw = (rng or random.Random()).uniform
    ceiling = initial
    while True:
        top = min(cap, ceiling)
        yield max(floor, draw(0.0, top))
        if ceiling < cap:
            ceiling *= factor
