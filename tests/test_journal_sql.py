"""The journal's SQL as plain functions on a connection: no event loop, no facade."""

from __future__ import annotations

import contextlib
import functools
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from a2pd.errors import JournalError
from a2pd.journal import db, gaps, letters, store
from a2pd.journal.model import DeadLetter, Pending, targets_field


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    connection = db.connect(tmp_path / "journal.db", fsync=False)
    try:
        yield connection
    finally:
        connection.close()


def pending(uuid: str, *, key: str | None = None, backfilled: bool = False,
            sinks: tuple[str, ...] = ("s",)) -> Pending:
    return Pending(uuid, "inbound", targets_field(sinks), b'{"kind":"inbound"}', key=key,
                   backfilled=backfilled)


def insert(conn: sqlite3.Connection, *items: Pending, now: float = 100.0,
           check_keys: bool = False) -> store.Committed:
    return store.insert(conn, items, now, (), check_keys=check_keys,
                        journaled=store.count(conn), max_events=0, full_policy="block")


def test_a_group_commit_drops_duplicates_and_known_content(conn: sqlite3.Connection) -> None:
    first = insert(conn, pending("a", key="m1"), pending("b"), pending("a"))
    assert first.seqs == [1, 2]
    assert [row.uuid for row in first.rows] == ["a", "b"]
    # a uuid journaled before; a backfilled event whose content was received live
    again = insert(conn, pending("a"), pending("c", key="m1", backfilled=True))
    assert again.seqs == []
    assert again.known == 1
    assert store.known_uuids(conn, ["a", "b", "c", "d"]) == {"a", "b", "c"}
    assert [row.uuid for row in store.read(conn, 0, 10)] == ["a", "b"]


def test_cursors_compaction_and_hand_over(conn: sqlite3.Connection) -> None:
    insert(conn, *(pending(f"u{i}") for i in range(5)))
    assert store.cursor(conn, "s") == 0  # a new sink starts at the oldest event
    store.advance(conn, "s", 3)
    store.advance(conn, "s", 2)  # never back
    assert store.cursor(conn, "s") == 3
    first = store.oldest(conn)
    compacted = store.compact_chunk(conn, ["s"], 200.0, newest=5, max_age=None,
                                    dedup_window=3600.0)
    # not counted (the caller takes what went from its count); the oldest looked up
    assert compacted == (3, 0, False, None, first)
    assert store.count(conn) == 2
    assert store.compact_chunk(conn, ["s"], 200.0, newest=5, max_age=None,
                               dedup_window=3600.0) == (0, 0, False, None, None)
    assert store.compact_chunk(conn, ["s"], 200.0, newest=5, max_age=None,
                               dedup_window=3600.0, recount=True) == (0, 0, False, 2, first)
    assert store.known_uuids(conn, ["u0"]) == {"u0"}  # remembered in seen
    assert store.backlogs(conn, []) == {"s": 2}
    assert store.hand_over(conn, "s", "t", None) == (2, 0)
    assert store.backlogs(conn, []) == {"t": 2}
    assert [row.targets for row in store.read(conn, 0, 10)] == [",t,", ",t,"]


def test_dead_letters_replay_only_what_reached_a_sink(conn: sqlite3.Connection) -> None:
    for sink, raw, size in (("s", b'{"kind":"outbound"}', 19), ("frame", b"x", 1),
                            ("s", b"{", 9)):
        letters.insert(conn, DeadLetter(0, sink, "u", None, "why", 1, 1.0, 1.0, 1.0, size,
                                        raw))
    assert [d.sink for d in letters.select(conn)] == ["s", "frame", "s"]
    # the frame never reached a sink, the third is cut (size > kept bytes): both stay
    assert letters.replay(conn, None, None, 5.0) == 1
    assert [(row.uuid, row.kind) for row in store.read(conn, 0, 10)] == \
        [("u#replay-1", "outbound")]
    with pytest.raises(ValueError, match=r"no dead letter with id \[9\]"):
        letters.replay(conn, [9], None, 5.0)
    assert letters.purge(conn, None, "s") == 1
    assert [d.sink for d in letters.select(conn)] == ["frame"]


