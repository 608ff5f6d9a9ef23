"""Counters and the log throttle: pure, driven by a fake clock."""

from __future__ import annotations

from a2pd.observe import LogThrottle


def test_log_throttle_lets_a_burst_through_then_reports_what_it_held_back() -> None:
    """Per window, the first `burst` lines pass; the rest are held back and counted, and
    the first line of a later window carries that count."""
    now = [0.0]
    throttle = LogThrottle(burst=3, window=10.0, clock=lambda: now[0])
    assert [throttle.allow() for _ in range(5)] == [0, 0, 0, None, None]
    now[0] = 9.9
    assert throttle.allow() is None
    now[0] = 10.0
    assert throttle.allow() == 3
    assert throttle.allow() == 0
    now[0] = 100.0
    assert throttle.allow() == 0
