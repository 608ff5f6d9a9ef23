"""The durable journal: an embedded SQLite database (WAL) between receiving and delivering.

An event counts as received once its row is committed here. Commits are grouped: appends
collect in memory and one transaction writes them all — as soon as the previous commit is
done (``commit_interval`` 0: group commit, the lowest latency, and under load the groups
grow by themselves), or every ``commit_interval`` (or sooner when ``commit_max`` are
waiting) — so throughput stays high while a crash loses only uncommitted appends, which
the platform can still replay (session recovery) or the backfill rebuilds.

    events       seq (order), uuid (unique), kind, targets (",sink,sink,"), received, record
    seen         uuid → first seen: deduplication beyond compaction, for ``dedup_window``
                 (a journaled event's uuid moves here when compaction removes the event:
                 a commit checks both tables, and writes one row per event, not two)
    content      ``key:``/``bkey:`` + events.content_key (received live / backfilled) → last
                 seen, for ``dedup_window``: a backfilled event equal to one already
                 journaled is dropped, and so is a live one the backfill journaled first
    gaps         unrecovered gaps waiting for the backfill (start, wall time), until done
    inflight     A2P objects still changing ("message:<id>", "batch:<id>" → batch, created,
                 touched): an outbound message until a final status, a batch until Completed;
                 the backfill asks for their later states after a gap (the lists select by
                 creation time); forgotten after ``dedup_window`` without news
    pairs        opt-out pair ("from:to") → when its newest journaled state was set: a rebuilt
                 state older than that is stale (listed before a newer one arrived) and dropped
    cursors      sink → last delivered seq (a sink reads in order, at its own pace); a
                 removed sink's backlog is handed over (``hand_over``) or dropped on purpose
    dead_letters sink, uuid, seq, reason, attempts, first/last attempt, raw bytes
    meta         schema version; the run marker (``run`` running/stopped, ``last_commit``
                 written by every commit): a run that did not end with everything committed
                 is a gap from its last commit at the next start (``begin_run``)

A failed commit (a full disk, a lock held elsewhere) is retried by the committer on its own,
with backoff; while commits fail, appends wait (``failing`` says why): nothing more is taken
in, so what the platform still holds stays there. The files are 0600 (the WAL and shared
memory files get the database file's mode); the WAL is cut back after a burst.

Events every sink has passed are compacted away. ``max_events`` / ``max_age`` bound the
journal; when it is full, ``full_policy`` either makes appends wait (``block``) or drops the
oldest undelivered events (``drop_oldest``), counted and logged loudly — never silently.

Only this module touches SQLite. All database work runs in one worker thread at a time.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio

from a2pd import counts
from a2pd.errors import EXIT_IOERR, A2pdError
from a2pd.logging import get_logger, scrub
from a2pd.names import DEAD_LETTER_SOURCES
from a2pd.observe import Counters, LogThrottle

__all__ = [
    "AUTOCHECKPOINT_PAGES",
    "BACKFILLED",
    "COMPACT_CHUNK",
    "IN_CHUNK",
    "LIVE",
    "POLL_OTHERS",
    "RECENT_BYTES",
    "RECENT_ROWS",
    "RECOUNT_EVERY",
    "SCHEMA_VERSION",
    "TRUNCATE_IDLE",
    "WAL_SIZE_LIMIT",
    "DeadLetter",
    "Gap",
    "Journal",
    "JournalError",
    "Pending",
    "PendingLetter",
    "Row",
    "targets_field",
]

log = get_logger("journal")

SCHEMA_VERSION = 1
#: SQLite's automatic checkpoint only past this many WAL pages (~40 MB): the compactor
#: checkpoints every second off the commit path (``Journal.checkpoint``)
AUTOCHECKPOINT_PAGES = 10_000
#: once a checkpoint has copied every frame, SQLite cuts the WAL file back to this size
#: (without a limit it stays as large as the largest burst ever made it)
WAL_SIZE_LIMIT = 4 * 1024 * 1024
#: a WAL over that size is cut back by the checkpoint once no commit came for this long
TRUNCATE_IDLE = 1.0
#: rows of the latest commits kept in memory for the readers, with the decoded events the
#: receive side attached (~4 KB each): at most this many, and at most RECENT_BYTES of
#: records (events can be as large as a frame: by count alone, a stream of large events
#: would keep gigabytes)
RECENT_ROWS = 2048
RECENT_BYTES = 4 * 1024 * 1024
#: how often a reader that has every local commit looks for rows another process added
#: (`a2pd dead-letters replay`), seconds
POLL_OTHERS = 1.0
#: rows deleted per compaction transaction (a few milliseconds of the loop thread)
COMPACT_CHUNK = 500
#: compactions between recounts of the journal when nothing was removed
RECOUNT_EVERY = 10
#: uuids per "IN (...)" query (SQLite allows 32,766 variables since 3.32; older builds 999)
IN_CHUNK = 512
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- AUTOINCREMENT: a seq is never reused, even after compaction empties the table (plain
-- rowids restart at max+1, which would put new events behind every sink's cursor)
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    targets TEXT NOT NULL,
    received REAL NOT NULL,
    record BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS seen (uuid TEXT PRIMARY KEY, at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_at ON seen (at);
CREATE TABLE IF NOT EXISTS content (key TEXT PRIMARY KEY, at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS content_at ON content (at);
CREATE TABLE IF NOT EXISTS gaps (
    id INTEGER PRIMARY KEY,
    start REAL NOT NULL,
    opened REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS cursors (sink TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS inflight (
    object TEXT PRIMARY KEY,
    batch TEXT,
    created REAL NOT NULL,
    touched REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS inflight_touched ON inflight (touched);
CREATE TABLE IF NOT EXISTS pairs (pair TEXT PRIMARY KEY, at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pairs_at ON pairs (at);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    sink TEXT NOT NULL,
    uuid TEXT,
    seq INTEGER,
    reason TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    first_attempt REAL,
    last_attempt REAL,
    created REAL NOT NULL,
    size INTEGER NOT NULL,
    raw BLOB NOT NULL
);
"""


class JournalError(A2pdError):
    """The journal cannot be opened or written (corrupt, locked, disk full, unwritable)."""

    exit_code = EXIT_IOERR

    def __init__(self, reason: str, path: Path, *, transient: bool = False) -> None:
        super().__init__(f"{path}: {reason}")
        self.reason = reason
        self.path = path
        #: disk full or a lock held elsewhere: retrying later can succeed
        self.transient = transient