def test_an_unclean_run_is_a_gap_from_its_last_commit(conn: sqlite3.Connection) -> None:
    assert gaps.begin_run(conn, 10.0, True) is None  # the first run
    insert(conn, pending("a"), now=15.0)  # its last commit
    since, gap = gaps.begin_run(conn, 20.0, True) or (None, None)  # it never stopped
    assert since == 15.0
    assert [(g.id, g.start) for g in gaps.pending(conn)] == [(gap, 15.0)]
    gaps.set_meta(conn, "run", "stopped")
    assert gaps.begin_run(conn, 30.0, True) is None


@pytest.mark.parametrize(("statements", "transient", "reason"), [
    # an error whose text says "full" or "locked" is no full disk and no lock (regression:
    # errors were classified by message text, so these were retried for ever as transient)
    (["SELECT * FROM fullness"], False, "SQLite error: no such table: fullness"),
    (["SELECT * FROM locked_out"], False, "SQLite error: no such table: locked_out"),
    # SQLite's own SQLITE_FULL: no page may be added
    (["CREATE TABLE grow (x)", "PRAGMA max_page_count = 1",
      "INSERT INTO grow VALUES (zeroblob(100000))"], True, "the disk is full"),
])
def test_sqlite_errors_are_told_apart_by_their_code(conn: sqlite3.Connection,
                                                    statements: list[str], transient: bool,
                                                    reason: str) -> None:
    error = db.translate(_failing(conn, statements), Path("/state/journal.db"))
    assert (error.transient, error.reason) == (transient, reason)


def _failing(conn: sqlite3.Connection, statements: list[str]) -> sqlite3.Error:
    try:
        for statement in statements:
            conn.execute(statement)
    except sqlite3.Error as exc:
        return exc
    raise AssertionError("no statement failed")


def test_a_busy_database_is_a_transient_lock(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    first = db.connect(path, fsync=False)
    second = db.connect(path, fsync=False)
    second.execute("PRAGMA busy_timeout = 0")
    try:
        first.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.Error) as caught:
            second.execute("BEGIN IMMEDIATE")
        error = db.translate(caught.value, path)
        assert error.transient
        assert error.reason.startswith("the journal is locked by another process")
    finally:
        first.close()
        second.close()


async def test_a_burst_wal_is_cut_back_only_when_no_commit_came(tmp_path: Path) -> None:
    """After the passive checkpoint, the WAL a burst grew is truncated only if the last
    commit (read then, not before the checkpoint began: copying a burst's WAL takes a
    while, and traffic may have resumed) is older than TRUNCATE_IDLE."""
    path = tmp_path / "journal.db"
    conn = db.connect(path, fsync=False)
    wal = path.with_name(path.name + "-wal")
    try:
        conn.execute("CREATE TABLE burst (x)")
        with conn:
            conn.executemany("INSERT INTO burst VALUES (zeroblob(65536))", [()] * 100)
        assert wal.stat().st_size > db.WAL_IDLE_SIZE
        checkpointer = db.Checkpointer(path, fsync=False)
        asked: list[float] = []

        def committing() -> float:  # a commit came while the checkpoint copied the WAL
            asked.append(time.monotonic())
            return time.monotonic()

        before = time.monotonic()
        await checkpointer.checkpoint(committing)
        assert len(asked) == 1
        assert asked[0] >= before
        assert wal.stat().st_size > db.WAL_IDLE_SIZE  # traffic: not cut back
        await checkpointer.checkpoint(lambda: time.monotonic() - 2 * db.TRUNCATE_IDLE)
        assert wal.stat().st_size == 0  # quiet: cut back
        await checkpointer.close()
    finally:
        conn.close()


