"""The receiving side: a notification → its event → its sinks → the journal.

    ServerNotification → events.decode_notification → router → journal.append
                         (EventError → dead letter)           (dedup by uuid, group commit)

The session and the backfill hand their events here and see nothing of delivery; what the
readers need from the receive side (the decoded events, the arrival times) is handed to
them through ``Decoded`` and ``Arrivals``.
"""

from __future__ import annotations

import time

import anyio

from a2pd import counts, events
from a2pd.delivery import Arrivals, Decoded
from a2pd.journal import Journal
from a2pd.logging import get_logger
from a2pd.observe import Counters, LogThrottle
from a2pd.protocol import FrameError, ServerNotification
from a2pd.router import Router

__all__ = ["INGEST_SLICE", "Ingest"]

log = get_logger("pipeline")

#: the receive side lets the readers run after this many events
INGEST_SLICE = 32


class Ingest:
    """Decodes, routes and journals what the session and the backfill receive."""

    def __init__(self, router: Router, journal: Journal, *, decoded: Decoded,
                 arrivals: Arrivals, counters: Counters) -> None:
        #: the routes (a reload swaps them: every event appended after the swap takes them)
        self.router = router
        self.journal = journal
        self.counters = counters
        #: monotonic time of the last event received
        self.last_event_at: float | None = None
        self._decoded = decoded
        self._arrivals = arrivals
        self._ingested = 0
        #: a sample of notification_undecodable lines (each one is dead-lettered)
        self._undecodable_log = LogThrottle()

    async def ingest(self, notification: ServerNotification) -> None:
        """Decode, route and journal one notification."""
        decoded = notification.decoded()
        if isinstance(decoded, events.EventError):
            held = self._undecodable_log.allow()
            if held is not None:
                log.warning("notification_undecodable", reason=decoded.reason,
                            uuid=decoded.uuid, suppressed=held)
            await self.journal.queue_dead_letter("notification", decoded.reason, decoded.raw,
                                                 uuid=decoded.uuid)
            return
        await self.ingest_event(decoded)

    async def ingest_event(self, event: events.Event) -> None:
        """Route and journal one decoded event (a notification's, or one the backfill rebuilt:
        those are counted as ``backfilled.<kind>`` by the journal once committed)."""
        kind = event.kind
        backfilled = events.is_backfilled(event)
        arrived = 0.0
        if not backfilled:
            # time.monotonic() is anyio.current_time() on asyncio, without the backend lookup
            # (``received.<kind>`` is counted by the journal, once the event is committed)
            arrived = self.last_event_at = time.monotonic()
        # routed only once the journal takes it without waiting (no await between the
        # routing and the append): a reload's new routes apply to every later append
        await self.journal.room()
        targets = self.router.sinks_for(event)
        if not targets:
            self.counters.inc(counts.UNROUTED)
            log.info("event_unrouted", uuid=event.uuid, kind=kind)
        elif not backfilled:
            self._arrivals.arrived(event.uuid, arrived, targets)
        record = events.record_json(event)
        # kept decoded while it is among the latest: readers that keep up never decode a
        # journal row
        self._decoded.add(event, record)
        await self.journal.append(event.uuid, kind, targets, record,
                                  key=events.content_key(event),
                                  drop=events.superseded_keys(event), backfilled=backfilled,
                                  track=events.lifecycle(event, time.time()),
                                  pair=events.pair_time(event))
        self._ingested += 1
        if self._ingested % INGEST_SLICE == 0:
            # A burst arrives faster than the socket is read dry, so the receive loop would
            # run for hundreds of frames between the readers' turns: yield, so delivery
            # keeps pace and finds the events it needs still kept in memory.
            await anyio.lowlevel.checkpoint()

    async def ingest_bad_frame(self, error: FrameError) -> None:
        """Dead-letter a frame that did not decode (the session has counted it)."""
        await self.journal.queue_dead_letter("frame", error.reason, error.raw)
