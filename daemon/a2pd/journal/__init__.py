"""The durable journal: an embedded SQLite database (WAL) between receiving and delivering.

An event counts as received once its row is committed here. The parts:

    model.py      the options, rows and appends (plain data)
    db.py         the schema, opening, one operation at a time, the WAL checkpoint, and
                  SQLite's errors as ``JournalError`` by error code (the one edge)
    store.py      events, seen uuids, content keys, cursors, compaction: synchronous SQL
    committer.py  group commits of the appends, retried with backoff while they fail
    recent.py     the rows of the latest commits, for readers that keep up
    letters.py    dead letters
    gaps.py       unrecovered gaps, open A2P objects, the run marker (the backfill's)

``Journal`` is the facade the daemon uses. Events every sink has passed are compacted
away; ``max_events`` / ``max_age`` bound the journal. The files are 0600 (the WAL and
shared-memory files get the database file's mode); the WAL is cut back after a burst.
Only this package touches SQLite.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypedDict

import anyio

from a2pd import counts
from a2pd.errors import JournalError
from a2pd.journal import gaps, store
from a2pd.journal.committer import Committer
from a2pd.journal.db import Checkpointer, Database
from a2pd.journal.gaps import Gaps
from a2pd.journal.letters import DeadLetters
from a2pd.journal.model import DeadLetter, Gap, JournalOptions, JournalState, Row
from a2pd.journal.recent import RecentRows
from a2pd.logging import get_logger
from a2pd.observe import Counters

__all__ = [
    "POLL_OTHERS",
    "RECOUNT_EVERY",
    "DeadLetter",
    "Gap",
    "Journal",
    "JournalError",
    "JournalOptions",
    "JournalStats",
    "Row",
]

log = get_logger("journal")

#: how often a reader that has every local commit looks for rows another process added
#: (`a2pd dead-letters replay`), seconds
POLL_OTHERS = 1.0
#: compactions between counts of the journal (rows another process added, a replay, are
#: counted then; in between, compaction takes what it removed from the count)
RECOUNT_EVERY = 10


class Journal:
    """The journal of one daemon. Open with ``Journal.open``, close with ``aclose``.

    ``letters``: the dead letters; ``gaps``: what the backfill keeps here."""

    def __init__(self, db: Database, options: JournalOptions, state: JournalState, *,
                 counters: Counters, clock: Callable[[], float]) -> None:
        self.path = db.path
        self.database = db
        self.options = options
        self.counters = counters
        self._clock = clock
        self._state = state
        self._recent = RecentRows()
        self._committer = Committer(db, options, state, self._recent, counters, clock)
        # the per-event calls, bound straight to the committer (no facade frame per event):
        # ``append`` queues an event for the next group commit, ``room`` waits until an
        # append would not (see Committer.append and Committer.room)
        self.append = self._committer.append
        self.room = self._committer.room
        self._checkpointer = Checkpointer(db.path, fsync=options.fsync)
        self.letters = DeadLetters(db, counters, max_raw_bytes=options.max_raw_bytes,
                                   clock=clock)
        self.gaps = Gaps(db, clock)
        self._closed = False
        self._compactions = 0
        #: when a reader last looked in the database for rows another process added
        self._polled_at = -math.inf

    @classmethod
    async def open(cls, path: Path, options: JournalOptions | None = None, *,
                   counters: Counters | None = None, clock: Callable[[], float] = time.time,
                   must_exist: bool = False) -> Journal:
        """Open (creating it unless ``must_exist``) and check the database; ``JournalError``
        if it is unusable."""
        options = options or JournalOptions()
        db = await Database.open(path, fsync=options.fsync, must_exist=must_exist)
        state = JournalState(
            last_seq=db.now(store.last_seq), count=db.now(store.count),
            oldest_received=db.now(store.oldest),
            backfilled_keys=db.now(store.scalar, "SELECT COUNT(*) FROM content WHERE key >= ? "
                                                 "AND key < ?", "bkey:", "bkey;") > 0,
            last_commit=time.monotonic())
        return cls(db, options, state, counters=counters or Counters(), clock=clock)

    @classmethod
    async def open_for_admin(cls, path: Path) -> Journal:
        """Open an existing journal for the CLI (works while the daemon runs: WAL)."""
        return await cls.open(path, JournalOptions(commit_interval=1.0, commit_max=1,
                                                   fsync=True, max_events=0, max_age=None),
                              must_exist=True)

    # -- what it holds ----------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The newest seq ever given out."""
        return self._state.last_seq

    @property
    def depth(self) -> int:
        """Events in the journal (as of the last commit or compaction)."""
        return self._state.count

    @property
    def oldest_received(self) -> float | None:
        """When the oldest journaled event was received (wall time)."""
        return self._state.oldest_received

    def size_bytes(self) -> int:
        """The bytes the journal takes on disk: the database file and its WAL."""
        return self.database.size_bytes()

    # -- appending (the committer's) --------------------------------------------------------

    async def queue_dead_letter(self, sink: str, reason: str, raw: bytes, *,
                                uuid: str | None = None) -> None:
        """Dead-letter received input (a frame, a notification) with the next group commit,
        like an event: the receive loop never waits for a transaction of its own, and a
        crash loses at most the commit window, as it does for events."""
        await self._committer.queue_dead_letter(sink, reason, raw, uuid=uuid)

    async def run_committer(self) -> None:
        """Commit pending appends until cancelled (``committer.py``). A full disk or a lock
        held by another process is retried with backoff, loudly, while appends wait; other
        errors (corrupt, read-only) end the committer and so the daemon."""
        await self._committer.run()

    async def commit(self) -> list[int]:
        """Write every pending append now, in one transaction; the seqs of the new rows."""
        return await self._committer.commit()

    async def flush(self) -> None:
        """Return once everything appended before this call is committed."""
        await self._committer.flush()

    async def wait_committed(self) -> None:
        """Return after the next commit (or ``poke``)."""
        await self._committer.wait_committed()

    def poke(self) -> None:
        """Wake everything in ``wait_committed`` without committing."""
        self._committer.poke()

    @property
    def waiting(self) -> int:
        """Appends and queued dead letters not committed yet."""
        return self._committer.waiting

    @property
    def all_durable(self) -> bool:
        """Everything appended so far is committed."""
        return self._committer.all_durable

    @property
    def failing(self) -> str | None:
        """Why commits fail (a full disk, a lock held elsewhere) while they do."""
        return self._committer.failing

    @property
    def dead(self) -> JournalError | None:
        """The error that ended the committer (nothing will be committed any more)."""
        return self._committer.dead

    async def end_run(self) -> bool:
        """The daemon stops: commit what is pending and, if that leaves nothing
        uncommitted, mark the run as ended cleanly. Whether it was."""
        await self.commit()
        if not self.all_durable:
            return False
        await self.database.run(gaps.set_meta, "run", "stopped")
        return True

    # -- reading ----------------------------------------------------------------------------

    async def read(self, after: int, limit: int) -> list[Row]:
        """Committed rows with ``seq > after``, oldest first."""
        recent = self._recent.read(after, limit)
        if recent:
            return recent
        now = anyio.current_time()
        if after >= self._state.last_seq and now - self._polled_at < POLL_OTHERS:
            # Caught up with every local commit: only another process (a dead-letter
            # replay) can have added rows, and looking for them once in a while is enough.
            return []
        self._polled_at = now
        rows = await self.database.run(store.read, after, limit)
        if rows:
            # a reader behind the rows kept in memory
            self.counters.inc(counts.ROWS_READ_FROM_DISK, len(rows))
            if rows[-1].seq > self._state.last_seq:
                self._state.last_seq = rows[-1].seq  # rows another process added (a replay)
        return rows

    async def cursor(self, sink: str) -> int:
        """Where ``sink`` stands; a new sink starts at the oldest event still journaled."""
        return await self.database.run(store.cursor, sink)

    async def advance(self, sink: str, seq: int) -> None:
        """``sink`` has delivered everything up to ``seq``."""
        await self.database.run(store.advance, sink, seq)

    async def backlogs(self, sinks: Sequence[str]) -> dict[str, int]:
        """The sinks with a cursor here that are not in ``sinks`` (removed from the
        configuration) and how many events each has not delivered."""
        return await self.database.run_thread(store.backlogs, list(sinks))

    async def hand_over(self, old: str, new: str, cap: int | None = None) -> tuple[int, int]:
        """``new`` delivers what the removed sink ``old`` had not: ``old``'s events after its
        cursor are re-targeted to ``new``, whose cursor goes back to ``old``'s (or to
        ``cap``, where a reload's new routes began, if that is lower: rows routed to ``new``
        after it were never ``old``'s to deliver), and ``old``'s cursor is gone. (events
        handed over, events of ``new``'s own it will deliver again because its cursor went
        back: 0 for a sink that is new)."""
        moved = await self.database.run_thread(store.hand_over, old, new, cap)
        self._recent.clear()  # the rows kept in memory carry the old targets
        return moved

    async def drop_sink(self, sink: str) -> None:
        """Forget a removed sink's cursor: its undelivered events are left to compaction."""
        await self.database.run(store.drop_sink, sink)

    # -- upkeep -----------------------------------------------------------------------------

    async def compact(self, sinks: Sequence[str]) -> int:
        """Delete events every listed sink has passed, undelivered events past ``max_age``
        and uuids older than the dedup window, ``store.COMPACT_CHUNK`` rows per transaction
        (a long backlog delivered at once does not hold up commits for the whole
        deletion). A chunk runs where the journal's short operations run
        (``Database.run``): 1-2 ms. In a worker thread it took 60 ms while a burst kept the
        loop busy, each of its dozen statements waiting up to the switch interval for the
        GIL, and commits waited behind it (bench/probe_tail.py, #17); a chunk that counts
        the journal still goes to a thread."""
        removed = expired = 0
        options, state = self.options, self._state
        more = True
        while more:
            self._compactions += 1
            recount = self._compactions % RECOUNT_EVERY == 0
            run = self.database.run_thread if recount else self.database.run
            chunk = await run(
                store.compact_chunk, list(sinks), self._clock(), newest=state.last_seq,
                max_age=options.max_age, dedup_window=options.dedup_window,
                recount=recount)
            removed += chunk.removed
            expired += chunk.expired
            more = chunk.more
            if chunk.journaled is not None:
                # recounted: rows another process added (replays) are included
                state.count, state.oldest_received = chunk.journaled, chunk.oldest
            elif chunk.removed or chunk.expired:
                state.count = max(0, state.count - chunk.removed - chunk.expired)
                state.oldest_received = chunk.oldest
        if expired:
            self._recent.clear()
            self.counters.inc(counts.EXPIRED, expired)
            log.error("journal_max_age_dropped", events=expired, max_age=options.max_age,
                      note="undelivered events older than max_age were removed")
        if removed or expired:
            self.counters.inc(counts.COMPACTED, removed)
            self._committer.made_room()
        return removed + expired

    async def checkpoint(self, *, when_due: bool = False) -> None:
        """Copy committed WAL frames into the database file (``db.Checkpointer``);
        ``when_due``: only if the WAL is due for it (``Checkpointer.due``: the schedule's
        call, where a checkpoint every second made every second's first commit sync the
        WAL)."""
        state = self._state
        if when_due and not self._checkpointer.due(state.last_commit):
            return
        await self._checkpointer.checkpoint(lambda: state.last_commit)

    async def stats(self) -> JournalStats:
        """What ``a2pd journal stats`` shows."""
        return await self.database.run_thread(_stats, str(self.path))

    async def aclose(self) -> None:
        """Commit what is pending and close the database; wakes everything waiting for a
        commit (it has seen the last one)."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            try:
                await self.commit()
            finally:
                await self.database.close()
                await self._checkpointer.close()
                self.poke()

    @property
    def closed(self) -> bool:
        return self._closed


class JournalStats(TypedDict):
    """``Journal.stats``: the events, each sink's cursor and lag, the dead letters per
    sink, the gaps waiting for the backfill and the uuids remembered."""

    path: str
    events: int
    oldest_received: float | None
    last_seq: int
    cursors: dict[str, int]
    lag: dict[str, int]
    dead_letters: dict[str, int]
    gaps: list[dict[str, float]]
    seen: int


def _stats(conn: sqlite3.Connection, path: str) -> JournalStats:
    events, oldest = conn.execute("SELECT COUNT(*), MIN(received) FROM events").fetchone()
    cursors = dict(conn.execute("SELECT sink, seq FROM cursors").fetchall())
    lag = {sink: store.scalar(conn, "SELECT COUNT(*) FROM events WHERE seq > ?", seq)
           for sink, seq in cursors.items()}
    dead = dict(conn.execute("SELECT sink, COUNT(*) FROM dead_letters GROUP BY sink")
                .fetchall())
    return {
        "path": path,
        "events": events,
        "oldest_received": oldest,
        "last_seq": store.last_seq(conn),
        "cursors": cursors,
        "lag": lag,
        "dead_letters": dead,
        # unrecovered gaps the backfill has not closed yet (it retries them)
        "gaps": [{"id": g.id, "start": g.start, "opened": g.opened}
                 for g in gaps.pending(conn)],
        "seen": store.scalar(conn, "SELECT COUNT(*) FROM seen"),
    }
