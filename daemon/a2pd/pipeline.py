"""From a decoded frame to the sinks, through the durable journal.

    ServerNotification → events.decode_notification → router → journal.append
                         (EventError → dead letter)           (dedup by uuid, group commit)
    journal → one reader per sink, from its own cursor → sink.send(batch) → advance cursor

Each sink reads the journal at its own pace, in order, and its cursor moves only after
``send`` returned: a slow or failing sink never blocks or loses events for another, and a
crash resumes every sink from where it had confirmed delivery (at-least-once). A failing
sink is retried with capped, fully jittered backoff; a permanent failure is narrowed down
to the offending events, which go to the dead letters.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskStatus

from a2pd import counts, events
from a2pd.backoff import backoff
from a2pd.errors import JournalError, SinkError
from a2pd.journal import Journal, Row
from a2pd.logging import get_logger
from a2pd.observe import DELIVERY_LATENCY_BUCKETS, Counters, Histogram, LogThrottle
from a2pd.protocol import FrameError, ServerNotification
from a2pd.router import Router
from a2pd.sinks import RetryPolicy, Sink

__all__ = [
    "ARRIVALS_KEPT",
    "ARRIVAL_KEEP",
    "DECODED_BYTES",
    "DECODED_KEPT",
    "IDLE_POLL",
    "INGEST_SLICE",
    "Decoded",
    "Pipeline",
    "decode_row",
]

log = get_logger("pipeline")

#: a reader with nothing to do looks again this often even without a local commit (rows
#: added by another process, e.g. `a2pd dead-letters replay`)
IDLE_POLL = 1.0
T = TypeVar("T")
#: the receive side lets the readers run after this many events
INGEST_SLICE = 32
#: arrival times kept for the delivery latency: at most this many events (~250 bytes each)
#: and for at most this long. An event a sink still waits for when its arrival is forgotten
#: for age is observed then, above every bucket; one forgotten for room is counted as
#: ``latency_unobserved.<sink>``
ARRIVALS_KEPT = 65_536
ARRIVAL_KEEP = 3600.0
#: decoded events kept for the readers (``Decoded``): as many as the journal keeps rows of
#: its latest commits, so a reader that reads those gets their events decoded
DECODED_KEPT = 2048
DECODED_BYTES = 4 * 1024 * 1024


class Pipeline:
    """Feeds the journal and runs one reader per sink.

    Counters (shared with the journal): ``received.<kind>``, ``committed``, ``duplicates``,
    ``unrouted``, ``dead_letters``, ``delivered.<sink>``, ``retries.<sink>``,
    ``dropped_full``, ``compacted``, ``backfilled.<kind>``, ``backfill_duplicates``.

    ``delivery_latency``: per sink, seconds from a live notification's arrival (the
    pipeline took it from the session, which had just read its frame) to the sink's
    confirmation of the batch holding it. Arrival times live in memory only: events
    delivered from a previous run's backlog and backfilled events are delivered without an
    observation. A wait longer than ``ARRIVAL_KEEP`` is observed when it reaches that age
    (``forget_arrivals``), so a sink that stays behind shows in the histogram's +Inf bucket
    while it is behind, not only once it delivers.
    """

    def __init__(self, router: Router, sinks: Mapping[str, Sink], journal: Journal, *,
                 batch_max: int = 512, retry_initial: float = 0.5, retry_max: float = 30.0,
                 max_attempts: int = 0, compact_interval: float = 1.0) -> None:
        self.router = router
        self.sinks = dict(sinks)
        self.journal = journal
        self.counters: Counters = journal.counters
        self.batch_max = batch_max
        #: for sinks without a policy of their own
        self.retry_policy = RetryPolicy(initial=retry_initial, maximum=retry_max,
                                        max_attempts=max_attempts)
        self.compact_interval = compact_interval
        self._closing = False
        self._closed = anyio.Event()
        self._ingested = 0
        #: a sample of notification_undecodable lines (each one is dead-lettered)
        self._undecodable_log = LogThrottle()
        self.cursors: dict[str, int] = {}
        #: monotonic time a sink's current delivery began (absent: idle)
        self.busy_since: dict[str, float] = {}
        #: monotonic time of the last event received
        self.last_event_at: float | None = None
        #: per sink: delivery latency, seconds (kept across a reload that replaces the sink)
        self.delivery_latency: dict[str, Histogram] = {}
        #: live events not yet confirmed by every target sink: uuid → (monotonic arrival,
        #: the target sinks that have not confirmed it), in arrival order
        self._arrived: dict[str, tuple[float, tuple[str, ...]]] = {}
        #: per sink: the arrival of the newest event it confirmed (rows are read in arrival
        #: order: an older event it has not confirmed is not waiting for it any more)
        self._confirmed_arrival: dict[str, float] = {}
        self._readers: anyio.abc.TaskGroup | None = None
        #: per sink: set to ask its reader to stop after the current batch; set when it has
        self._stop_reader: dict[str, anyio.Event] = {}
        self._reader_done: dict[str, anyio.Event] = {}
        self._reader_scopes: dict[str, anyio.CancelScope] = {}
        #: per sink: the rows of the batch being delivered, and the seq up to which a
        #: narrowing has handled them (delivered or dead-lettered), for a reader retired
        #: in the middle of one
        self._in_flight: dict[str, Sequence[Row]] = {}
        self._narrowed_upto: dict[str, int] = {}
        self._decoded = Decoded()

    # -- the receiving side ---------------------------------------------------------------

    async def ingest(self, notification: ServerNotification) -> None:
        """Decode, route and journal one notification."""
        decoded: events.Event | events.EventError | None = notification.event
        if decoded is None:
            decoded = events.decode_notification(notification.body, notification.raw)
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
        elif not backfilled and event.uuid not in self._arrived:
            # (a duplicate of an event still on its way keeps the first arrival)
            self._arrived[event.uuid] = (arrived, targets)
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

    # -- the delivering side --------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the committer, the compactor and one reader per sink until ``close`` and the
        readers have delivered everything committed."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.journal.run_committer)
            tg.start_soon(self._compactor)
            await self.prepare()
            try:
                async with anyio.create_task_group() as readers:
                    self._readers = readers
                    # keeps the group open while a reload swaps every reader (otherwise
                    # it ends once the last old reader has, before the new ones start)
                    readers.start_soon(self._closed.wait)
                    for name, sink in self.sinks.items():
                        self._start_reader(name, sink)
                    task_status.started()
            finally:
                self._readers = None
            tg.cancel_scope.cancel()
        await self._journal(self.journal.compact, list(self.sinks))

    @property
    def stopped(self) -> bool:
        """No readers run any more (closing finished, or the pipeline ended)."""
        return self._readers is None

    def _start_reader(self, name: str, sink: Sink) -> None:
        assert self._readers is not None
        if name not in self.delivery_latency:
            self.delivery_latency[name] = Histogram(DELIVERY_LATENCY_BUCKETS)
        self._stop_reader[name] = anyio.Event()
        self._reader_done[name] = anyio.Event()
        self._readers.start_soon(self._reader, name, sink)

    async def reconfigure(self, router: Router, sinks: Mapping[str, Sink], *,
                          grace: float = 30.0,
                          before_start: Callable[[int], Awaitable[None]] | None = None,
                          ) -> list[Sink]:
        """Swap the router and the sinks (a reload). A sink object that is not in ``sinks``
        any more (removed, or replaced by a new one under the same name) finishes its current
        batch, then its reader stops; a new object gets a reader from its name's cursor.
        Returns the sinks no longer used, for the caller to close. Nothing journaled is lost
        or delivered twice: a reader stops only between batches or between retries (a
        delivery still running is cancelled after ``grace`` seconds, and that batch is
        delivered again by the new reader)."""
        if self._readers is None:
            raise RuntimeError("the pipeline is not running")
        old = self.sinks
        # new events take the new routes at once: none is routed to a sink being removed
        # while its reader finishes (a backlog checked before the reload stays as checked)
        self.router = router
        #: rows after this were routed by the new routes (or appended before the swap and
        #: not committed yet: those carry the old targets)
        routed_anew_after = self.journal.last_seq
        retiring = [name for name, sink in old.items() if sinks.get(name) is not sink]
        for name in retiring:
            self._stop_reader[name].set()
        self.journal.poke()  # wake idle readers so they see the request
        with anyio.move_on_after(grace) as scope:
            for name in retiring:
                await self._reader_done[name].wait()
        if scope.cancelled_caught:
            slow = [name for name in retiring if not self._reader_done[name].is_set()]
            log.warning("reload_reader_timeout", sinks=slow, grace=grace,
                        note="a slow delivery was cancelled; it is delivered again")
            for name in slow:
                self._reader_scopes[name].cancel()
            for name in slow:
                await self._reader_done[name].wait()
        for name in set(old) - set(sinks):
            self.cursors.pop(name, None)
        if before_start is not None:
            await before_start(routed_anew_after)
        self.sinks = dict(sinks)
        for name, sink in sinks.items():
            if old.get(name) is not sink:
                if name not in self.cursors:
                    self.cursors[name] = await self._journal(self.journal.cursor, name)
                self._start_reader(name, sink)
        for name in set(old) - set(sinks):
            self.cursors.pop(name, None)
            self.busy_since.pop(name, None)
        return [sink for name, sink in old.items() if sinks.get(name) is not sink]

    async def prepare(self) -> None:
        """Load every sink's cursor (a new sink starts at the oldest journaled event)."""
        for name in self.sinks:
            if name not in self.cursors:
                self.cursors[name] = await self.journal.cursor(name)

    async def _journal(self, operation: Callable[..., Awaitable[T]], *args: Any,
                       **kwargs: Any) -> T:
        """Run a journal operation, retrying a full disk or a held lock with backoff (loudly)
        instead of letting it stop the daemon; other journal errors propagate."""
        failures = 0
        while True:
            try:
                return await operation(*args, **kwargs)
            except JournalError as exc:
                if not exc.transient:
                    raise
                failures += 1
                delay = min(30.0, 0.1 * 2.0 ** min(failures, 9))
                self.counters.inc(counts.JOURNAL_RETRIES)
                log.error("journal_retry", operation=operation.__name__, reason=exc.reason,
                          retry_in=delay)
                await anyio.sleep(delay)

    async def close(self) -> None:
        """No more input: wait until what is pending is committed (the committer retries
        a full disk on its own; the caller bounds the wait); readers stop once they have
        caught up."""
        await self.journal.flush()
        self._closing = True
        self._closed.set()
        self.journal.poke()

    def backlog(self) -> dict[str, int]:
        """Committed events each sink has not passed yet (its lag, in journal rows)."""
        last = self.journal.last_seq
        return {name: max(0, last - cursor) for name, cursor in self.cursors.items()}

    async def _compactor(self) -> None:
        while True:
            await anyio.sleep(self.compact_interval)
            await self._journal(self.journal.compact, list(self.sinks))
            await self._journal(self.journal.checkpoint)
            self.forget_arrivals(time.monotonic())

    def forget_arrivals(self, now: float) -> None:
        """Drop the oldest arrival times beyond ``ARRIVALS_KEPT`` or ``ARRIVAL_KEEP``: events
        that will never be confirmed (duplicates, dead letters, drops) or only much later.

        For each sink still waiting for a forgotten event (``_still_waiting``), the wait is
        accounted for: past ``ARRIVAL_KEEP``, observed as the age reached (above every
        bucket: a lower bound in ``_sum``), so the p99 of a sink that stays behind rises while
        it is behind; forgotten for room, counted as ``latency_unobserved.<sink>`` (its
        wait is unknown). Either way its later confirmation is not observed."""
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
                if not self._still_waiting(name, at):
                    continue
                if at < cutoff:
                    self._latency(name).observe(now - at)
                else:
                    self.counters.inc(f"{counts.LATENCY_UNOBSERVED}.{name}")

    def _still_waiting(self, name: str, arrived: float) -> bool:
        """Whether sink ``name`` may still deliver an event that arrived at ``arrived`` and
        that it has not confirmed: it is configured, has committed rows left to pass, and
        has confirmed no event that arrived later. Otherwise the event was passed without a
        confirmation (a duplicate the journal dropped, a dead letter) or its sink removed."""
        cursor = self.cursors.get(name)
        return cursor is not None and cursor < self.journal.last_seq and \
            self._confirmed_arrival.get(name, -math.inf) <= arrived

    def _confirmed(self, name: str, batch: Sequence[events.Event]) -> None:
        """``name`` confirmed ``batch``: count it, and observe the delivery latency of each
        event whose arrival this run saw (at most once per event and sink)."""
        self.counters.inc(f"{counts.DELIVERED}.{name}", len(batch))
        arrived = self._arrived
        if not arrived:
            return
        now = time.monotonic()
        waits = []
        newest = self._confirmed_arrival.get(name, -math.inf)
        for event in batch:
            uuid = event.uuid
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
        self._latency(name).observe_all(waits)

    def _latency(self, name: str) -> Histogram:
        latency = self.delivery_latency.get(name)
        if latency is None:
            latency = self.delivery_latency[name] = Histogram(DELIVERY_LATENCY_BUCKETS)
        return latency

    async def _wait_for_rows(self, cursor: int) -> None:
        if self.journal.last_seq > cursor or self._closing:
            return
        with anyio.move_on_after(IDLE_POLL):
            await self.journal.wait_committed()

    async def _reader(self, name: str, sink: Sink) -> None:
        stop, done = self._stop_reader[name], self._reader_done[name]
        try:
            with anyio.CancelScope() as scope:
                self._reader_scopes[name] = scope
                await self._read_and_deliver(name, sink, stop)
        except _Retired:
            handled = self._narrowed_upto.get(name)
            if handled is not None:
                # the events a narrowing already delivered or dead-lettered are done: the
                # next reader starts after them (a refused event is dead-lettered once)
                await self._journal(self.journal.advance, name, handled)
                self.cursors[name] = handled
            log.info("sink_reader_retired", sink=name, note="stopped between retries",
                     cursor=self.cursors.get(name))
        finally:
            self._in_flight.pop(name, None)
            self._narrowed_upto.pop(name, None)
            self.busy_since.pop(name, None)
            done.set()

    async def _read_and_deliver(self, name: str, sink: Sink, stop: anyio.Event) -> None:
        target = f",{name},"
        while not stop.is_set():
            cursor = self.cursors[name]
            rows = await self._journal(self.journal.read, cursor, self.batch_max)
            if rows and sink.linger > 0:
                rows = await self._linger(sink.linger, cursor, rows)
            if not rows:
                if self._closing and self.journal.last_seq <= cursor:
                    return
                await self._wait_for_rows(cursor)
                continue
            mine = [row for row in rows if target in row.targets]
            batch: list[events.Event] = []
            if mine:
                batch = await self._models_for(name, mine)
                if batch:
                    self.busy_since[name] = anyio.current_time()
                    self._in_flight[name] = mine
                    self._narrowed_upto.pop(name, None)
                    try:
                        await self._deliver(name, sink, batch)
                    finally:
                        self.busy_since.pop(name, None)
            await self._journal(self.journal.advance, name, rows[-1].seq)
            self.cursors[name] = rows[-1].seq
            if batch:
                # logged once the cursor is saved too: a crash after this line never
                # delivers these events again
                log.debug("delivered", sink=name, events=len(batch), cursor=rows[-1].seq)

    async def _linger(self, linger: float, cursor: int, rows: list[Row]) -> list[Row]:
        """Wait up to ``linger`` seconds for a fuller batch (a sink that prefers fewer,
        bigger requests); never while stopping."""
        deadline = anyio.current_time() + linger
        while len(rows) < self.batch_max and not self._closing:
            with anyio.move_on_at(deadline):
                await self.journal.wait_committed()
            if anyio.current_time() >= deadline:
                break
            rows = await self._journal(self.journal.read, cursor, self.batch_max)
        return rows

    async def _models_for(self, name: str, rows: Sequence[Row]) -> list[events.Event]:
        batch: list[events.Event] = []
        for row in rows:
            model: events.Event | events.EventError | None = self._decoded.get(row)
            if model is None:
                model = decode_row(row)
            if isinstance(model, events.EventError):
                await self._journal(self.journal.letters.add, name, model.reason,
                                    row.record, uuid=row.uuid, seq=row.seq)
                continue
            batch.append(model)
        return batch

    async def _deliver(self, name: str, sink: Sink, batch: Sequence[events.Event]) -> None:
        policy = sink.retry or self.retry_policy
        delays = backoff(policy.initial, 2.0, policy.maximum)
        attempt = 0
        first_attempt = anyio.current_time()
        while True:
            attempt += 1
            try:
                await sink.send(batch)
            except SinkError as exc:
                if exc.permanent:
                    if len(batch) == 1:  # nothing to narrow down: that event is refused
                        await self._reject(name, batch[0], exc.reason, attempt)
                    else:
                        await self._narrow_permanent(name, sink, batch, attempt,
                                                     first_attempt)
                    return
                elapsed = anyio.current_time() - first_attempt
                if (policy.max_attempts and attempt >= policy.max_attempts) or (
                        policy.max_elapsed and elapsed >= policy.max_elapsed):
                    await self._give_up(name, batch, exc.reason, attempt, first_attempt)
                    return
                delay = next(delays)
                if exc.retry_after is not None:
                    # the receiver said when: never sooner, but not beyond our own cap
                    delay = max(delay, min(exc.retry_after, policy.retry_after_max))
                self.counters.inc(f"{counts.RETRIES}.{name}")
                log.warning("sink_retry", sink=name, reason=exc.reason, attempt=attempt,
                            retry_in=round(delay, 3), events=len(batch))
                stop = self._stop_reader.get(name)
                if stop is None:
                    await anyio.sleep(delay)
                    continue
                with anyio.move_on_after(delay):
                    await stop.wait()
                if stop.is_set():
                    # replaced or removed by a reload: the new reader retries the batch
                    raise _Retired from None
                continue
            self._confirmed(name, batch)
            return

    async def _give_up(self, name: str, batch: Sequence[events.Event], reason: str,
                       attempts: int, first_attempt: float) -> None:
        sink = self.sinks.get(name)
        if sink is not None:
            # events the destination already took (a batch delivered piecemeal) are done
            batch = [event for event in batch if not sink.accepted(event.uuid)]
        log.error("sink_gave_up", sink=name, events=len(batch), attempts=attempts,
                  reason=reason)
        first = time.time() - (anyio.current_time() - first_attempt)
        for event in batch:
            await self._journal(
                self.journal.letters.add, name, f"gave up after {attempts} attempts: {reason}",
                events.record_json(event), uuid=event.uuid, attempts=attempts,
                first_attempt=first, last_attempt=time.time())

    async def _narrow_permanent(self, name: str, sink: Sink, batch: Sequence[events.Event],
                                attempts: int, first_attempt: float) -> None:
        """A batch was refused for good: send one at a time so only the bad events go to
        the dead letters (in order, with the same transient retries)."""
        if len(batch) > 1:
            seqs = {row.uuid: row.seq for row in self._in_flight.get(name, ())}
            for event in batch:
                await self._narrow_permanent(name, sink, [event], 1, anyio.current_time())
                seq = seqs.get(event.uuid)
                if seq is not None:
                    self._narrowed_upto[name] = seq
            return
        event = batch[0]
        try:
            await sink.send(batch)
        except SinkError as exc:
            if not exc.permanent:
                await self._deliver(name, sink, batch)
                return
            await self._reject(name, event, exc.reason, attempts + 1)
            return
        self._confirmed(name, batch)

    async def _reject(self, name: str, event: events.Event, reason: str, attempts: int) -> None:
        log.error("sink_rejected_event", sink=name, uuid=event.uuid, reason=reason)
        await self._journal(self.journal.letters.add, name, reason,
                            events.record_json(event), uuid=event.uuid, attempts=attempts)