@dataclass(frozen=True, slots=True)
class Row:
    """One journaled event as a sink reader sees it; ``event``: the object the receive side
    appended with it (the decoded event), while the row is among the latest commits kept in
    memory; None when read from the database."""

    seq: int
    uuid: str
    kind: str
    targets: str
    record: bytes
    event: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead-letter row."""

    id: int
    sink: str
    uuid: str | None
    seq: int | None
    reason: str
    attempts: int
    first_attempt: float | None
    last_attempt: float | None
    created: float
    size: int
    raw: bytes

    @property
    def truncated(self) -> bool:
        return self.size > len(self.raw)


@dataclass(slots=True)
class Pending:
    uuid: str
    kind: str
    targets: str
    record: bytes
    #: events.content_key (None: the event has none)
    key: str | None = None
    #: content keys this event makes stale
    drop: tuple[str, ...] = ()
    #: rebuilt by the backfill: dropped when its content key was seen in any way
    backfilled: bool = False
    #: kept with the row in memory for the readers (not stored)
    event: Any = None
    #: (object, batch, created, still open) of an A2P message or batch (table inflight)
    track: tuple[str, str | None, float, bool] | None = None
    #: (pair, when its state was set) of an opt-out or opt-in (table pairs)
    pair: tuple[str, float] | None = None


@dataclass(frozen=True, slots=True)
class Gap:
    """An unrecovered gap waiting for the backfill: events since ``start`` (wall time)."""

    id: int
    start: float
    opened: float


LIVE, BACKFILLED = "key:", "bkey:"


def _known(item: Pending, present: Callable[[str], bool]) -> bool:
    """Whether ``item`` repeats a content key already journaled: a backfilled event whose
    state was received live or backfilled before; a live event the backfill got first."""
    if item.key is None:
        return False
    if item.backfilled:
        return present(LIVE + item.key) or present(BACKFILLED + item.key)
    return present(BACKFILLED + item.key)


@dataclass(frozen=True, slots=True)
class PendingLetter:
    """A dead letter of received input, written with the next group commit."""

    sink: str
    reason: str
    raw: bytes
    size: int
    uuid: str | None
    at: float


def targets_field(sinks: Iterable[str]) -> str:
    """How a row's target sinks are stored: ``,a,b,`` (so ``,a,`` in it is a test)."""
    key = sinks if isinstance(sinks, tuple) else tuple(sinks)
    field = _TARGETS.get(key)
    if field is None:
        if len(_TARGETS) >= 1024:
            _TARGETS.clear()
        field = _TARGETS[key] = "," + ",".join(key) + ","
    return field


#: targets_field by sink tuple: a handful of route outcomes, one string each
_TARGETS: dict[tuple[str, ...], str] = {}


