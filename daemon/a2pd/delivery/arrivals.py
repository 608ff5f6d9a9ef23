"""The delivery latency: when each live event arrived, until every sink it was routed to
confirmed it. Pure bookkeeping: no I/O, no clock of its own (callers pass the time)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from a2pd import counts
from a2pd.observe import DELIVERY_LATENCY_BUCKETS, Counters, Histogram

__all__ = ["ARRIVALS_KEPT", "ARRIVAL_KEEP", "Arrivals"]

#: arrival times kept: at most this many events (~250 bytes each) and for at most this
#: long. An event a sink still waits for when its arrival is forgotten for age is observed
#: then, above every bucket; one forgotten for room is counted as
#: ``latency_unobserved.<sink>``
ARRIVALS_KEPT = 65_536
ARRIVAL_KEEP = 3600.0


class Arrivals:
    """Per sink, seconds from a live notification's arrival (the receive side took it from
    the session, which had just read its frame) to the sink's confirmation of the batch
    holding it (``histograms``). Arrival times live in memory only: events delivered from
    a previous run's backlog and backfilled events are delivered without an observation. A
    wait longer than ``ARRIVAL_KEEP`` is observed when it reaches that age (``forget``), so
    a sink that stays behind shows in the histogram's +Inf bucket while it is behind, not
    only once it delivers."""

    def __init__(self, counters: Counters) -> None:
        self._counters = counters
        #: live events not yet confirmed by every target sink: uuid → (monotonic arrival,
        #: the target sinks that have not confirmed it), in arrival order
        self._arrived: dict[str, tuple[float, tuple[str, ...]]] = {}
        #: per sink: the arrival of the newest event it confirmed (rows are read in arrival
        #: order: an older event it has not confirmed is not waiting for it any more)
        self._confirmed_arrival: dict[str, float] = {}
        #: per sink: delivery latency, seconds (kept across a reload that replaces the sink)
        self.histograms: dict[str, Histogram] = {}

    def histogram(self, name: str) -> Histogram:
        """Sink ``name``'s latency histogram (created empty)."""
        found = self.histograms.get(name)
        if found is None:
            found = self.histograms[name] = Histogram(DELIVERY_LATENCY_BUCKETS)
        return found

    @property
    def waiting(self) -> Mapping[str, tuple[str, ...]]:
        """uuid → the sinks that have not confirmed it yet, in arrival order."""
        return {uuid: sinks for uuid, (_, sinks) in self._arrived.items()}

    def __len__(self) -> int:
        return len(self._arrived)

    def arrived(self, uuid: str, at: float, sinks: tuple[str, ...]) -> None:
        """A live event arrived at ``at`` (monotonic), routed to ``sinks`` (a duplicate of an
        event still on its way keeps the first arrival)."""
        if uuid not in self._arrived:
            self._arrived[uuid] = (at, sinks)

    def confirmed(self, name: str, uuids: Sequence[str], now: float) -> None:
        """``name`` confirmed the events ``uuids``: observe the latency of each whose
        arrival this run saw (at most once per event and sink)."""
        arrived = self._arrived
        if not arrived:
            return
        waits = []
        newest = self._confirmed_arrival.get(name, -math.inf)
        for uuid in uuids:
            entry = arrived.get(uuid)
            if entry is None:
                continue
            at, waiting = entry
            if name not in waiting:
                continue
            waits.append(now - at)
            if at > newest:
                newest = at
            if len(waiting) == 1:
                del arrived[uuid]
            else:  # (an existing key keeps its place in the arrival order)
                arrived[uuid] = (at, tuple(other for other in waiting if other != name))
        if not waits:
            return
        self._confirmed_arrival[name] = newest
        self.histogram(name).observe_all(waits)

    def forget(self, now: float, behind: Callable[[str], bool]) -> None:
        """Drop the oldest arrival times beyond ``ARRIVALS_KEPT`` or ``ARRIVAL_KEEP``: events
        that will never be confirmed (duplicates, dead letters, drops) or only much later.

        For each sink still waiting for a forgotten event (``behind(name)``: it is
        configured and has committed rows left to pass, and it has confirmed no event that
        arrived later), the wait is accounted for: past ``ARRIVAL_KEEP``, observed as the
        age reached (above every bucket: a lower bound in ``sum``), so the p99 of a sink
        that stays behind rises while it is behind; forgotten for room, counted as
        ``latency_unobserved.<sink>`` (its wait is unknown). Either way its later
        confirmation is not observed."""
        arrived = self._arrived
        excess = len(arrived) - ARRIVALS_KEPT
        cutoff = now - ARRIVAL_KEEP
        old: list[tuple[str, float, tuple[str, ...]]] = []
        for uuid, (at, waiting) in arrived.items():  # in arrival order: the oldest first
            if len(old) >= excess and at >= cutoff:
                break
            old.append((uuid, at, waiting))
        for uuid, at, waiting in old:
            del arrived[uuid]
            for name in waiting:
                if not behind(name) or \
                        self._confirmed_arrival.get(name, -math.inf) > at:
                    continue
                if at < cutoff:
                    self.histogram(name).observe(now - at)
                else:
                    self._counters.inc(f"{counts.LATENCY_UNOBSERVED}.{name}")
