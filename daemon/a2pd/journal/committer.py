"""Group commits: appends collect in memory and one transaction writes them all.

A commit starts as soon as the previous one is done (``commit_interval`` 0: group commit,
the lowest latency; under load the groups grow by themselves), or every
``commit_interval`` (sooner when ``commit_max`` are waiting). An event counts as received
once committed; a crash loses only uncommitted appends, which the platform can still
replay (session recovery) or the backfill rebuilds.

A failed commit (a full disk, a lock held elsewhere) is retried on its own, with backoff;
while commits fail, appends wait (``failing`` says why): nothing more is taken in, so
what the platform still holds stays there. When the journal is full, ``full_policy``
either makes appends wait (``block``) or drops the oldest undelivered events at commit
(``drop_oldest``), counted and logged loudly — never silently.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import anyio

from a2pd import counts
from a2pd.backoff import backoff
from a2pd.errors import JournalError
from a2pd.journal import store
from a2pd.journal.db import Database
from a2pd.journal.model import (
    BACKFILLED,
    LIVE,
    JournalOptions,
    JournalState,
    Pending,
    PendingLetter,
    repeats_content,
    targets_field,
)
from a2pd.journal.recent import RecentRows
from a2pd.logging import get_logger, scrub
from a2pd.observe import Counters, LogThrottle

__all__ = ["Committer"]

log = get_logger("journal")

#: commits of at least this many events run in a worker thread (``commit``)
THREAD_COMMIT = 64


class Committer:
    """The appends waiting for a commit, and the task that commits them (``run``)."""

    def __init__(self, db: Database, options: JournalOptions, state: JournalState,
                 recent: RecentRows, counters: Counters,
                 clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._options = options
        self._state = state
        self._recent = recent
        self._counters = counters
        self._clock = clock
        #: group commit: every append wakes the committer (which commits once it is free)
        self._eager = options.commit_interval <= 0
        self._pending: list[Pending] = []
        #: uuids and content keys of the pending appends
        self._pending_keys: set[str] = set()
        self._letters: list[PendingLetter] = []
        #: appends so far, appends taken by a commit, appends a finished commit made durable
        self._appended = self._taken = self._durable = 0
        self._committed = anyio.Event()
        self._wake = anyio.Event()
        #: set when a commit should not wait for the rest of ``commit_interval``
        self._hurry = anyio.Event()
        self._room = anyio.Event()
        #: whether a commit is running in a worker thread
        self._threaded = False
        #: why commits fail (a full disk, a lock held elsewhere) while they do
        self.failing: str | None = None
        #: the error that ended the committer (nothing will be committed any more)
        self.dead: JournalError | None = None
        self._dropped_log = LogThrottle()

    # -- taking appends in ------------------------------------------------------------------

    async def append(self, uuid: str, kind: str, sinks: Sequence[str], record: bytes, *,
                     key: str | None = None, drop: tuple[str, ...] = (),
                     backfilled: bool = False,
                     track: tuple[str, str | None, float, bool] | None = None,
                     pair: tuple[str, float] | None = None) -> None:
        """Queue an event for the next group commit; waits when the journal is full
        (``block``) or too many appends are waiting. ``key``/``drop``/``backfilled``: content
        deduplication against the backfill (``model.repeats_content``). ``track``: the
        object the event opens or closes (``gaps.open_objects``); ``pair``: an opt-out
        pair and its state's time (a rebuilt state older than the pair's newest is
        stale)."""
        if uuid in self._pending_keys:
            self._counters.inc(counts.DUPLICATES)
            return
        item = Pending(uuid, kind, targets_field(sinks), record, key, drop, backfilled, track,
                       pair)
        if (backfilled or self._state.backfilled_keys) and \
                repeats_content(item, self._pending_keys.__contains__):
            self._counters.inc(counts.BACKFILL_DUPLICATES)
            return
        await self.room()
        self._pending.append(item)
        keys = self._pending_keys
        keys.add(uuid)
        if key is not None:
            keys.add((BACKFILLED if backfilled else LIVE) + key)
        self._appended += 1
        self._wake.set()
        if len(self._pending) >= self._options.commit_max:
            self._hurry.set()

    def _take(self, item: Pending) -> None:
        self._pending.append(item)
        self._pending_keys.add(item.uuid)
        content = item.content
        if content is not None:
            self._pending_keys.add(content)

    async def room(self) -> None:
        """Return once an append would not wait: the journal has room (``block``), commits
        succeed and not too many appends wait. An append right after it (with no await in
        between) takes effect without yielding: the pipeline routes an event only then, so
        a reload's new routes apply to every event appended after the swap."""
        options = self._options
        while options.full_policy == "block" and options.max_events and \
                self._state.count + len(self._pending) >= options.max_events:
            self._counters.inc(counts.FULL_WAITS)
            self._room = anyio.Event() if self._room.is_set() else self._room
            await self._room.wait()
        await self._wait_for_commits()

    def made_room(self) -> None:
        """Compaction removed events: appends waiting for room look again."""
        self._room.set()

    async def _wait_for_commits(self) -> None:
        while self.failing is not None or self.waiting >= self._most_waiting():
            if self.dead is not None:
                raise self.dead
            await self.wait_committed()

    def _most_waiting(self) -> int:
        """How many appends may wait for a commit: ``commit_max`` while a commit runs in a
        worker thread (the loop reads on meanwhile, and each waiting event holds ~5 kB, its
        frame, model and record: at 4x, a burst's peak RSS grew by 20 MB,
        bench/side_by_side.py, #17), four times that otherwise."""
        return self._options.commit_max * (1 if self._threaded else 4)

    async def queue_dead_letter(self, sink: str, reason: str, raw: bytes, *,
                                uuid: str | None = None) -> None:
        """See ``Journal.queue_dead_letter``."""
        await self._wait_for_commits()
        kept = scrub(raw)[: self._options.max_raw_bytes]
        self._letters.append(PendingLetter(sink, reason, kept, len(raw), uuid, self._clock()))
        self._wake.set()
        if self.waiting >= self._options.commit_max:
            self._hurry.set()

    @property
    def waiting(self) -> int:
        """Appends and queued dead letters not committed yet."""
        return len(self._pending) + len(self._letters)

    @property
    def all_durable(self) -> bool:
        """Everything appended so far is committed."""
        return self._durable >= self._appended

    async def flush(self) -> None:
        """Return once everything appended before this call is committed."""
        target = self._appended
        while self._durable < target:
            if self.dead is not None:
                raise self.dead
            self._wake.set()
            self._hurry.set()
            await self.wait_committed()

    async def wait_committed(self) -> None:
        """Return after the next commit (or ``poke``)."""
        await self._committed.wait()

    def poke(self) -> None:
        """Wake everything in ``wait_committed`` without committing."""
        committed, self._committed = self._committed, anyio.Event()
        committed.set()

    # -- committing -------------------------------------------------------------------------

    async def run(self) -> None:
        """Commit pending appends until cancelled (see ``Journal.run_committer``)."""
        try:
            await self._commit_for_ever()
        finally:
            if self.dead is None:
                # cancelled with the pipeline (another part failed, or the stop): nothing
                # waits for a committer that is gone
                self.dead = JournalError("the committer has stopped", self._db.path)
            self.poke()

    async def _commit_for_ever(self) -> None:
        delays = None
        failures = 0
        last = -math.inf
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            if not self._eager:
                wait = last + self._options.commit_interval - anyio.current_time()
                if wait > 0 and self.waiting < self._options.commit_max:
                    with anyio.move_on_after(wait):
                        await self._hurry.wait()
            self._hurry = anyio.Event()
            last = anyio.current_time()
            try:
                await self.commit()
            except JournalError as exc:
                if not exc.transient:
                    self.dead = exc
                    self.poke()  # appends and flushes waiting for a commit raise it
                    raise
                failures += 1
                delays = delays or backoff(0.2, 2.0, 30.0, floor=0.1)
                delay = next(delays)
                self._counters.inc(counts.COMMIT_FAILURES)
                self.failing = exc.reason
                log.error("journal_commit_failed", reason=exc.reason, pending=self.waiting,
                          retry_in=round(delay, 3),
                          note="reading stops until a commit succeeds; retried on its own")
                # retried on its own: nothing new arrives while appends wait
                self._wake.set()
                await anyio.sleep(delay)
            else:
                if self.failing is not None:
                    log.warning("journal_commit_recovered", failures=failures)
                    self.failing = None
                    self.poke()
                failures, delays = 0, None

    async def commit(self) -> list[int]:
        """Write every pending append in one transaction; the seqs of the new rows."""
        batch, self._pending = self._pending, []
        letters, self._letters = self._letters, []
        self._pending_keys = set()
        if not batch and not letters:
            return []
        now = self._clock()
        self._taken += len(batch)
        upto = self._taken
        state, options = self._state, self._options
        try:
            # a large commit in a worker thread: SQLite works (GIL released) while the loop
            # reads and decodes the next frames; a small one where it costs least
            self._threaded = len(batch) >= THREAD_COMMIT
            run = self._db.run_thread if self._threaded else self._db.run
            done = await run(
                store.insert, batch, now, letters, check_keys=state.backfilled_keys,
                journaled=state.count, max_events=options.max_events,
                full_policy=options.full_policy)
        except BaseException:
            self._taken -= len(batch)
            # A failed transaction commits nothing, and a cancellation before the worker
            # thread ran commits nothing either: keep the batch, oldest first. (A cancel
            # while the thread runs lets it finish, so the batch is then in the database
            # and a later commit drops it again as duplicates; its dead letters would be
            # written twice, which is why cancellation only comes at shutdown, after the
            # final commit.)
            waiting, self._pending = self._pending, []
            for item in (*batch, *waiting):
                self._take(item)
            self._letters = letters + self._letters
            raise
        finally:
            self._threaded = False
        self._count(batch, letters, done)
        if done.dropped:
            self._recent.clear()  # some of them may be gone: read from the database
        else:
            self._recent.add(done.rows)
        if done.backfilled:
            state.backfilled_keys = True
        state.last_commit = time.monotonic()
        self._durable = max(self._durable, upto)
        state.count += len(done.seqs) - done.dropped
        if done.seqs:
            state.last_seq = done.seqs[-1]
            if state.oldest_received is None:
                state.oldest_received = now
        self.poke()
        return done.seqs

    def _count(self, batch: list[Pending], letters: list[PendingLetter],
               done: store.Committed) -> None:
        counters = self._counters
        if letters:
            counters.inc(counts.DEAD_LETTERS, len(letters))
            for letter in letters:
                counters.inc(f"{counts.DEAD_LETTERS}.{letter.sink}")
        if done.dropped:
            counters.inc(counts.DROPPED_FULL, done.dropped)
            held = self._dropped_log.allow()
            if held is not None:
                log.error("journal_full_dropped_oldest", dropped=done.dropped,
                          max_events=self._options.max_events, suppressed=held,
                          note="undelivered events were dropped to make room")
        live: dict[str, int] = {}
        for item in batch:
            if not item.backfilled:
                live[item.kind] = live.get(item.kind, 0) + 1
        for kind, n in live.items():
            counters.inc(f"{counts.RECEIVED}.{kind}", n)
        counters.inc(counts.DUPLICATES, len(batch) - len(done.seqs) - done.known)
        if done.known:
            counters.inc(counts.BACKFILL_DUPLICATES, done.known)
        for kind in done.backfilled:
            counters.inc(f"{counts.BACKFILLED}.{kind}")
        counters.inc(counts.COMMITTED, len(done.seqs))