class Journal:
    """The journal of one daemon. Open with ``Journal.open`` (async), close with ``aclose``."""

    def __init__(self, path: Path, conn: sqlite3.Connection, *, commit_interval: float,
                 commit_max: int, fsync: bool, max_events: int, max_age: float | None,
                 full_policy: Literal["block", "drop_oldest"], dedup_window: float,
                 counters: Counters | None = None, max_raw_bytes: int = 64 * 1024,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._conn = conn
        self._limiter = anyio.CapacityLimiter(1)
        self.commit_interval = commit_interval
        #: group commit: every append wakes the committer (which commits once it is free)
        self.eager = commit_interval <= 0
        self.commit_max = commit_max
        self.fsync = fsync
        self.max_events = max_events
        self.max_age = max_age
        self.full_policy = full_policy
        self.dedup_window = dedup_window
        self._clock = clock
        self._pending: list[Pending] = []
        self._pending_uuids: set[str] = set()
        #: appends so far, appends taken by a commit, appends a finished commit made durable
        self._appended = 0
        self._taken = 0
        self._durable = 0
        self._pending_letters: list[PendingLetter] = []
        self._committed = anyio.Event()
        self._wake_committer = anyio.Event()
        #: set when a commit should not wait for the rest of ``commit_interval``
        self._hurry = anyio.Event()
        self._room = anyio.Event()
        self.counters = counters if counters is not None else Counters()
        self.max_raw_bytes = max_raw_bytes
        #: why commits fail (a full disk, a lock held elsewhere) while they do: appends wait
        #: (reading stops) until one succeeds
        self.failing: str | None = None
        #: the error that ended the committer (nothing will be committed any more)
        self.dead: JournalError | None = None
        self._dropped_log = LogThrottle()
        #: monotonic time of the last commit (the checkpoint cuts the WAL back when quiet)
        self._last_commit = time.monotonic()
        self.last_seq = self._last_seq()
        self._count = self._scalar("SELECT COUNT(*) FROM events")
        #: when the oldest journaled event was received (refreshed at commit and compaction)
        self.oldest_received = self._oldest()
        self._closed = False
        #: whether any backfilled content key is remembered: until then a live event cannot
        #: repeat one, and its lookup is skipped
        self._backfilled_keys = self._scalar(
            "SELECT COUNT(*) FROM content WHERE key >= ? AND key < ?", BACKFILLED, "bkey;") > 0
        self._checkpointer: sqlite3.Connection | None = None
        self._checkpoint_lock = threading.Lock()
        #: the rows of the latest commits, in seq order: readers that keep up read them
        #: from here instead of from the database (no worker-thread round trip)
        self._recent: deque[Row] = deque()
        self._recent_bytes = 0
        self._compactions = 0
        #: when a reader last looked in the database for rows another process added
        self._polled_at = -math.inf

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: Path, *, must_exist: bool = False, **options: Any) -> Journal:
        """Open (creating it unless ``must_exist``) and check the database; ``JournalError``
        if it is unusable."""
        if must_exist and not await anyio.Path(path).exists():
            raise JournalError("no journal here (has a2pd run with this state directory?)",
                               path)
        conn = await anyio.to_thread.run_sync(_connect, path, bool(options.get("fsync")))
        return cls(path, conn, **options)

    @classmethod
    async def open_for_admin(cls, path: Path) -> Journal:
        """Open an existing journal for the CLI (works while the daemon runs: WAL)."""
        return await cls.open(path, must_exist=True, commit_interval=1.0, commit_max=1,
                              fsync=True, max_events=0, max_age=None, full_policy="block",
                              dedup_window=24 * 3600.0)

    # -- small helpers ------------------------------------------------------------------------

    def _last_seq(self) -> int:
        """The newest seq ever given out (compaction may have removed it)."""
        return self._scalar("SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = "
                            "'events'), (SELECT MAX(seq) FROM events), 0)")

    def _oldest(self) -> float | None:
        row = self._conn.execute("SELECT received FROM events ORDER BY seq LIMIT 1").fetchone()
        return float(row[0]) if row else None

    @property
    def depth(self) -> int:
        """Events in the journal (as of the last commit or compaction)."""
        return self._count

    def size_bytes(self) -> int:
        """The bytes the journal takes on disk: the database file and its write-ahead log
        (two ``stat`` calls; a file that is not there counts 0)."""
        total = 0
        for path in (self.path, self.path.with_name(self.path.name + "-wal")):
            with contextlib.suppress(OSError):
                total += os.stat(path).st_size
        return total

    def _scalar(self, sql: str, *args: Any) -> int:
        value = self._conn.execute(sql, args).fetchone()[0]
        return int(value or 0)

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the connection, one operation at a time. Without ``fsync`` the
        operation runs right here, on the event loop thread: a commit then never waits for
        the disk (synchronous=NORMAL), so it costs what its statements cost, and in a worker
        thread it would cost far more while the loop is busy — SQLite releases the GIL
        around every statement step, and the thread then waits up to the switch interval
        (5 ms) to get it back, for each row of an insert or a read. With ``fsync`` every
        commit waits for the disk, so operations run in a worker thread (see
        ``_db_thread``)."""
        if self.fsync:
            return await self._db_thread(fn, *args)
        async with self._limiter:
            try:
                return fn(*args)
            except sqlite3.Error as exc:
                raise _translate(exc, self.path) from exc

    async def _db_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the connection in a worker thread: for operations that wait for the
        disk or may scan the whole journal, with few statement steps (no per-row loop)."""
        try:
            return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)
        except sqlite3.Error as exc:
            raise _translate(exc, self.path) from exc

    # -- appending ----------------------------------------------------------------------------

    async def append(self, uuid: str, kind: str, sinks: Sequence[str], record: bytes, *,
                     key: str | None = None, drop: tuple[str, ...] = (),
                     backfilled: bool = False, event: Any = None,
                     track: tuple[str, str | None, float, bool] | None = None,
                     pair: tuple[str, float] | None = None) -> None:
        """Queue an event for the next group commit; waits when the journal is full
        (``block``) or too many appends are waiting. ``key``/``drop``/``backfilled``: content
        deduplication against the backfill (see ``_known``). ``event`` rides along with the
        row while it is among the latest commits (``Row.event``), never stored. ``track``:
        the object the event opens or closes (``open_objects``); ``pair``: an opt-out
        pair and its state's time (a rebuilt state older than the pair's newest is stale)."""
        if uuid in self._pending_uuids:
            self.counters.inc(counts.DUPLICATES)
            return
        item = Pending(uuid, kind, targets_field(sinks), record, key, drop, backfilled, event,
                       track, pair)
        if (backfilled or self._backfilled_keys) and \
                _known(item, self._pending_uuids.__contains__):
            self.counters.inc(counts.BACKFILL_DUPLICATES)
            return
        await self.room()
        self._pending.append(item)
        self._pending_uuids.add(uuid)
        if key is not None:
            self._pending_uuids.add((BACKFILLED if backfilled else LIVE) + key)
        self._appended += 1
        self._wake_committer.set()
        if len(self._pending) >= self.commit_max:
            self._hurry.set()

    async def room(self) -> None:
        """Return once an append would not wait: the journal has room (``block``), commits
        succeed and not too many appends wait. An append right after it (with no await in
        between) takes effect without yielding: the pipeline routes an event only then, so
        a reload's new routes apply to every event appended after the swap."""
        while self.full_policy == "block" and self.max_events and \
                self._count + len(self._pending) >= self.max_events:
            self.counters.inc(counts.FULL_WAITS)
            self._room = anyio.Event() if self._room.is_set() else self._room
            await self._room.wait()
        await self._wait_for_commits()

    async def _wait_for_commits(self) -> None:
        """Wait while commits fail (nothing more is taken in: the rest stays with the
        platform, which replays it or the backfill rebuilds it) or too many appends wait."""
        while self.failing is not None or self.waiting >= self.commit_max * 4:
            if self.dead is not None:
                raise self.dead
            await self.wait_committed()

    @property
    def all_durable(self) -> bool:
        """Everything appended so far is committed."""
        return self._durable >= self._appended

    async def flush(self) -> None:
        """Return once everything appended before this call is committed (the committer
        does the work; this only wakes it and waits)."""
        target = self._appended
        while self._durable < target:
            if self.dead is not None:
                raise self.dead
            self._wake_committer.set()
            self._hurry.set()
            await self.wait_committed()

    @property
    def waiting(self) -> int:
        """Appends and queued dead letters not committed yet."""
        return len(self._pending) + len(self._pending_letters)

    async def queue_dead_letter(self, sink: str, reason: str, raw: bytes, *,
                                uuid: str | None = None) -> None:
        """Dead-letter received input (a frame, a notification) with the next group commit,
        like an event: the receive loop never waits for a transaction of its own, and a
        crash loses at most the commit window, as it does for events. Waits when too many
        appends are waiting."""
        await self._wait_for_commits()
        kept = scrub(raw)[: self.max_raw_bytes]
        self._pending_letters.append(
            PendingLetter(sink, reason, kept, len(raw), uuid, self._clock()))
        self._wake_committer.set()
        if self.waiting >= self.commit_max:
            self._hurry.set()

    async def wait_committed(self) -> None:
        """Return after the next commit (or ``poke``)."""
        await self._committed.wait()

    def poke(self) -> None:
        """Wake everything in ``wait_committed`` without committing."""
        committed, self._committed = self._committed, anyio.Event()
        committed.set()

    async def run_committer(self) -> None:
        """Commit pending appends: at once when the last commit began at least
        ``commit_interval`` ago (so the first event after a quiet spell is committed right
        away), else once it has (events arriving meanwhile share that commit), or sooner
        when ``commit_max`` wait or someone flushes. ``commit_interval`` 0: as soon as the
        last commit is done.

        A commit costs a transaction and its WAL pages whatever it holds: committing every
        event on its own at moderate rates wrote ~20 KB of WAL per event, and on a slow
        disk the I/O stalled appends for tens of milliseconds whenever anything fsynced
        (bench/results/README.md).

        A full disk or a lock held by another process is retried with backoff, loudly, while
        appends wait (backpressure reaches the socket); nothing pending is dropped. Other
        errors (corrupt, read-only) end the committer and so the daemon."""
        try:
            await self._commit_for_ever()
        finally:
            if self.dead is None:
                # cancelled with the pipeline (another part failed, or the stop): nothing
                # waits for a committer that is gone
                self.dead = JournalError("the committer has stopped", self.path)
            self.poke()

    async def _commit_for_ever(self) -> None:
        failures = 0
        last = -math.inf
        while True:
            await self._wake_committer.wait()
            self._wake_committer = anyio.Event()
            if not self.eager:
                wait = last + self.commit_interval - anyio.current_time()
                if wait > 0 and self.waiting < self.commit_max:
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
                delay = min(30.0, 0.1 * 2.0 ** min(failures, 9))
                self.counters.inc(counts.COMMIT_FAILURES)
                self.failing = exc.reason
                log.error("journal_commit_failed", reason=exc.reason,
                          pending=self.waiting, retry_in=delay,
                          note="reading stops until a commit succeeds; retried on its own")
                # retried on its own: nothing new arrives while appends wait
                self._wake_committer.set()
                await anyio.sleep(delay)
            else:
                if self.failing is not None:
                    log.warning("journal_commit_recovered", failures=failures)
                    self.failing = None
                    self.poke()
                failures = 0

    async def commit(self) -> list[int]:
        """Write every pending append in one transaction; the seqs of the new rows."""
        batch, self._pending = self._pending, []
        letters, self._pending_letters = self._pending_letters, []
        self._pending_uuids = set()
        if not batch and not letters:
            return []
        now = self._clock()
        self._taken += len(batch)
        upto = self._taken
        try:
            inserted, dropped, known, backfilled, rows = await self._db(
                self._insert, batch, now, letters)
        except BaseException:
            self._taken -= len(batch)
            # A failed transaction commits nothing, and a cancellation before the worker
            # thread ran commits nothing either: keep the batch, oldest first. (A cancel
            # while the thread runs lets it finish, so the batch is then in the database
            # and a later commit drops it again as duplicates; its dead letters would be
            # written twice, which is why cancellation only comes at shutdown, after the
            # final commit.)
            self._pending = batch + self._pending
            for item in batch:
                self._pending_uuids.add(item.uuid)
                if item.key is not None:
                    self._pending_uuids.add((BACKFILLED if item.backfilled else LIVE) + item.key)
            self._pending_letters = letters + self._pending_letters
            raise
        if letters:
            self.counters.inc(counts.DEAD_LETTERS, len(letters))
            for letter in letters:
                self.counters.inc(f"{counts.DEAD_LETTERS}.{letter.sink}")
        if dropped:
            self._forget_recent()  # some of them may be gone: read from the database
        else:
            self._remember(rows)
        if dropped:
            self.counters.inc(counts.DROPPED_FULL, dropped)
            held = self._dropped_log.allow()
            if held is not None:
                log.error("journal_full_dropped_oldest", dropped=dropped,
                          max_events=self.max_events, suppressed=held,
                          note="undelivered events were dropped to make room")
        live: dict[str, int] = {}
        for item in batch:
            if not item.backfilled:
                live[item.kind] = live.get(item.kind, 0) + 1
        for kind, n in live.items():
            self.counters.inc(f"{counts.RECEIVED}.{kind}", n)
        self.counters.inc(counts.DUPLICATES, len(batch) - len(inserted) - known)
        if known:
            self.counters.inc(counts.BACKFILL_DUPLICATES, known)
        for kind in backfilled:
            self.counters.inc(f"{counts.BACKFILLED}.{kind}")
        self.counters.inc(counts.COMMITTED, len(inserted))
        self._last_commit = time.monotonic()
        self._durable = max(self._durable, upto)
        self._count += len(inserted) - dropped
        if inserted:
            self.last_seq = inserted[-1]
            if self.oldest_received is None:
                self.oldest_received = now
        self.poke()
        return inserted

    def _remember(self, rows: Iterable[Row]) -> None:
        recent = self._recent
        for row in rows:
            recent.append(row)
            self._recent_bytes += len(row.record)
        while recent and (len(recent) > RECENT_ROWS or self._recent_bytes > RECENT_BYTES):
            self._recent_bytes -= len(recent.popleft().record)

    def _forget_recent(self) -> None:
        self._recent.clear()
        self._recent_bytes = 0

    def _insert(self, batch: list[Pending], now: float, letters: Sequence[PendingLetter] = (),
                ) -> tuple[list[int], int, int, list[str], list[Row]]:
        """One transaction for a group commit: a few statements for the whole batch
        (``executemany``), not a few per event. Same outcome as taking the events one by one
        in order: a uuid already seen (or still journaled) is a duplicate; a known content
        key drops a backfilled event (``_known``, which also sees the keys earlier events of
        this batch set or dropped); the last set-or-drop of a content key wins."""
        conn = self._conn
        dropped = known = 0
        backfilled: list[str] = []
        #: content keys set (True) or dropped (False) by this batch so far, in order
        ops: dict[str, bool] = {}
        #: objects opened (their row) or closed (None) by this batch, the last event wins
        objects: dict[str, tuple[str, str | None, float, float] | None] = {}
        #: opt-out pairs' newest state times, as this batch leaves them
        pairs: dict[str, float] = {}

        def pair_at(pair: str) -> float | None:
            if pair in pairs:
                return pairs[pair]
            row = conn.execute("SELECT at FROM pairs WHERE pair = ?", (pair,)).fetchone()
            return None if row is None else float(row[0])

        def present(key: str) -> bool:
            decided = ops.get(key)
            if decided is not None:
                return decided
            return conn.execute("SELECT 1 FROM content WHERE key = ?", (key,)).fetchone() \
                is not None

        conn.execute("BEGIN IMMEDIATE")  # the write lock first: the seqs below are ours
        with conn:
            conn.executemany(
                "INSERT INTO dead_letters (sink, reason, raw, uuid, seq, attempts, "
                "first_attempt, last_attempt, created, size) "
                "VALUES (?, ?, ?, ?, NULL, 1, ?, ?, ?, ?)",
                [(d.sink, d.reason, d.raw, d.uuid, d.at, d.at, d.at, d.size) for d in letters])
            seen = self._known_uuids([item.uuid for item in batch])
            #: uuids of events not journaled that must still be remembered
            new_seen: list[tuple[str, float]] = []
            fresh: list[Pending] = []
            check_keys = self._backfilled_keys
            for item in batch:
                if item.uuid in seen:
                    continue
                if (item.backfilled or check_keys) and _known(item, present):
                    known += 1
                    new_seen.append((item.uuid, now))
                    continue
                if item.pair is not None:
                    pair, at = item.pair
                    newest = pair_at(pair)
                    if item.backfilled and newest is not None and newest >= at:
                        known += 1  # stale: a newer state of the pair is journaled
                        new_seen.append((item.uuid, now))
                        continue
                    pairs[pair] = at if newest is None else max(at, newest)
                if item.key is not None:
                    ops[(BACKFILLED if item.backfilled else LIVE) + item.key] = True
                for stale in item.drop:
                    ops[LIVE + stale] = False
                    ops[BACKFILLED + stale] = False
                fresh.append(item)
                if item.track is not None:
                    obj, in_batch, created, is_open = item.track
                    objects[obj] = (obj, in_batch, created, now) if is_open else None
                if item.backfilled:
                    backfilled.append(item.kind)
                    check_keys = True
            if new_seen:
                conn.executemany("INSERT OR IGNORE INTO seen (uuid, at) VALUES (?, ?)",
                                 new_seen)
            if ops:
                conn.executemany("DELETE FROM content WHERE key = ?",
                                 [(key,) for key, kept in ops.items() if not kept])
                conn.executemany("INSERT OR REPLACE INTO content (key, at) VALUES (?, ?)",
                                 [(key, now) for key, kept in ops.items() if kept])
            if pairs:
                conn.executemany("INSERT OR REPLACE INTO pairs (pair, at) VALUES (?, ?)",
                                 list(pairs.items()))
            if objects:
                conn.executemany("DELETE FROM inflight WHERE object = ?",
                                 [(obj,) for obj, row in objects.items() if row is None])
                conn.executemany(
                    "INSERT INTO inflight (object, batch, created, touched) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (object) DO UPDATE SET "
                    "touched = excluded.touched, created = min(created, excluded.created)",
                    [row for row in objects.values() if row is not None])
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'")\
                .fetchone()
            first = (int(row[0]) if row else 0) + 1
            inserted = list(range(first, first + len(fresh)))
            conn.executemany(
                "INSERT INTO events (seq, uuid, kind, targets, received, record) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(seq, item.uuid, item.kind, item.targets, now, item.record)
                 for seq, item in zip(inserted, fresh, strict=True)])
            rows = [Row(seq, item.uuid, item.kind, item.targets, item.record, item.event)
                    for seq, item in zip(inserted, fresh, strict=True)]
            if backfilled:
                self._backfilled_keys = True
            # when this run last committed: if it ends without a clean stop, the next start
            # records a gap from here (``begin_run``)
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_commit', ?)",
                         (repr(now),))
            if self.full_policy == "drop_oldest" and self.max_events:
                over = self._count + len(inserted) - self.max_events
                if over > 0:
                    dropped = _delete_events(
                        conn, "seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?)", (over,))
        return inserted, dropped, known, backfilled, rows

    def _known_uuids(self, uuids: list[str]) -> set[str]:
        """Which of ``uuids`` are still journaled or remembered in ``seen`` (a uuid whose
        seen-row expired while its event is still journaled is known too)."""
        known: set[str] = set()
        for at in range(0, len(uuids), IN_CHUNK):
            chunk = uuids[at:at + IN_CHUNK]
            # padded to a power of two (repeating a uuid changes nothing): a handful of
            # distinct statements, which stay in the connection's statement cache
            chunk += chunk[:1] * ((1 << (len(chunk) - 1).bit_length()) - len(chunk))
            marks = ",".join("?" * len(chunk))
            known.update(uuid for (uuid,) in self._conn.execute(
                f"SELECT uuid FROM events WHERE uuid IN ({marks}) "  # noqa: S608 - only "?" placeholders are interpolated
                f"UNION ALL SELECT uuid FROM seen WHERE uuid IN ({marks})", chunk + chunk))
        return known

    # -- gaps (the backfill's work list) ------------------------------------------------------

    async def add_gap(self, start: float) -> int:
        """Remember an unrecovered gap beginning at ``start`` (wall time); its id."""
        return await self._db(self._add_gap, start, self._clock())

    def _add_gap(self, start: float, now: float) -> int:
        with self._conn:
            cur = self._conn.execute("INSERT INTO gaps (start, opened) VALUES (?, ?)",
                                     (start, now))
        assert cur.lastrowid is not None
        return cur.lastrowid

    async def gaps(self) -> list[Gap]:
        """Gaps not backfilled yet, oldest first."""
        return await self._db(self._gaps)

    def _gaps(self) -> list[Gap]:
        rows = self._conn.execute("SELECT id, start, opened FROM gaps ORDER BY id").fetchall()
        return [Gap(int(r[0]), float(r[1]), float(r[2])) for r in rows]

    async def open_objects(self, created_before: float) -> list[tuple[str, str | None, float]]:
        """``(object, batch, created)`` of the A2P objects still open that were created
        before ``created_before`` (wall time), by batch."""
        return await self._db(self._open_objects, created_before)

    def _open_objects(self, created_before: float) -> list[tuple[str, str | None, float]]:
        return [(str(r[0]), None if r[1] is None else str(r[1]), float(r[2]))
                for r in self._conn.execute(
                    "SELECT object, batch, created FROM inflight WHERE created < ? "
                    "ORDER BY batch, created", (created_before,))]

    async def forget_objects(self, objects: Sequence[str]) -> None:
        """Stop tracking objects the platform no longer knows (a 404 on reading them)."""
        await self._db(self._forget_objects, list(objects))

    def _forget_objects(self, objects: list[str]) -> None:
        with self._conn:
            self._conn.executemany("DELETE FROM inflight WHERE object = ?",
                                   [(obj,) for obj in objects])

    async def get_meta(self, key: str) -> str | None:
        """A value another module keeps in the journal (e.g. the backfill's progress)."""
        return await self._db(self._get_meta, key)

    def _get_meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    async def set_meta(self, key: str, value: str | None) -> None:
        """Keep (None: forget) a value in the journal, durably."""
        await self._db(self._set_meta, key, value)

    def _set_meta(self, key: str, value: str | None) -> None:
        with self._conn:
            if value is None:
                self._conn.execute("DELETE FROM meta WHERE key = ?", (key,))
            else:
                self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                   (key, value))

    async def begin_run(self, *, record_gap: bool = True) -> tuple[float, int | None] | None:
        """A daemon starts using this journal. If the last run did not end with everything
        it had taken in committed (SIGKILL, a crash, a stop while the disk was full):
        ``(since, gap id)``, ``since`` the wall time from which events may be missing (its
        last commit, else its start), recorded as a gap in the same transaction when
        ``record_gap`` (so a start that fails early cannot lose it); else None."""
        return await self._db(self._begin_run, self._clock(), record_gap)

    def _begin_run(self, now: float, record_gap: bool) -> tuple[float, int | None] | None:
        meta = dict(self._conn.execute(
            "SELECT key, value FROM meta WHERE key IN ('run', 'run_started', 'last_commit')"))
        unclean = None
        with self._conn:
            if meta.get("run") == "running":
                # its last commit; if it made none, its start (an older last commit
                # belongs to a run that ended cleanly)
                since = max(float(meta.get(key) or 0.0)
                            for key in ("last_commit", "run_started")) or now
                gap = None
                if record_gap:
                    gap = self._conn.execute("INSERT INTO gaps (start, opened) VALUES (?, ?)",
                                             (since, now)).lastrowid
                unclean = (since, gap)
            self._conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                   [("run", "running"), ("run_started", repr(now))])
        return unclean

    async def end_run(self) -> bool:
        """The daemon stops: commit what is pending and, if that leaves nothing
        uncommitted, mark the run as ended cleanly. Whether it was."""
        await self.commit()
        if not self.all_durable:
            return False
        await self._db(self._set_meta, "run", "stopped")
        return True

    async def close_gap(self, gap_id: int) -> None:
        """The gap is backfilled (its events are committed)."""
        await self._db(self._close_gap, gap_id)

    def _close_gap(self, gap_id: int) -> None:
        with self._conn:
            self._conn.execute("DELETE FROM gaps WHERE id = ?", (gap_id,))

    # -- reading ------------------------------------------------------------------------------

    async def read(self, after: int, limit: int) -> list[Row]:
        """Committed rows with ``seq > after``, oldest first."""
        recent = self._read_recent(after, limit)
        if recent:
            return recent
        now = anyio.current_time()
        if after >= self.last_seq and now - self._polled_at < POLL_OTHERS:
            # Caught up with every local commit: only another process (a dead-letter
            # replay) can have added rows, and looking for them once in a while is enough.
            # (Asking the database every time let a commit land while the query waited for
            # the connection: its rows then came from disk, without their decoded events.)
            return []
        self._polled_at = now
        rows = await self._db(self._read, after, limit)
        if rows:
            # a reader behind the rows kept in memory: it decodes these records again
            self.counters.inc(counts.ROWS_READ_FROM_DISK, len(rows))
        return rows

    def _read_recent(self, after: int, limit: int) -> list[Row]:
        """Rows ``after + 1, after + 2, …`` from the latest commits; empty (ask the database)
        unless they follow each other up to ``limit`` rows or the newest commit: a gap can
        only be rows another process added (a dead-letter replay), which only the database
        has."""
        recent = self._recent
        if not recent or not recent[0].seq <= after + 1 <= recent[-1].seq:
            return []
        index = after + 1 - recent[0].seq  # exact unless the kept rows have gaps
        if index >= len(recent) or recent[index].seq != after + 1:
            index = next((i for i, row in enumerate(recent) if row.seq == after + 1), -1)
            if index < 0:
                return []
        rows: list[Row] = []
        expected = after + 1
        for i in range(index, min(len(recent), index + limit)):
            row = recent[i]
            if row.seq != expected:
                break
            rows.append(row)
            expected += 1
        if not rows or (len(rows) < limit and rows[-1] is not recent[-1]):
            return []
        return rows

    def _read(self, after: int, limit: int) -> list[Row]:
        rows = self._conn.execute(
            "SELECT seq, uuid, kind, targets, record FROM events WHERE seq > ? "
            "ORDER BY seq LIMIT ?", (after, limit)).fetchall()
        found = [Row(int(r[0]), r[1], r[2], r[3], bytes(r[4])) for r in rows]
        if found and found[-1].seq > self.last_seq:
            self.last_seq = found[-1].seq  # rows another process added (a replay)
        return found

    async def cursor(self, sink: str) -> int:
        """Where ``sink`` stands; a new sink starts at the oldest event still journaled."""
        return await self._db(self._cursor, sink)

    def _cursor(self, sink: str) -> int:
        row = self._conn.execute("SELECT seq FROM cursors WHERE sink = ?", (sink,)).fetchone()
        if row is not None:
            return int(row[0])
        start = self._scalar("SELECT COALESCE(MIN(seq), 0) FROM events")
        start = max(0, start - 1)
        with self._conn:
            self._conn.execute("INSERT INTO cursors (sink, seq) VALUES (?, ?)", (sink, start))
        return start

    async def advance(self, sink: str, seq: int) -> None:
        """``sink`` has delivered everything up to ``seq``."""
        await self._db(self._advance, sink, seq)

    def _advance(self, sink: str, seq: int) -> None:
        with self._conn:
            self._conn.execute("UPDATE cursors SET seq = MAX(seq, ?) WHERE sink = ?",
                               (seq, sink))

    async def backlogs(self, sinks: Sequence[str]) -> dict[str, int]:
        """The sinks with a cursor here that are not in ``sinks`` (removed from the
        configuration) and how many events each has not delivered."""
        return await self._db_thread(self._backlogs, list(sinks))

    def _backlogs(self, sinks: list[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for sink, seq in self._conn.execute("SELECT sink, seq FROM cursors").fetchall():
            if sink not in sinks:
                found[sink] = self._scalar(
                    "SELECT COUNT(*) FROM events WHERE seq > ? AND instr(targets, ?) > 0",
                    seq, f",{sink},")
        return found

    async def hand_over(self, old: str, new: str, cap: int | None = None) -> tuple[int, int]:
        """``new`` delivers what the removed sink ``old`` had not: ``old``'s events after its
        cursor are re-targeted to ``new``, whose cursor goes back to ``old``'s (or to
        ``cap``, where a reload's new routes began, if that is lower: rows routed to ``new``
        after it were never ``old``'s to deliver), and ``old``'s cursor is gone. (events
        handed over, events of ``new``'s own it will deliver again because its cursor went
        back: 0 for a sink that is new)."""
        moved = await self._db_thread(self._hand_over, old, new, cap)
        self._forget_recent()  # the rows kept in memory carry the old targets
        return moved

    def _hand_over(self, old: str, new: str, cap: int | None) -> tuple[int, int]:
        conn = self._conn
        with conn:
            row = conn.execute("SELECT seq FROM cursors WHERE sink = ?", (old,)).fetchone()
            if row is None:
                return 0, 0
            after = int(row[0])
            start = after if cap is None else min(after, cap)
            moved = int(conn.execute(
                "UPDATE events SET targets = replace(targets, ?, ?) "
                "WHERE seq > ? AND instr(targets, ?) > 0",
                (f",{old},", f",{new},", after, f",{old},")).rowcount)
            own = conn.execute("SELECT seq FROM cursors WHERE sink = ?", (new,)).fetchone()
            again = 0
            if own is not None and int(own[0]) > start:
                again = self._scalar(
                    "SELECT COUNT(*) FROM events WHERE seq > ? AND seq <= ? "
                    "AND instr(targets, ?) > 0", start, int(own[0]), f",{new},")
            conn.execute("INSERT INTO cursors (sink, seq) VALUES (?, ?) ON CONFLICT (sink) "
                         "DO UPDATE SET seq = min(seq, excluded.seq)", (new, start))
            conn.execute("DELETE FROM cursors WHERE sink = ?", (old,))
        return moved, again

    async def drop_sink(self, sink: str) -> None:
        """Forget a removed sink's cursor: its undelivered events are left to compaction."""
        await self._db(self._drop_sink, sink)

    def _drop_sink(self, sink: str) -> None:
        with self._conn:
            self._conn.execute("DELETE FROM cursors WHERE sink = ?", (sink,))

    # -- dead letters -------------------------------------------------------------------------

    async def add_dead_letter(self, sink: str, reason: str, raw: bytes, *,
                              uuid: str | None = None, seq: int | None = None,
                              attempts: int = 1, first_attempt: float | None = None,
                              last_attempt: float | None = None) -> None:
        """Keep ``raw`` (cut to ``max_raw_bytes``, known secrets masked) with why it failed."""
        now = self._clock()
        kept = scrub(raw)[: self.max_raw_bytes]
        await self._db(self._add_dead_letter, sink, reason, kept, uuid, seq, attempts,
                       first_attempt or now, last_attempt or now, now, len(raw))
        self.counters.inc(counts.DEAD_LETTERS)
        self.counters.inc(f"{counts.DEAD_LETTERS}.{sink}")

    def _add_dead_letter(self, *args: Any) -> None:
        with self._conn:
            self._conn.execute(
                "INSERT INTO dead_letters (sink, reason, raw, uuid, seq, attempts, "
                "first_attempt, last_attempt, created, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                args)

    async def dead_letters(self, sink: str | None = None) -> list[DeadLetter]:
        return await self._db_thread(self._dead_letters, sink)

    def _dead_letters(self, sink: str | None) -> list[DeadLetter]:
        sql = ("SELECT id, sink, uuid, seq, reason, attempts, first_attempt, last_attempt, "
               "created, size, raw FROM dead_letters")
        rows = self._conn.execute(sql + (" WHERE sink = ?" if sink else "") + " ORDER BY id",
                                  (sink,) if sink else ()).fetchall()
        return [DeadLetter(id=r[0], sink=r[1], uuid=r[2], seq=r[3], reason=r[4], attempts=r[5],
                           first_attempt=r[6], last_attempt=r[7], created=r[8], size=r[9],
                           raw=bytes(r[10]))
                for r in rows]

    async def replay_dead_letters(self, ids: Sequence[int] | None, sink: str | None) -> int:
        """Move sink dead letters back into the journal for their sink (all of them when
        ``ids`` is None, optionally only ``sink``'s). Returns how many were requeued."""
        return await self._db_thread(self._replay, list(ids) if ids is not None else None, sink,
                              self._clock())

    def _replay(self, ids: list[int] | None, sink: str | None, now: float) -> int:
        letters = [d for d in self._dead_letters(sink) if ids is None or d.id in ids]
        if ids is not None:
            missing = set(ids) - {d.id for d in letters}
            if missing:
                raise JournalError(f"no dead letter with id {sorted(missing)}", self.path)
        requeued = 0
        with self._conn:
            for letter in letters:
                if letter.sink in DEAD_LETTER_SOURCES:
                    continue  # never reached a sink: nothing to deliver again
                if letter.truncated:
                    continue  # the record was cut: replaying it would deliver a fragment
                self._conn.execute(
                    "INSERT INTO events (uuid, kind, targets, received, record) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (f"{letter.uuid or 'dead-letter'}#replay-{letter.id}", _kind_of(letter.raw),
                     targets_field([letter.sink]), now, letter.raw))
                self._conn.execute("DELETE FROM dead_letters WHERE id = ?", (letter.id,))
                requeued += 1
        return requeued

    async def purge_dead_letters(self, ids: Sequence[int] | None, sink: str | None) -> int:
        """Delete dead letters (all, or by id, optionally only ``sink``'s)."""
        return await self._db_thread(self._purge, list(ids) if ids is not None else None, sink)

    def _purge(self, ids: list[int] | None, sink: str | None) -> int:
        letters = [d.id for d in self._dead_letters(sink) if ids is None or d.id in ids]
        with self._conn:
            self._conn.executemany("DELETE FROM dead_letters WHERE id = ?",
                                   [(i,) for i in letters])
        return len(letters)

    # -- upkeep -------------------------------------------------------------------------------

    async def compact(self, sinks: Sequence[str]) -> int:
        """Delete events every listed sink has passed, and uuids older than the dedup window,
        ``COMPACT_CHUNK`` rows per transaction (a long backlog delivered at once does not
        hold up commits for the whole deletion)."""
        removed = expired = 0
        while True:
            chunk_removed, chunk_expired, more = await self._db(
                self._compact, list(sinks), self._clock())
            removed += chunk_removed
            expired += chunk_expired
            if not more:
                break
        if expired:
            self._forget_recent()
            self.counters.inc(counts.EXPIRED, expired)
            log.error("journal_max_age_dropped", events=expired, max_age=self.max_age,
                      note="undelivered events older than max_age were removed")
        if removed or expired:
            self.counters.inc(counts.COMPACTED, removed)
            self._room.set()
        return removed + expired

    def _compact(self, sinks: list[str], now: float) -> tuple[int, int, bool]:
        """One chunk of compaction: (removed, expired, whether more is left)."""
        conn = self._conn
        with conn:
            if sinks:
                marks = ",".join("?" * len(sinks))
                sql = f"SELECT MIN(seq), COUNT(*) FROM cursors WHERE sink IN ({marks})"  # noqa: S608 - only "?" placeholders are interpolated
                low = conn.execute(sql, sinks).fetchone()
                floor = int(low[0] or 0) if low[1] == len(sinks) else 0
            else:
                floor = self.last_seq
            first = conn.execute("SELECT MIN(seq) FROM events").fetchone()[0]
            removed, more = 0, False
            if first is not None and first <= floor:
                upto = min(floor, first + COMPACT_CHUNK - 1)
                removed = _delete_events(conn, "seq <= ?", (upto,))
                more = upto < floor
            expired = 0
            if self.max_age is not None:
                expired = _delete_events(
                    conn, "seq IN (SELECT seq FROM events WHERE received < ? ORDER BY seq "
                    "LIMIT ?)", (now - self.max_age, COMPACT_CHUNK))
                more = more or expired >= COMPACT_CHUNK
            forget = now - self.dedup_window
            for table, key, at in (("seen", "uuid", "at"), ("content", "key", "at"),
                                   ("inflight", "object", "touched"), ("pairs", "pair", "at")):
                gone = conn.execute(
                    f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} "  # noqa: S608 - constant names
                    f"WHERE {at} < ? ORDER BY {at} LIMIT ?)", (forget, COMPACT_CHUNK)).rowcount
                more = more or gone >= COMPACT_CHUNK
            self._compactions += 1
            if removed or expired or self._compactions % RECOUNT_EVERY == 0:
                # recounted: rows another process added (replays) are included
                self._count = self._scalar("SELECT COUNT(*) FROM events")
                self.oldest_received = self._oldest()
        return int(removed), int(expired), more

    async def stats(self) -> dict[str, Any]:
        return await self._db_thread(self._stats)

    def _stats(self) -> dict[str, Any]:
        conn = self._conn
        events, oldest = conn.execute("SELECT COUNT(*), MIN(received) FROM events").fetchone()
        cursors = dict(conn.execute("SELECT sink, seq FROM cursors").fetchall())
        last = self._last_seq()
        lag = {sink: self._scalar("SELECT COUNT(*) FROM events WHERE seq > ?", seq)
               for sink, seq in cursors.items()}
        dead = dict(conn.execute("SELECT sink, COUNT(*) FROM dead_letters GROUP BY sink")
                    .fetchall())
        return {
            "path": str(self.path),
            "events": events,
            "oldest_received": oldest,
            "last_seq": last,
            "cursors": cursors,
            "lag": lag,
            "dead_letters": dead,
            # unrecovered gaps the backfill has not closed yet (it retries them)
            "gaps": [{"id": g.id, "start": g.start, "opened": g.opened} for g in self._gaps()],
            "seen": self._scalar("SELECT COUNT(*) FROM (SELECT uuid FROM seen "
                                 "UNION SELECT uuid FROM events)"),
        }

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
                await self._db_thread(self._conn.close)
                await anyio.to_thread.run_sync(self._close_checkpointer)
                self.poke()

    async def checkpoint(self) -> None:
        """Copy committed WAL frames into the database file, and sync it, from a connection
        of its own in a worker thread of its own: commits and reads go on meanwhile (a
        passive checkpoint never blocks them), where SQLite's automatic checkpoint would
        stall the commit that crosses its threshold for the whole copy and sync. Called
        by the pipeline's compactor; the automatic checkpoint stays as a safety net for a
        WAL that grows past ``AUTOCHECKPOINT_PAGES`` anyway."""
        try:
            await anyio.to_thread.run_sync(self._checkpoint)
        except sqlite3.Error as exc:
            raise _translate(exc, self.path) from exc

    def _checkpoint(self) -> None:
        with self._checkpoint_lock:
            if self._closed:
                return
            if self._checkpointer is None:
                self._checkpointer = sqlite3.connect(self.path, timeout=1.0,
                                                     isolation_level=None,
                                                     check_same_thread=False)
                self._checkpointer.execute(
                    f"PRAGMA synchronous={'FULL' if self.fsync else 'NORMAL'}")
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")
            wal = self.path.with_name(self.path.name + "-wal")
            try:
                size = wal.stat().st_size
            except FileNotFoundError:
                return
            if size > WAL_SIZE_LIMIT and time.monotonic() - self._last_commit >= TRUNCATE_IDLE:
                # a burst grew the WAL and no commit came since: nothing would rewind it
                # (which cuts it to journal_size_limit), so cut it here. Only when quiet,
                # and without waiting: a TRUNCATE holds writers off while it waits for
                # readers, and commits run on the event loop's thread
                self._checkpointer.execute("PRAGMA busy_timeout = 0")
                try:
                    self._checkpointer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                finally:
                    self._checkpointer.execute("PRAGMA busy_timeout = 1000")

    def _close_checkpointer(self) -> None:
        with self._checkpoint_lock:
            if self._checkpointer is not None:
                self._checkpointer.close()
                self._checkpointer = None


def _delete_events(conn: sqlite3.Connection, where: str, args: tuple[Any, ...]) -> int:
    """Delete the events ``where`` selects, keeping their uuids in ``seen`` (deduplication)
    with when they were received (the dedup window runs from then); how many went."""
    conn.execute(f"INSERT OR IGNORE INTO seen (uuid, at) SELECT uuid, received FROM events "  # noqa: S608 - callers pass constant conditions
                 f"WHERE {where}", args)
    return int(conn.execute(f"DELETE FROM events WHERE {where}", args).rowcount)  # noqa: S608 - callers pass constant conditions


def _kind_of(record: bytes) -> str:
    try:
        kind = json.loads(record).get("kind")
    except (ValueError, AttributeError):
        return "unknown"
    return kind if isinstance(kind, str) else "unknown"


def _connect(path: Path, fsync: bool) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # created 0600 before SQLite opens it: SQLite gives the -wal and -shm files the
        # database file's mode, whatever the umask (it holds message text and numbers)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        for name in (path, path.with_name(path.name + "-wal"),
                     path.with_name(path.name + "-shm")):
            if name.exists():
                name.chmod(0o600)  # made by an older version, or by hand
        conn = sqlite3.connect(path, timeout=1.0, isolation_level=None,
                               check_same_thread=False)
    except (OSError, sqlite3.Error) as exc:
        raise JournalError(f"cannot open the journal: {exc}", path) from exc
    try:
        _prepare(conn, path, fsync)
    except sqlite3.Error as exc:
        conn.close()
        raise _translate(exc, path) from exc
    except JournalError:
        conn.close()
        raise
    return conn