class _Retired(Exception):
    """A reader was asked to stop (reload) while waiting to retry."""


def decode_row(row: Row) -> events.Event | events.EventError:
    """The event a journal row holds (the slow path of ``Decoded``)."""
    decoded = events.from_record_json(row.record)
    if isinstance(decoded, events.EventError):
        return events.EventError(decoded.reason, row.record, row.uuid)
    return decoded


class Decoded:
    """The events the receive side decoded, by uuid, each with the record it was journaled
    as: a reader that keeps up delivers these rather than decoding its rows again. A row's
    event is taken from here only when the row holds that very record (a duplicate's
    event never stands in for another's row), else ``decode_row`` decodes it: the same
    event either way (tests/test_pipeline.py checks that). At most ``DECODED_KEPT`` events
    and ``DECODED_BYTES`` of records, the oldest forgotten first."""

    def __init__(self) -> None:
        self._kept: dict[str, tuple[events.Event, bytes]] = {}
        self._bytes = 0

    def add(self, event: events.Event, record: bytes) -> None:
        kept = self._kept
        if event.uuid in kept:
            return  # the first is the one journaled: a later one is a duplicate
        kept[event.uuid] = (event, record)
        self._bytes += len(record)
        while len(kept) > DECODED_KEPT or self._bytes > DECODED_BYTES:
            _, old = kept.pop(next(iter(kept)))
            self._bytes -= len(old)

    def get(self, row: Row) -> events.Event | None:
        found = self._kept.get(row.uuid)
        if found is None:
            return None
        event, record = found
        return event if record is row.record or record == row.record else None
