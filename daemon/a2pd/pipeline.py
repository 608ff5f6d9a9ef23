"""From a decoded frame to the sinks, through the durable journal: the receiving side
(``ingest.Ingest``) and the delivering side (``delivery.Delivery``), wired to one journal.

    ServerNotification → Ingest: decode → route → journal.append (group commit)
    journal → Delivery: one reader per sink, from its own cursor → sink.send → advance

The session and the backfill are given ``intake`` only; the daemon runs, closes and
reconfigures the whole.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import anyio
from anyio.abc import TaskStatus

from a2pd import events
from a2pd.delivery import Arrivals, Decoded, Delivery, DeliveryOptions
from a2pd.ingest import Ingest
from a2pd.journal import Journal
from a2pd.observe import Counters, Histogram
from a2pd.protocol import FrameError, ServerNotification
from a2pd.router import Router
from a2pd.sinks import RetryPolicy, Sink

__all__ = ["Pipeline"]


class Pipeline:
    """Feeds the journal (``intake``) and runs one reader per sink (``delivery``).

    Counters (shared with the journal): ``received.<kind>``, ``committed``, ``duplicates``,
    ``unrouted``, ``dead_letters``, ``delivered.<sink>``, ``retries.<sink>``,
    ``dropped_full``, ``compacted``, ``backfilled.<kind>``, ``backfill_duplicates``.
    """

    def __init__(self, router: Router, sinks: Mapping[str, Sink], journal: Journal, *,
                 batch_max: int = 512, retry_initial: float = 0.5, retry_max: float = 30.0,
                 max_attempts: int = 0, compact_interval: float = 1.0,
                 counters: Counters | None = None) -> None:
        self.journal = journal
        self.counters = counters if counters is not None else journal.counters
        decoded, arrivals = Decoded(), Arrivals(self.counters)
        self.intake = Ingest(router, journal, decoded=decoded, arrivals=arrivals,
                             counters=self.counters)
        self.delivery = Delivery(
            sinks, journal, options=DeliveryOptions(batch_max, RetryPolicy(
                initial=retry_initial, maximum=retry_max, max_attempts=max_attempts)),
            decoded=decoded, arrivals=arrivals, counters=self.counters,
            compact_interval=compact_interval)

    # -- the receiving side ---------------------------------------------------------------

    async def ingest(self, notification: ServerNotification) -> None:
        await self.intake.ingest(notification)

    async def ingest_event(self, event: events.Event) -> None:
        await self.intake.ingest_event(event)

    async def ingest_bad_frame(self, error: FrameError) -> None:
        await self.intake.ingest_bad_frame(error)

    @property
    def last_event_at(self) -> float | None:
        """Monotonic time of the last event received."""
        return self.intake.last_event_at

    # -- the whole ------------------------------------------------------------------------

    async def prepare(self) -> None:
        """Load every sink's cursor (a new sink starts at the oldest journaled event)."""
        await self.delivery.prepare()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the committer and the delivery until ``close`` and the readers have delivered
        everything committed."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.journal.run_committer)
            await self.delivery.run(task_status=task_status)
            tg.cancel_scope.cancel()

    async def close(self) -> None:
        """No more input: wait until what is pending is committed (the committer retries
        a full disk on its own; the caller bounds the wait); readers stop once they have
        caught up."""
        await self.journal.flush()
        await self.delivery.close()

    async def reconfigure(self, router: Router, sinks: Mapping[str, Sink], *,
                          grace: float = 30.0,
                          before_start: Callable[[int], Awaitable[None]] | None = None,
                          ) -> list[Sink]:
        """Swap the router and the sinks (a reload): new events take the new routes at
        once (none is routed to a sink being removed while its reader finishes), then the
        readers are swapped (``Delivery.reconfigure``). ``before_start`` gets the seq after
        which rows were routed by the new routes (or appended before the swap and not
        committed yet: those carry the old targets)."""
        if self.delivery.stopped:
            raise RuntimeError("the pipeline is not running")
        self.intake.router = router
        routed_anew_after = self.journal.last_seq

        async def settle() -> None:
            if before_start is not None:
                await before_start(routed_anew_after)

        return await self.delivery.reconfigure(sinks, grace=grace, before_start=settle)

    def configure(self, *, batch_max: int, retry: RetryPolicy) -> None:
        """New ``[delivery]`` settings, for every reader from its next batch."""
        self.delivery.options.batch_max = batch_max
        self.delivery.options.retry = retry

    @property
    def router(self) -> Router:
        return self.intake.router

    @property
    def sinks(self) -> dict[str, Sink]:
        return self.delivery.sinks

    @property
    def stopped(self) -> bool:
        """No readers run any more (closing finished, or the pipeline ended)."""
        return self.delivery.stopped

    def backlog(self) -> dict[str, int]:
        """Committed events each sink has not passed yet (its lag, in journal rows)."""
        return self.delivery.backlog()

    @property
    def delivery_latency(self) -> dict[str, Histogram]:
        """Per sink: delivery latency, seconds (``delivery.Arrivals``)."""
        return self.delivery.arrivals.histograms

    def forget_arrivals(self, now: float) -> None:
        self.delivery.forget_arrivals(now)
