"""Backoff: exponential ceiling, full jitter, cap, floor."""

from __future__ import annotations

import random
from itertools import islice

import pytest

from a2pd.backoff import backoff


def test_ceiling_doubles_up_to_the_cap() -> None:
    """Each delay lies in [0, min(cap, initial*2**n)]."""
    rng = random.Random(1)
    delays = list(islice(backoff(1.0, 2.0, 10.0, rng=rng), 50))
    for n, delay in enumerate(delays):
        assert 0.0 <= delay <= min(10.0, 2.0**n)


def test_full_jitter_spreads_values() -> None:
    """Delays are spread over the range, not clustered at the ceiling."""
    rng = random.Random(2)
    capped = list(islice(backoff(1.0, 2.0, 8.0, rng=rng), 1000))[10:]
    assert min(capped) < 1.0
    assert max(capped) > 7.0


def test_floor_is_honoured() -> None:
    """No delay is shorter than the floor."""
    assert min(islice(backoff(1.0, 2.0, 5.0, floor=2.0, rng=random.Random(3)), 200)) >= 2.0


def test_bad_parameters_are_refused() -> None:
    """A non-positive start or cap is a programming error."""
    with pytest.raises(ValueError, match="backoff"):
        next(backoff(0.0))
