"""The journal's SQL as plain functions on a connection: no event loop, no facade."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

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
    # recounted in the same transaction, since events went
    assert compacted == (3, 0, False, 2, first)
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
        assert wal.stat().st_size > db.WAL_SIZE_LIMIT
        checkpointer = db.Checkpointer(path, fsync=False)
        asked: list[float] = []

        def committing() -> float:  # a commit came while the checkpoint copied the WAL
            asked.append(time.monotonic())
            return time.monotonic()

        before = time.monotonic()
        await checkpointer.checkpoint(committing)
        assert len(asked) == 1
        assert asked[0] >= before
        assert wal.stat().st_size > db.WAL_SIZE_LIMIT  # traffic: not cut back
        await checkpointer.checkpoint(lambda: time.monotonic() - 2 * db.TRUNCATE_IDLE)
        assert wal.stat().st_size <= db.WAL_SIZE_LIMIT  # quiet: cut back
        await checkpointer.close()
    finally:
        conn.close()
