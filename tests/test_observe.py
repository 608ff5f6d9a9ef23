"""Counters, the log throttle and the latency histogram: pure, driven by a fake clock."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client import Histogram as ClientHistogram

from a2pd.observe import DELIVERY_LATENCY_BUCKETS, Histogram, LogThrottle


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


def test_histogram_counts_like_prometheus_client() -> None:
    """The fast histogram (a bisect per observation, one by one or a batch at a time) puts
    every value in the bucket prometheus_client's Histogram does — bounds themselves
    included, since a bucket holds the values <= its bound — with the same count and sum."""
    rng = random.Random(7)
    values = [*DELIVERY_LATENCY_BUCKETS, 0.0, 1e-9, 299.999, 300.0001, 1e6,
              *(rng.lognormvariate(-4, 3) for _ in range(5000))]
    ours = Histogram(DELIVERY_LATENCY_BUCKETS)
    theirs = ClientHistogram("latency", "test", buckets=DELIVERY_LATENCY_BUCKETS,
                             registry=CollectorRegistry())
    for value in values:
        ours.observe(value)
        theirs.observe(value)
    [family] = theirs.collect()
    expected = [(sample.labels["le"], sample.value) for sample in family.samples
                if sample.name == "latency_bucket"]
    got = [("+Inf" if bound == float("inf") else str(float(bound)), float(n))
           for bound, n in ours.cumulative()]
    assert got == expected
    assert ours.count == len(values)
    [total] = [s.value for s in family.samples if s.name == "latency_sum"]
    assert ours.sum == pytest.approx(total)
    batched = Histogram(DELIVERY_LATENCY_BUCKETS)
    batched.observe_all(values[:100])
    batched.observe_all(values[100:])
    assert batched.cumulative() == ours.cumulative()
    assert batched.sum == pytest.approx(ours.sum)


def test_histogram_starts_empty_with_every_bucket() -> None:
    """A new histogram has every bucket, +Inf last, all at 0."""
    histogram = Histogram((1.0, 0.1))
    assert histogram.cumulative() == [(0.1, 0), (1.0, 0), (float("inf"), 0)]
    assert histogram.count == 0
