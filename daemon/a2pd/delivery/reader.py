"""One sink's reader: its events from the journal, in order, from its cursor, to the sink.

The cursor moves only after ``send`` returned (at-least-once: a crash resumes from the
last confirmed batch). A transient failure is retried with capped, fully jittered backoff
(the sink's ``RetryPolicy``, else ``[delivery]``'s; a Retry-After is a floor); a
permanent one is narrowed down to the offending events, which go to the dead letters.
A reader asked to stop (a reload) stops between batches or between retries.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

import anyio

from a2pd import counts, events
from a2pd.backoff import backoff
from a2pd.delivery.arrivals import Arrivals
from a2pd.delivery.decoded import Decoded, decode_row
from a2pd.errors import JournalError, SinkError
from a2pd.journal import Journal, Row
from a2pd.logging import get_logger
from a2pd.observe import Counters
from a2pd.sinks import RetryPolicy, Sink

__all__ = ["IDLE_POLL", "DeliveryOptions", "JournalRetry", "SinkReader"]

log = get_logger("pipeline")

#: a reader with nothing to do looks again this often even without a local commit (rows
#: added by another process, e.g. `a2pd dead-letters replay`)
IDLE_POLL = 1.0

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(slots=True)
class DeliveryOptions:
    """``[delivery]`` as the readers use it; a reload changes it in place."""

    #: most events handed to a sink in one send()
    batch_max: int = 512
    #: for sinks without a policy of their own
    retry: RetryPolicy = field(default_factory=RetryPolicy)


class JournalRetry:
    """Runs a journal operation, retrying a full disk or a held lock with backoff (loudly)
    instead of letting it stop the daemon; other journal errors propagate."""

    def __init__(self, counters: Counters) -> None:
        self._counters = counters

    async def __call__(self, operation: Callable[P, Awaitable[T]], *args: P.args,
                       **kwargs: P.kwargs) -> T:
        delays = None
        while True:
            try:
                return await operation(*args, **kwargs)
            except JournalError as exc:
                if not exc.transient:
                    raise
                delays = delays or backoff(0.2, 2.0, 30.0, floor=0.1)
                delay = next(delays)
                self._counters.inc(counts.JOURNAL_RETRIES)
                log.error("journal_retry", operation=getattr(operation, "__name__", "?"),
                          reason=exc.reason, retry_in=round(delay, 3))
                await anyio.sleep(delay)


class _Retired(Exception):
    """The reader was asked to stop (reload) while waiting to retry."""


class SinkReader:
    """Delivers sink ``name``'s events from ``cursor`` on, until ``stop`` (after the
    current batch) or until ``closing`` is set and it has caught up."""

    def __init__(self, name: str, sink: Sink, journal: Journal, *, cursor: int,
                 options: DeliveryOptions, decoded: Decoded, arrivals: Arrivals,
                 closing: anyio.Event, counters: Counters) -> None:
        self.name = name
        self.sink = sink
        self.journal = journal
        #: the last seq this sink has passed (delivered, dead-lettered or not routed to it)
        self.cursor = cursor
        #: monotonic time the current delivery began (None: idle)
        self.busy_since: float | None = None
        #: set when the reader has ended
        self.done = anyio.Event()
        self._options = options
        self._decoded = decoded
        self._arrivals = arrivals
        self._closing = closing
        self._counters = counters
        self._journal = JournalRetry(counters)
        self._stop = anyio.Event()
        self._scope = anyio.CancelScope()
        #: the rows of the batch being delivered, and the seq up to which a narrowing has
        #: handled them (delivered or dead-lettered), for a reader retired during one
        self._in_flight: Sequence[Row] = ()
        self._narrowed_upto: int | None = None

    def stop(self) -> None:
        """Stop after the current batch (or now, while waiting to retry)."""
        self._stop.set()

    def cancel(self) -> None:
        """Stop now: the batch being delivered is delivered again by the next reader."""
        self._scope.cancel()

    async def run(self) -> None:
        try:
            with self._scope:
                await self._read_and_deliver()
        except _Retired:
            handled = self._narrowed_upto
            if handled is not None:
                # the events a narrowing already delivered or dead-lettered are done: the
                # next reader starts after them (a refused event is dead-lettered once)
                await self._journal(self.journal.advance, self.name, handled)
                self.cursor = handled
            log.info("sink_reader_retired", sink=self.name, note="stopped between retries",
                     cursor=self.cursor)
        finally:
            self._in_flight = ()
            self._narrowed_upto = None
            self.busy_since = None
            self.done.set()

    async def _read_and_deliver(self) -> None:
        target = f",{self.name},"
        journal = self.journal
        while not self._stop.is_set():
            cursor = self.cursor
            rows = await self._journal(journal.read, cursor, self._options.batch_max)
            if rows and self.sink.linger > 0:
                rows = await self._linger(self.sink.linger, cursor, rows)
            if not rows:
                if self._closing.is_set() and journal.last_seq <= cursor:
                    return
                await self._wait_for_rows(cursor)
                continue
            mine = [row for row in rows if target in row.targets]
            batch: list[events.Event] = []
            if mine:
                batch = await self._events_of(mine)
                if batch:
                    self.busy_since = anyio.current_time()
                    self._in_flight = mine
                    self._narrowed_upto = None
                    try:
                        await self._deliver(batch)
                    finally:
                        self.busy_since = None
            await self._journal(journal.advance, self.name, rows[-1].seq)
            self.cursor = rows[-1].seq
            if batch:
                # logged once the cursor is saved too: a crash after this line never
                # delivers these events again
                log.debug("delivered", sink=self.name, events=len(batch), cursor=self.cursor)

    async def _wait_for_rows(self, cursor: int) -> None:
        if self.journal.last_seq > cursor or self._closing.is_set():
            return
        with anyio.move_on_after(IDLE_POLL):
            await self.journal.wait_committed()

    async def _linger(self, linger: float, cursor: int, rows: list[Row]) -> list[Row]:
        """Wait up to ``linger`` seconds for a fuller batch (a sink that prefers fewer,
        bigger requests); never while stopping."""
        deadline = anyio.current_time() + linger
        while len(rows) < self._options.batch_max and not self._closing.is_set():
            with anyio.move_on_at(deadline):
                await self.journal.wait_committed()
            if anyio.current_time() >= deadline:
                break
            rows = await self._journal(self.journal.read, cursor, self._options.batch_max)
        return rows

    async def _events_of(self, rows: Sequence[Row]) -> list[events.Event]:
        """The rows' events; a row that does not decode is dead-lettered."""
        batch: list[events.Event] = []
        for row in rows:
            model: events.Event | events.EventError | None = self._decoded.get(row)
            if model is None:
                model = decode_row(row)
            if isinstance(model, events.EventError):
                await self._journal(self.journal.letters.add, self.name, model.reason,
                                    row.record, uuid=row.uuid, seq=row.seq)
                continue
            batch.append(model)
        return batch

    async def _deliver(self, batch: Sequence[events.Event]) -> None:
        policy = self.sink.retry or self._options.retry
        delays = backoff(policy.initial, 2.0, policy.maximum)
        attempt = 0
        first_attempt = anyio.current_time()
        while True:
            attempt += 1
            try:
                await self.sink.send(batch)
            except SinkError as exc:
                if exc.permanent:
                    if len(batch) == 1:  # nothing to narrow down: that event is refused
                        await self._reject(batch[0], exc.reason, attempt)
                    else:
                        await self._narrow_permanent(batch, attempt)
                    return
                elapsed = anyio.current_time() - first_attempt
                if (policy.max_attempts and attempt >= policy.max_attempts) or (
                        policy.max_elapsed and elapsed >= policy.max_elapsed):
                    await self._give_up(batch, exc.reason, attempt, first_attempt)
                    return
                delay = next(delays)
                if exc.retry_after is not None:
                    # the receiver said when: never sooner, but not beyond our own cap
                    delay = max(delay, min(exc.retry_after, policy.retry_after_max))
                self._counters.inc(f"{counts.RETRIES}.{self.name}")
                log.warning("sink_retry", sink=self.name, reason=exc.reason, attempt=attempt,
                            retry_in=round(delay, 3), events=len(batch))
                with anyio.move_on_after(delay):
                    await self._stop.wait()
                if self._stop.is_set():
                    # replaced or removed by a reload: the next reader retries the batch
                    raise _Retired from None
                continue
            self._confirmed(batch)
            return

    def _confirmed(self, batch: Sequence[events.Event]) -> None:
        self._counters.inc(f"{counts.DELIVERED}.{self.name}", len(batch))
        self._arrivals.confirmed(self.name, [event.uuid for event in batch], time.monotonic())

    async def _give_up(self, batch: Sequence[events.Event], reason: str, attempts: int,
                       first_attempt: float) -> None:
        # events the destination already took (a batch delivered piecemeal) are done
        batch = [event for event in batch if not self.sink.accepted(event.uuid)]
        log.error("sink_gave_up", sink=self.name, events=len(batch), attempts=attempts,
                  reason=reason)
        first = time.time() - (anyio.current_time() - first_attempt)
        for event in batch:
            await self._journal(
                self.journal.letters.add, self.name,
                f"gave up after {attempts} attempts: {reason}", events.record_json(event),
                uuid=event.uuid, attempts=attempts, first_attempt=first,
                last_attempt=time.time())

    async def _narrow_permanent(self, batch: Sequence[events.Event], attempts: int) -> None:
        """A batch was refused for good: send one at a time so only the bad events go to
        the dead letters (in order, with the same transient retries)."""
        if len(batch) > 1:
            seqs = {row.uuid: row.seq for row in self._in_flight}
            for event in batch:
                await self._narrow_permanent([event], 1)
                seq = seqs.get(event.uuid)
                if seq is not None:
                    self._narrowed_upto = seq
            return
        event = batch[0]
        try:
            await self.sink.send(batch)
        except SinkError as exc:
            if not exc.permanent:
                await self._deliver(batch)
                return
            await self._reject(event, exc.reason, attempts + 1)
            return
        self._confirmed(batch)

    async def _reject(self, event: events.Event, reason: str, attempts: int) -> None:
        log.error("sink_rejected_event", sink=self.name, uuid=event.uuid, reason=reason)
        await self._journal(self.journal.letters.add, self.name, reason,
                            events.record_json(event), uuid=event.uuid, attempts=attempts)