async def test_commits_after_a_checkpoint_leave_a_wal_under_the_limit(tmp_path: Path
                                                                      ) -> None:
    """Steady traffic writes megabytes of WAL between two checkpoints. Once a checkpoint
    has copied it, the next commit starts the WAL over, and cut it back to the limit when
    it was over: an ftruncate on the committing thread (the event loop's, for a small
    commit) of 11-16 ms on ext4, every second at 1,000 events/s (was: a 4 MiB limit).
    Under the limit the file is reused as it is; the checkpoint cuts it when quiet."""
    path = tmp_path / "journal.db"
    wal = path.with_name(path.name + "-wal")
    with contextlib.closing(db.connect(path, fsync=False)) as conn:
        conn.execute("CREATE TABLE second (x)")
        with conn:  # a second's worth of WAL at 1,000 events/s
            conn.executemany("INSERT INTO second VALUES (zeroblob(65536))", [()] * 150)
        grown = wal.stat().st_size
        assert db.WAL_IDLE_SIZE < grown < db.WAL_SIZE_LIMIT
        checkpointer = db.Checkpointer(path, fsync=False)
        await checkpointer.checkpoint(time.monotonic)  # traffic goes on: no cut
        with conn:
            conn.execute("INSERT INTO second VALUES (1)")  # starts the WAL over
        assert wal.stat().st_size == grown
        await checkpointer.close()


def _steps(conn: sqlite3.Connection, fn: Callable[[], object]) -> int:
    """SQLite virtual-machine steps ``fn`` takes on ``conn`` (a count, not a time)."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    conn.set_progress_handler(count, 100)
    try:
        fn()
    finally:
        conn.set_progress_handler(None, 100)
    return steps


@pytest.mark.parametrize("max_age", [None, 7 * 86400.0])
def test_compaction_costs_the_same_whatever_the_backlog(tmp_path: Path,
                                                         max_age: float | None) -> None:
    """A chunk of compaction looks at a bounded number of rows: with max_age on, the
    expiry looked through every undelivered event for old ones (twice), so every chunk
    cost as much as the whole backlog while a burst was being delivered."""
    cost = []
    for backlog in (2_000, 16_000):
        with contextlib.closing(db.connect(tmp_path / f"{backlog}.db", fsync=False)) as conn:
            for start in range(0, backlog, 1000):
                insert(conn, *(pending(f"u{i}") for i in range(start, start + 1000)))
            store.cursor(conn, "s")
            store.advance(conn, "s", 600)  # one chunk delivered, the backlog not
            cost.append(_steps(conn, functools.partial(
                store.compact_chunk, conn, ["s"], 200.0, newest=backlog, max_age=max_age,
                dedup_window=3600.0)))
            assert store.count(conn) == backlog - store.COMPACT_CHUNK
    assert cost[1] < cost[0] * 1.5, cost


@pytest.mark.parametrize("size", [1, 3, 255, 256, 257, 700])
def test_a_commit_of_any_size_writes_every_row_once(conn: sqlite3.Connection,
                                                    size: int) -> None:
    """A commit's rows go in multi-row statements of a power of two rows each: every size
    writes each event, content key and object once, in order."""
    items = [Pending(f"u{i}", "outbound", targets_field(("s",)), b'{"n":%d}' % i,
                     key=f"message:{i}:Sent", track=(f"message:{i}", "b1", 50.0, i % 2 == 0))
             for i in range(size)]
    items.append(items[0])  # a duplicate in the same commit
    done = insert(conn, *items, now=100.0)
    assert done.seqs == list(range(1, size + 1))
    rows = store.read(conn, 0, size + 10)
    assert [(r.seq, r.uuid, r.record) for r in rows] == \
        [(i + 1, f"u{i}", b'{"n":%d}' % i) for i in range(size)]
    assert conn.execute("SELECT key FROM content ORDER BY at, key").fetchall() == \
        sorted((f"key:message:{i}:Sent",) for i in range(size))
    assert conn.execute("SELECT object, batch, created, touched FROM inflight ORDER BY object"
                        ).fetchall() == sorted((f"message:{i}", "b1", 50.0, 100.0)
                                               for i in range(0, size, 2))
    again = insert(conn, *items[:size], now=200.0)  # all of them known
    assert again.seqs == []
    assert store.count(conn) == size


_SCHEMA_1_EVENTS = """CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    targets TEXT NOT NULL,
    received REAL NOT NULL,
    record BLOB NOT NULL
)"""


def _journal_of_schema_1(path: Path) -> None:
    """A journal as a2pd wrote it before schema 2: seqs 1-7 given out, 1-4 compacted away
    (their uuids in seen), 5-7 journaled (their uuids only in events)."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute(_SCHEMA_1_EVENTS)
        conn.execute("CREATE TABLE seen (uuid TEXT PRIMARY KEY, at REAL NOT NULL) "
                     "WITHOUT ROWID")
        conn.execute("CREATE TABLE cursors (sink TEXT PRIMARY KEY, seq INTEGER NOT NULL)")
        with conn:
            conn.execute("INSERT INTO meta VALUES ('schema', '1')")
            conn.executemany("INSERT INTO events VALUES (?, ?, 'inbound', ',s,', ?, ?)",
                             [(seq, f"u{seq}", 90.0 + seq, b'{"n":%d}' % seq)
                              for seq in range(1, 8)])
            conn.execute("DELETE FROM events WHERE seq <= 4")
            conn.executemany("INSERT INTO seen VALUES (?, ?)",
                             [(f"u{seq}", 90.0 + seq) for seq in range(1, 5)])
            conn.execute("INSERT INTO cursors VALUES ('s', 5)")
            conn.execute("INSERT INTO events VALUES (8, 'u8', 'inbound', ',s,', 98.0, x'7b7d')")
            conn.execute("DELETE FROM events WHERE seq = 8")  # the newest went too
            conn.execute("INSERT INTO seen VALUES ('u8', 98.0)")


