"""The journal's database: the schema, opening it safely, running one operation at a time,
the WAL checkpoint, and the one edge where SQLite's errors become ``JournalError`` (by
SQLite's error code, never by message text).

Only the journal package touches SQLite (tests/test_layers.py holds it to that).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

import anyio

from a2pd.errors import JournalError

__all__ = [
    "AUTOCHECKPOINT_PAGES",
    "CHECKPOINT_EVERY",
    "CHECKPOINT_FRAMES",
    "SCHEMA_VERSION",
    "TRUNCATE_IDLE",
    "WAL_IDLE_SIZE",
    "WAL_SIZE_LIMIT",
    "Checkpointer",
    "Database",
    "translate",
    "wal_backlog",
]

#: 2: every journaled uuid in ``seen`` from its commit, no uuid index on ``events`` (#17)
SCHEMA_VERSION = 2
#: SQLite's automatic checkpoint only past this many WAL pages (~128 MiB), a safety net: it
#: runs on the committing thread (the event loop's, for a small commit), and the
#: ``Checkpointer`` copies the WAL off the commit path long before (``CHECKPOINT_FRAMES``)
AUTOCHECKPOINT_PAGES = 32_768
#: once a checkpoint has copied every frame, the next commit cuts the WAL file back to
#: this size (``journal_size_limit``; without a limit it stays as large as the largest
#: burst ever made it). Above what the automatic checkpoint lets it reach: every cut is an
#: ``ftruncate`` on the committing thread, which took 11-16 ms on this VM's ext4 (``perf
#: trace``); at 4 MiB it came once a checkpoint, and was the 1k/s phase's p99
#: (bench/probe_tail.py)
WAL_SIZE_LIMIT = 160 * 1024 * 1024
#: a WAL over this size is cut to nothing by the checkpoint (its own thread, not the
#: commit path) once no commit came for ``TRUNCATE_IDLE``
WAL_IDLE_SIZE = 4 * 1024 * 1024
TRUNCATE_IDLE = 1.0
#: the scheduled checkpoint copies the WAL once this many frames wait (16 MiB of pages,
#: under a second at 1,000 events/s, whose small commits rewrite their pages: ~20 kB of
#: WAL per event), or any once the journal is quiet or ``CHECKPOINT_EVERY`` has passed.
#: After a complete checkpoint the next commit starts the WAL over and syncs its new
#: header (SQLite does at synchronous=NORMAL, against out-of-order writes): an fdatasync
#: on the committing thread. Small copies keep that sync short (little was written since
#: the checkpoint's own), and slow traffic no longer pays it every second; at 1,000
#: events/s a checkpoint every second, a 40 MB automatic checkpoint on the commit path and
#: a 64 MiB limit cut at each start-over set the p99 (bench/probe_tail.py, #17)
CHECKPOINT_FRAMES = 4096
CHECKPOINT_EVERY = 30.0
P = ParamSpec("P")
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- AUTOINCREMENT: a seq is never reused, even after compaction empties the table (plain
-- rowids restart at max+1, which would put new events behind every sink's cursor)
-- no index on uuid: every journaled uuid is in seen from its commit (deduplication looks
-- there only), so compaction deletes a contiguous range of rows and nothing else
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid TEXT NOT NULL,
    kind TEXT NOT NULL,
    targets TEXT NOT NULL,
    received REAL NOT NULL,
    record BLOB NOT NULL
);
-- the smallest index, so COUNT(*) reads it rather than the records (at start, and every
-- tenth compaction): appended to at commits and cut at the other end by compaction
CREATE INDEX IF NOT EXISTS events_received ON events (received);
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

#: SQLite's primary result codes (the low byte of an extended code) → what the operator
#: reads, and whether retrying later can succeed
_MEANINGS: dict[int, tuple[str, bool]] = {
    sqlite3.SQLITE_BUSY: ("the journal is locked by another process (is a2pd already running "
                          "with this state directory?)", True),
    sqlite3.SQLITE_LOCKED: ("the journal is locked by another process (is a2pd already "
                            "running with this state directory?)", True),
    sqlite3.SQLITE_FULL: ("the disk is full", True),
    sqlite3.SQLITE_CORRUPT: ("the journal is corrupt; move it aside to start afresh", False),
    sqlite3.SQLITE_NOTADB: ("the journal is corrupt; move it aside to start afresh", False),
    sqlite3.SQLITE_READONLY: ("the journal is not writable", False),
    sqlite3.SQLITE_CANTOPEN: ("the journal is not writable", False),
    sqlite3.SQLITE_PERM: ("the journal is not writable", False),
}


def translate(exc: sqlite3.Error, path: Path) -> JournalError:
    """The ``JournalError`` an SQLite error means, by its error code."""
    code = getattr(exc, "sqlite_errorcode", None)
    meaning = _MEANINGS.get(code & 0xFF) if isinstance(code, int) else None
    if meaning is None:
        return JournalError(f"SQLite error: {exc}", path)
    reason, transient = meaning
    return JournalError(reason, path, transient=transient)


def connect(path: Path, fsync: bool, *, upgrade: bool = True) -> sqlite3.Connection:
    """Open (creating it, 0600) and check the journal's database; ``JournalError`` if it is
    unusable. ``upgrade``: bring a journal of an older schema up to this one (the daemon,
    which holds the state directory's lock); otherwise such a journal is an error (the
    CLI beside a daemon that may still be the older version)."""
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
        _prepare(conn, path, fsync, upgrade)
    except sqlite3.Error as exc:
        conn.close()
        raise translate(exc, path) from exc
    except JournalError:
        conn.close()
        raise
    return conn


def _prepare(conn: sqlite3.Connection, path: Path, fsync: bool, upgrade: bool) -> None:
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
    elif int(version[0]) == 1 and upgrade:
        _upgrade_from_1(conn)
    elif int(version[0]) == 1:
        raise JournalError(f"journal schema 1 is older than this a2pd's ({SCHEMA_VERSION}): "
                           "`a2pd run` upgrades it at its start", path)
    elif int(version[0]) != SCHEMA_VERSION:
        raise JournalError(f"journal schema {version[0]} is not {SCHEMA_VERSION} (written "
                           "by a newer a2pd?)", path)


def _upgrade_from_1(conn: sqlite3.Connection) -> None:
    """Schema 1 → 2 in one transaction: every journaled uuid into ``seen`` (with when it
    was received, as compaction would have put it there), and ``events`` rebuilt without
    its uuid index, keeping its rows, their seqs and the sequence (never reused)."""
    conn.execute("BEGIN IMMEDIATE")
    with conn:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        conn.execute("INSERT OR IGNORE INTO seen (uuid, at) SELECT uuid, received FROM events")
        conn.execute("ALTER TABLE events RENAME TO events_v1")
        conn.execute("""CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            uuid TEXT NOT NULL,
            kind TEXT NOT NULL,
            targets TEXT NOT NULL,
            received REAL NOT NULL,
            record BLOB NOT NULL)""")
        conn.execute("INSERT INTO events (seq, uuid, kind, targets, received, record) "
                     "SELECT seq, uuid, kind, targets, received, record FROM events_v1")
        conn.execute("DROP TABLE events_v1")
        conn.execute("CREATE INDEX events_received ON events (received)")
        if row is not None:
            conn.execute("DELETE FROM sqlite_sequence WHERE name = 'events'")
            conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('events', ?)",
                         (int(row[0]),))
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION),))


class Database:
    """The journal's connection, used by one operation at a time.

    ``run``: without ``fsync`` the operation runs right on the event loop's thread: a
    commit then never waits for the disk (synchronous=NORMAL), so it costs what its
    statements cost, where a worker thread would cost far more while the loop is busy —
    SQLite releases the GIL around every statement step, and the thread then waits up to
    the switch interval (5 ms) to get it back, for each row of an insert or a read. With
    ``fsync`` every commit waits for the disk, so operations run in a worker thread.
    ``run_thread``: always in a worker thread, for operations with few statement steps
    that may take long: scans and counts of the whole journal, and commits of many rows
    (one multi-row statement per table: the loop reads and decodes meanwhile)."""

    def __init__(self, path: Path, conn: sqlite3.Connection, *, fsync: bool) -> None:
        self.path = path
        #: the connection (tests and the journal's own functions; nothing else)
        self.conn = conn
        self.fsync = fsync
        self._limiter = anyio.CapacityLimiter(1)

    @classmethod
    async def open(cls, path: Path, *, fsync: bool, must_exist: bool = False) -> Database:
        if must_exist and not await anyio.Path(path).exists():
            raise JournalError("no journal here (has a2pd run with this state directory?)",
                               path)
        conn = await anyio.to_thread.run_sync(
            functools.partial(connect, path, fsync, upgrade=not must_exist))
        return cls(path, conn, fsync=fsync)

    def now(self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args,
            **kwargs: P.kwargs) -> T:
        """Run ``fn`` on the connection at once, on this thread (opening, small reads
        before anything else runs)."""
        try:
            return fn(self.conn, *args, **kwargs)
        except sqlite3.Error as exc:
            raise translate(exc, self.path) from exc

    async def run(self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args,
                  **kwargs: P.kwargs) -> T:
        if self.fsync:
            return await self.run_thread(fn, *args, **kwargs)
        async with self._limiter:
            return self.now(fn, *args, **kwargs)

    async def run_thread(self, fn: Callable[Concatenate[sqlite3.Connection, P], T],
                         *args: P.args, **kwargs: P.kwargs) -> T:
        call = functools.partial(fn, self.conn, *args, **kwargs)
        try:
            return await anyio.to_thread.run_sync(call, limiter=self._limiter)
        except sqlite3.Error as exc:
            raise translate(exc, self.path) from exc

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self.conn.close, limiter=self._limiter)

    def size_bytes(self) -> int:
        """The bytes the journal takes on disk: the database file and its write-ahead log
        (two ``stat`` calls; a file that is not there counts 0)."""
        total = 0
        for path in (self.path, self.path.with_name(self.path.name + "-wal")):
            with contextlib.suppress(OSError):
                total += os.stat(path).st_size
        return total


#: the WAL index (the "-shm" file): its header's version, and where its header keeps the
#: frames in the WAL and the checkpoint keeps the frames it has copied
#: (https://www.sqlite.org/walformat.html, "The WAL-Index Header")
_SHM_VERSION = 3007000
_SHM_HEADER = struct.Struct("=I12xI")  # iVersion, ..., mxFrame (offset 16)
_SHM_BACKFILL = struct.Struct("=I")  # nBackfill (offset 96)


def wal_backlog(shm: int) -> int | None:
    """Frames in the WAL the checkpoint has not copied yet, read from the WAL index (the
    open "-shm" file ``shm``): two reads, no lock, no SQLite call. None when the index is
    not there or not of a known version (then treat the WAL as due for a checkpoint). A
    torn read only mistimes one checkpoint."""
    try:
        header = os.pread(shm, _SHM_HEADER.size, 0)
        backfill = os.pread(shm, _SHM_BACKFILL.size, 96)
    except OSError:
        return None
    if len(header) < _SHM_HEADER.size or len(backfill) < _SHM_BACKFILL.size:
        return None
    version, frames = _SHM_HEADER.unpack(header)
    if version != _SHM_VERSION:
        return None
    copied: int = _SHM_BACKFILL.unpack(backfill)[0]
    return max(0, int(frames) - copied)


class Checkpointer:
    """Copies committed WAL frames into the database file, and syncs it, from a connection
    of its own in a worker thread of its own: commits and reads go on meanwhile (a passive
    checkpoint never blocks them), where SQLite's automatic checkpoint would stall the
    commit that crosses its threshold for the whole copy and sync. The automatic
    checkpoint stays as a safety net for a WAL that grows past ``AUTOCHECKPOINT_PAGES``
    anyway."""

    def __init__(self, path: Path, *, fsync: bool) -> None:
        self.path = path
        self.fsync = fsync
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._copied_at = time.monotonic()

    def due(self, last_commit: float) -> bool:
        """Whether the scheduled checkpoint should run now: ``CHECKPOINT_FRAMES`` wait to
        be copied; or any do and the journal has been quiet for ``TRUNCATE_IDLE``
        (``last_commit``: monotonic time of the last commit) or not checkpointed for
        ``CHECKPOINT_EVERY``; or it is quiet and the WAL file is over ``WAL_IDLE_SIZE``
        (to cut it, even with every frame copied). Reads the WAL index on the calling
        thread (open, two ``pread``, close, a ``stat``: a few microseconds)."""
        try:
            shm = os.open(self.path.with_name(self.path.name + "-shm"), os.O_RDONLY)
        except OSError:
            return True
        try:
            waiting = wal_backlog(shm)
        finally:
            os.close(shm)
        if waiting is None or waiting >= CHECKPOINT_FRAMES:
            return True
        now = time.monotonic()
        quiet = now - last_commit >= TRUNCATE_IDLE
        if waiting > 0:
            return quiet or now - self._copied_at >= CHECKPOINT_EVERY
        if not quiet:
            return False
        try:
            return os.stat(self.path.with_name(self.path.name + "-wal")).st_size > WAL_IDLE_SIZE
        except OSError:
            return False

    async def checkpoint(self, last_commit: Callable[[], float]) -> None:
        """A passive checkpoint; a WAL a burst grew is cut back once no commit came for
        ``TRUNCATE_IDLE`` (``last_commit()``: monotonic time of the last one, read once the
        passive checkpoint is done: copying a burst's WAL can take a second, and commits
        that came meanwhile must hold the cut back, or it runs beside traffic and a commit
        waits for it on the event loop's thread)."""
        try:
            await anyio.to_thread.run_sync(self._checkpoint, last_commit)
        except sqlite3.Error as exc:
            raise translate(exc, self.path) from exc

    def _checkpoint(self, last_commit: Callable[[], float]) -> None:
        with self._lock:
            if self._closed:
                return
            if self._conn is None:
                self._conn = sqlite3.connect(self.path, timeout=1.0, isolation_level=None,
                                             check_same_thread=False)
                self._conn.execute(f"PRAGMA synchronous={'FULL' if self.fsync else 'NORMAL'}")
            self._copied_at = time.monotonic()
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            wal = self.path.with_name(self.path.name + "-wal")
            try:
                size = wal.stat().st_size
            except FileNotFoundError:
                return
            if size > WAL_IDLE_SIZE and time.monotonic() - last_commit() >= TRUNCATE_IDLE:
                # a burst grew the WAL and no commit came since: nothing would rewind it
                # (which cuts it to journal_size_limit), so cut it here. Only when quiet,
                # and without waiting: a TRUNCATE holds writers off while it waits for
                # readers, and commits run on the event loop's thread
                self._conn.execute("PRAGMA busy_timeout = 0")
                try:
                    self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                finally:
                    self._conn.execute("PRAGMA busy_timeout = 1000")

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self._close)

    def _close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None