def _prepare(conn: sqlite3.Connection, path: Path, fsync: bool) -> None:
    conn.isolation_level = "DEFERRED"
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: fsync at every commit; NORMAL: WAL survives a process crash, and loses at most
    # the last commits on power loss
    conn.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
    conn.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
    conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
    check = conn.execute("PRAGMA quick_check").fetchone()[0]
    if check != "ok":
        raise JournalError(f"the journal is corrupt ({check}); move it aside to start afresh",
                           path)
    conn.executescript(_SCHEMA)
    version = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    if version is None:
        with conn:
            conn.execute("INSERT INTO meta (key, value) VALUES ('schema', ?)",
                         (str(SCHEMA_VERSION),))
    elif int(version[0]) != SCHEMA_VERSION:
        raise JournalError(f"journal schema {version[0]} is not {SCHEMA_VERSION}", path)


def _translate(exc: sqlite3.Error, path: Path) -> JournalError:
    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        return JournalError("the journal is locked by another process (is a2pd already "
                            "running with this state directory?)", path, transient=True)
    if "full" in text:
        return JournalError("the disk is full", path, transient=True)
    if "malformed" in text or "not a database" in text or "corrupt" in text:
        return JournalError("the journal is corrupt; move it aside to start afresh", path)
    if "readonly" in text or "unable to open" in text:
        return JournalError("the journal is not writable", path)
    return JournalError(f"SQLite error: {exc}", path)