def test_a_journal_of_schema_1_is_upgraded_by_the_daemon_only(tmp_path: Path) -> None:
    """Schema 2 keeps every journaled uuid in seen and no uuid index on events. A journal
    of schema 1 is upgraded when the daemon opens it: rows, seqs, cursors and the sequence
    kept, every uuid still a duplicate; the CLI (which may run beside an older daemon)
    refuses it, saying what upgrades it."""
    path = tmp_path / "journal.db"
    _journal_of_schema_1(path)
    with pytest.raises(JournalError, match="`a2pd run` upgrades it"):
        db.connect(path, fsync=False, upgrade=False)
    with contextlib.closing(db.connect(path, fsync=False)) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == \
            (str(db.SCHEMA_VERSION),)
        assert [row[1] for row in conn.execute("PRAGMA index_list(events)")] == \
            ["events_received"]
        assert [(r.seq, r.uuid, r.record) for r in store.read(conn, 0, 10)] == \
            [(seq, f"u{seq}", b'{"n":%d}' % seq) for seq in range(5, 8)]
        assert store.cursor(conn, "s") == 5
        assert store.known_uuids(conn, [f"u{seq}" for seq in range(1, 10)]) == \
            {f"u{seq}" for seq in range(1, 9)}
        assert insert(conn, pending("u6"), pending("u9")).seqs == [9]  # never reused
    with contextlib.closing(db.connect(path, fsync=False, upgrade=False)) as conn:
        assert store.last_seq(conn) == 9


def test_compaction_writes_no_page_for_each_uuid(tmp_path: Path) -> None:
    """Compacting a chunk of delivered events deletes a contiguous range of rows: the WAL
    pages it writes do not grow with the uuids' spread (was: each row's entry in the uuid
    index deleted and its uuid copied to seen, two random-order B-tree writes per event,
    so a 500-row chunk under a burst took 40-70 ms and commits waited for it)."""
    path = tmp_path / "journal.db"
    wal = path.with_name(path.name + "-wal")
    rng = random.Random(17)
    with contextlib.closing(db.connect(path, fsync=False)) as conn:
        for _ in range(20):
            insert(conn, *(pending(f"{rng.getrandbits(128):032x}") for _ in range(1000)))
        store.cursor(conn, "s")
        store.advance(conn, "s", store.COMPACT_CHUNK)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert wal.stat().st_size == 0
        store.compact_chunk(conn, ["s"], 200.0, newest=20_000, max_age=None,
                            dedup_window=3600.0)
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        frames = wal.stat().st_size // (page + 24)
    assert frames < 40, frames
