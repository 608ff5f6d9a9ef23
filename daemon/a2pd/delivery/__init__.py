"""The delivering side: one reader per sink (``reader.SinkReader``), each at its own pace
from its own cursor, and the upkeep behind them (compaction, the WAL checkpoint, the
arrival times of the latency).

A slow or failing sink never blocks or loses events for another, and a crash resumes
every sink from where it had confirmed delivery (at-least-once). A reload swaps readers
between batches: nothing journaled is lost or delivered twice.

    arrivals.py  when live events arrived, for each sink's delivery latency
    decoded.py   the events the receive side decoded, for readers that keep up
    reader.py    one sink's reader: read, deliver, retry, narrow, dead-letter, advance
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping

import anyio
from anyio.abc import TaskGroup, TaskStatus

from a2pd.delivery.arrivals import ARRIVAL_KEEP, ARRIVALS_KEPT, Arrivals
from a2pd.delivery.decoded import DECODED_BYTES, DECODED_KEPT, Decoded, decode_row
from a2pd.delivery.reader import IDLE_POLL, DeliveryOptions, JournalRetry, SinkReader
from a2pd.journal import Journal
from a2pd.logging import get_logger
from a2pd.observe import Counters
from a2pd.sinks import Sink

__all__ = [
    "ARRIVALS_KEPT",
    "ARRIVAL_KEEP",
    "DECODED_BYTES",
    "DECODED_KEPT",
    "IDLE_POLL",
    "Arrivals",
    "Decoded",
    "Delivery",
    "DeliveryOptions",
    "decode_row",
]

log = get_logger("pipeline")


class Delivery:
    """Runs a reader per sink until ``close`` and the readers have delivered everything
    committed; ``reconfigure`` swaps sinks while it runs."""

    def __init__(self, sinks: Mapping[str, Sink], journal: Journal, *,
                 options: DeliveryOptions, decoded: Decoded, arrivals: Arrivals,
                 counters: Counters, compact_interval: float = 1.0) -> None:
        self.sinks = dict(sinks)
        self.journal = journal
        self.options = options
        self.decoded = decoded
        self.arrivals = arrivals
        self.compact_interval = compact_interval
        self._counters = counters
        self._journal = JournalRetry(counters)
        self._closing = anyio.Event()
        #: cursors loaded before the readers start (``prepare``)
        self._cursors: dict[str, int] = {}
        self._readers: dict[str, SinkReader] = {}
        self._group: TaskGroup | None = None

    async def prepare(self) -> None:
        """Load every sink's cursor (a new sink starts at the oldest journaled event)."""
        for name in self.sinks:
            if name not in self._cursors:
                self._cursors[name] = await self.journal.cursor(name)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the compactor and one reader per sink until ``close`` and the readers have
        delivered everything committed; then compact once more."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._compactor)
            tg.start_soon(self._checkpointer)
            await self.prepare()
            try:
                async with anyio.create_task_group() as readers:
                    self._group = readers
                    # keeps the group open while a reload swaps every reader (otherwise
                    # it ends once the last old reader has, before the new ones start)
                    readers.start_soon(self._closing.wait)
                    for name, sink in self.sinks.items():
                        self._start(name, sink, self._cursors[name])
                    task_status.started()
            finally:
                self._group = None
            tg.cancel_scope.cancel()
        await self._journal(self.journal.compact, list(self.sinks))

    @property
    def stopped(self) -> bool:
        """No readers run any more (closing finished, or delivery ended)."""
        return self._group is None

    def _start(self, name: str, sink: Sink, cursor: int) -> None:
        assert self._group is not None
        self.arrivals.histogram(name)  # exported from the start, empty
        reader = SinkReader(name, sink, self.journal, cursor=cursor, options=self.options,
                            decoded=self.decoded, arrivals=self.arrivals,
                            closing=self._closing, counters=self._counters)
        self._readers[name] = reader
        self._cursors.pop(name, None)
        self._group.start_soon(reader.run)

    async def reconfigure(self, sinks: Mapping[str, Sink], *, grace: float = 30.0,
                          before_start: Callable[[], Awaitable[None]] | None = None,
                          ) -> list[Sink]:
        """Swap the sinks (a reload). A sink object that is not in ``sinks`` any more
        (removed, or replaced by a new one under the same name) finishes its current batch,
        then its reader stops; ``before_start`` runs; then a new object gets a reader from
        its name's cursor in the journal. Returns the sinks no longer used, for the caller
        to close. A delivery still running after ``grace`` seconds is cancelled, and that
        batch is delivered again by the new reader."""
        if self._group is None:
            raise RuntimeError("the pipeline is not running")
        old = self.sinks
        retiring = [name for name, sink in old.items() if sinks.get(name) is not sink]
        for name in retiring:
            self._readers[name].stop()
        self.journal.poke()  # wake idle readers so they see the request
        with anyio.move_on_after(grace) as scope:
            for name in retiring:
                await self._readers[name].done.wait()
        if scope.cancelled_caught:
            slow = [name for name in retiring if not self._readers[name].done.is_set()]
            log.warning("reload_reader_timeout", sinks=slow, grace=grace,
                        note="a slow delivery was cancelled; it is delivered again")
            for name in slow:
                self._readers[name].cancel()
            for name in slow:
                await self._readers[name].done.wait()
        for name in retiring:
            del self._readers[name]
        if before_start is not None:
            await before_start()
        self.sinks = dict(sinks)
        for name, sink in sinks.items():
            if old.get(name) is not sink:
                # the journal's cursor: the retired reader saved its own there, and a
                # hand-over in ``before_start`` may have moved it back
                self._start(name, sink, await self._journal(self.journal.cursor, name))
        return [sink for name, sink in old.items() if sinks.get(name) is not sink]

    async def close(self) -> None:
        """No more input: readers stop once they have caught up with the journal."""
        self._closing.set()
        self.journal.poke()

    def cursors(self) -> dict[str, int]:
        """Where each configured sink stands."""
        found = {name: reader.cursor for name, reader in self._readers.items()}
        found.update(self._cursors)
        return {name: found[name] for name in self.sinks if name in found}

    def backlog(self) -> dict[str, int]:
        """Committed events each sink has not passed yet (its lag, in journal rows)."""
        last = self.journal.last_seq
        return {name: max(0, last - cursor) for name, cursor in self.cursors().items()}

    def busy_since(self) -> dict[str, float]:
        """Monotonic time each busy sink's current delivery began."""
        return {name: reader.busy_since for name, reader in self._readers.items()
                if reader.busy_since is not None}

    async def _compactor(self) -> None:
        while True:
            await anyio.sleep(self.compact_interval)
            await self._journal(self.journal.compact, list(self.sinks))
            self.forget_arrivals(time.monotonic())

    async def _checkpointer(self) -> None:
        """The WAL checkpoint on a schedule of its own (its own connection and thread):
        behind the compaction of a burst's backlog, which takes seconds, the WAL grew past
        SQLite's automatic checkpoint, which a commit then ran itself: 60 ms of copying and
        syncing in the commit path (bench/probe_tail.py, #17). It looks four times per
        ``compact_interval`` whether one is due (``Journal.checkpoint``)."""
        while True:
            await anyio.sleep(self.compact_interval / 4)
            await self._journal(self.journal.checkpoint, when_due=True)

    def forget_arrivals(self, now: float) -> None:
        """Forget the oldest arrival times (``Arrivals.forget``)."""
        cursors = self.cursors()
        last = self.journal.last_seq

        def behind(name: str) -> bool:
            cursor = cursors.get(name)
            return cursor is not None and cursor < last

        self.arrivals.forget(now, behind)
