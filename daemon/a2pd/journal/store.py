"""The journal's events, cursors and compaction as plain synchronous functions on a
connection: testable without an event loop, run by ``Database`` one at a time.

    events   seq (order), uuid, kind, targets (",sink,sink,"), received, record
    seen     uuid → when it was received: every journaled uuid from its commit, and the
             uuids of duplicates dropped for their content; deduplication looks here only,
             for the dedup window and for as long as its event is journaled (events has no
             uuid index: compaction deletes a contiguous range of rows, where deleting each
             row's index entry and copying its uuid here took three random-order B-tree
             writes per event, #17)
    content  ``key:``/``bkey:`` + events.content_key (received live / backfilled) → last
             seen: a backfilled event equal to one already journaled is dropped, and so is a
             live one the backfill journaled first
    inflight A2P objects still changing ("message:<id>", "batch:<id>" → batch, created,
             touched), for the backfill
    pairs    opt-out pair ("from:to") → when its newest journaled state was set: a rebuilt
             state older than that is stale and dropped
    cursors  sink → last delivered seq
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Literal, NamedTuple

from a2pd.journal.model import BACKFILLED, LIVE, Pending, PendingLetter, Row, repeats_content

__all__ = [
    "COMPACT_CHUNK",
    "IN_CHUNK",
    "Committed",
    "Compacted",
    "advance",
    "backlogs",
    "compact_chunk",
    "count",
    "cursor",
    "delete_events",
    "drop_sink",
    "hand_over",
    "insert",
    "known_uuids",
    "last_seq",
    "oldest",
    "read",
    "scalar",
]

#: rows deleted per compaction transaction (a few milliseconds of the loop thread)
COMPACT_CHUNK = 500
#: uuids per "IN (...)" query (SQLite allows 32,766 variables since 3.32; older builds 999)
IN_CHUNK = 512


def scalar(conn: sqlite3.Connection, sql: str, *args: object) -> int:
    value = conn.execute(sql, args).fetchone()[0]
    return int(value or 0)


def last_seq(conn: sqlite3.Connection) -> int:
    """The newest seq ever given out (compaction may have removed it)."""
    return scalar(conn, "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = "
                        "'events'), (SELECT MAX(seq) FROM events), 0)")


def oldest(conn: sqlite3.Connection) -> float | None:
    """When the oldest journaled event was received."""
    row = conn.execute("SELECT received FROM events ORDER BY seq LIMIT 1").fetchone()
    return float(row[0]) if row else None


def count(conn: sqlite3.Connection) -> int:
    return scalar(conn, "SELECT COUNT(*) FROM events")


class Committed(NamedTuple):
    """What a group commit did."""

    #: the seqs of the new rows, and the rows (in order)
    seqs: list[int]
    rows: list[Row]
    #: oldest undelivered events dropped for room (full_policy drop_oldest)
    dropped: int
    #: events dropped because their content (or a newer state of their pair) was journaled
    known: int
    #: the kind of each backfilled event written
    backfilled: list[str]


def insert(conn: sqlite3.Connection, batch: Sequence[Pending], now: float,
           letters: Sequence[PendingLetter], *, check_keys: bool, journaled: int,
           max_events: int, full_policy: Literal["block", "drop_oldest"]) -> Committed:
    """One transaction for a group commit: a few statements for the whole batch (multi-row
    ``INSERT``s, ``_values``), not a few per event. Same outcome as taking the events one by one in
    order: a uuid already seen (or still journaled) is a duplicate; a known content key
    drops a backfilled event (``repeats_content``, which also sees the keys earlier events
    of this batch set or dropped); the last set-or-drop of a content key wins.
    ``check_keys``: whether a live event can repeat a backfilled key (any is known);
    ``journaled``: the events in the journal before this commit."""
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
        seen = known_uuids(conn, [item.uuid for item in batch])
        #: uuids of events not journaled that must still be remembered
        new_seen: list[tuple[str, float]] = []
        fresh: list[Pending] = []
        for item in batch:
            if item.uuid in seen:
                continue
            if (item.backfilled or check_keys) and repeats_content(item, present):
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
            content = item.content
            if content is not None:
                ops[content] = True
            for stale in item.drop:
                ops[LIVE + stale] = False
                ops[BACKFILLED + stale] = False
            fresh.append(item)
            seen.add(item.uuid)  # a second append of it in this batch is a duplicate
            if item.track is not None:
                obj, in_batch, created, is_open = item.track
                objects[obj] = (obj, in_batch, created, now) if is_open else None
            if item.backfilled:
                backfilled.append(item.kind)
                check_keys = True
        if ops:
            gone = [key for key, kept in ops.items() if not kept]
            if gone:
                conn.executemany("DELETE FROM content WHERE key = ?", [(key,) for key in gone])
            _values(conn, "INSERT OR REPLACE INTO content (key, at) VALUES ", "(?,?)",
                    [value for key, kept in ops.items() if kept for value in (key, now)])
        if pairs:
            conn.executemany("INSERT OR REPLACE INTO pairs (pair, at) VALUES (?, ?)",
                             list(pairs.items()))
        if objects:
            closed = [(obj,) for obj, row in objects.items() if row is None]
            if closed:
                conn.executemany("DELETE FROM inflight WHERE object = ?", closed)
            _values(conn, "INSERT INTO inflight (object, batch, created, touched) VALUES ",
                    "(?,?,?,?)",
                    [value for row in objects.values() if row is not None for value in row],
                    tail=" ON CONFLICT (object) DO UPDATE SET touched = excluded.touched, "
                         "created = min(created, excluded.created)")
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        first = (int(row[0]) if row else 0) + 1
        seqs = list(range(first, first + len(fresh)))
        _values(conn, "INSERT INTO events (seq, uuid, kind, targets, received, record) "
                      "VALUES ", "(?,?,?,?,?,?)",
                [value for seq, item in zip(seqs, fresh, strict=True)
                 for value in (seq, item.uuid, item.kind, item.targets, now, item.record)])
        # every journaled uuid, and those of the content duplicates dropped
        seen_rows: list[object] = [value for item in fresh for value in (item.uuid, now)]
        seen_rows += [value for pair in new_seen for value in pair]
        _values(conn, "INSERT OR IGNORE INTO seen (uuid, at) VALUES ", "(?,?)", seen_rows)
        rows = [Row(seq, item.uuid, item.kind, item.targets, item.record)
                for seq, item in zip(seqs, fresh, strict=True)]
        # when this run last committed: if it ends without a clean stop, the next start
        # records a gap from here (gaps.begin_run)
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_commit', ?)",
                     (repr(now),))
        if full_policy == "drop_oldest" and max_events:
            over = journaled + len(seqs) - max_events
            if over > 0:
                dropped = delete_events(
                    conn, "seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?)", (over,))
    return Committed(seqs, rows, dropped, known, backfilled)


#: at most this many rows in one INSERT statement
VALUES_ROWS = 256


def _values(conn: sqlite3.Connection, head: str, one: str, values: list[object], *,
            tail: str = "") -> None:
    """``head`` + ``VALUES`` for every row (``one``: a row's placeholders) + ``tail``, as
    few statements as it takes: one statement inserts many rows in one step, where
    ``executemany`` runs the statement once per row. Rows go in chunks of a power of two
    (at most ``VALUES_ROWS``), so a handful of statements stay in the statement cache."""
    width = one.count("?")
    rows = len(values) // width
    at = 0
    while at < rows:
        size = min(VALUES_ROWS, 1 << ((rows - at).bit_length() - 1))
        sql = head + ",".join([one] * size) + tail
        conn.execute(sql, values[at * width:(at + size) * width])
        at += size


def known_uuids(conn: sqlite3.Connection, uuids: list[str]) -> set[str]:
    """Which of ``uuids`` are remembered in ``seen`` (journaled, or seen within the dedup
    window)."""
    known: set[str] = set()
    for at in range(0, len(uuids), IN_CHUNK):
        chunk = uuids[at:at + IN_CHUNK]
        # padded to a power of two (repeating a uuid changes nothing): a handful of
        # distinct statements, which stay in the connection's statement cache
        chunk += chunk[:1] * ((1 << (len(chunk) - 1).bit_length()) - len(chunk))
        marks = ",".join("?" * len(chunk))
        known.update(uuid for (uuid,) in conn.execute(
            f"SELECT uuid FROM seen WHERE uuid IN ({marks})", chunk))  # noqa: S608 - only "?" placeholders are interpolated
    return known


def read(conn: sqlite3.Connection, after: int, limit: int) -> list[Row]:
    """Committed rows with ``seq > after``, oldest first."""
    rows = conn.execute(
        "SELECT seq, uuid, kind, targets, record FROM events WHERE seq > ? "
        "ORDER BY seq LIMIT ?", (after, limit)).fetchall()
    return [Row(int(r[0]), r[1], r[2], r[3], bytes(r[4])) for r in rows]


def cursor(conn: sqlite3.Connection, sink: str) -> int:
    """Where ``sink`` stands; a new sink starts at the oldest event still journaled."""
    row = conn.execute("SELECT seq FROM cursors WHERE sink = ?", (sink,)).fetchone()
    if row is not None:
        return int(row[0])
    start = max(0, scalar(conn, "SELECT COALESCE(MIN(seq), 0) FROM events") - 1)
    with conn:
        conn.execute("INSERT INTO cursors (sink, seq) VALUES (?, ?)", (sink, start))
    return start


def advance(conn: sqlite3.Connection, sink: str, seq: int) -> None:
    """``sink`` has delivered everything up to ``seq``."""
    with conn:
        conn.execute("UPDATE cursors SET seq = MAX(seq, ?) WHERE sink = ?", (seq, sink))


def backlogs(conn: sqlite3.Connection, sinks: list[str]) -> dict[str, int]:
    """The sinks with a cursor that are not in ``sinks`` and their undelivered events."""
    found: dict[str, int] = {}
    for sink, seq in conn.execute("SELECT sink, seq FROM cursors").fetchall():
        if sink not in sinks:
            found[sink] = scalar(
                conn, "SELECT COUNT(*) FROM events WHERE seq > ? AND instr(targets, ?) > 0",
                seq, f",{sink},")
    return found


def hand_over(conn: sqlite3.Connection, old: str, new: str, cap: int | None
              ) -> tuple[int, int]:
    """Re-target ``old``'s undelivered events to ``new`` (see ``Journal.hand_over``)."""
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
            again = scalar(conn, "SELECT COUNT(*) FROM events WHERE seq > ? AND seq <= ? "
                                 "AND instr(targets, ?) > 0", start, int(own[0]), f",{new},")
        conn.execute("INSERT INTO cursors (sink, seq) VALUES (?, ?) ON CONFLICT (sink) "
                     "DO UPDATE SET seq = min(seq, excluded.seq)", (new, start))
        conn.execute("DELETE FROM cursors WHERE sink = ?", (old,))
    return moved, again


def drop_sink(conn: sqlite3.Connection, sink: str) -> None:
    with conn:
        conn.execute("DELETE FROM cursors WHERE sink = ?", (sink,))


class Compacted(NamedTuple):
    """What one chunk of compaction did."""

    removed: int
    expired: int
    #: whether more is left for another chunk
    more: bool
    #: the events journaled, counted when asked to (None otherwise: the caller takes what
    #: went from its count, where counting every chunk read the whole table)
    journaled: int | None = None
    #: when the oldest event left was received (when any went, or when asked to)
    oldest: float | None = None


def compact_chunk(conn: sqlite3.Connection, sinks: list[str], now: float, *, newest: int,
                  max_age: float | None, dedup_window: float,
                  recount: bool = False) -> Compacted:
    """One chunk of compaction: delete events every one of ``sinks`` has passed (all up to
    ``newest`` when there is no sink), undelivered events older than ``max_age`` among the
    oldest ``COMPACT_CHUNK`` (journal order: a chunk never looks through the whole
    backlog, which it did for every chunk while a burst was delivered, #17), and uuids,
    content keys, objects and pairs older than the dedup window, at most
    ``COMPACT_CHUNK`` rows of each. With ``recount`` the journal is counted in the same
    transaction (one operation, where a count of its own would let a commit in between);
    otherwise the caller takes what went from its count: a count reads the whole table
    (it has no index since schema 2), which every chunk of a burst's backlog did."""
    with conn:
        if sinks:
            marks = ",".join("?" * len(sinks))
            sql = f"SELECT MIN(seq), COUNT(*) FROM cursors WHERE sink IN ({marks})"  # noqa: S608 - only "?" placeholders are interpolated
            low = conn.execute(sql, sinks).fetchone()
            floor = int(low[0] or 0) if low[1] == len(sinks) else 0
        else:
            floor = newest
        first = conn.execute("SELECT MIN(seq) FROM events").fetchone()[0]
        removed, more = 0, False
        if first is not None and first <= floor:
            upto = min(floor, first + COMPACT_CHUNK - 1)
            removed = delete_events(conn, "seq <= ?", (upto,))
            more = upto < floor
        expired = 0
        if max_age is not None:
            expired = delete_events(
                conn, "seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?) AND received < ?",
                (COMPACT_CHUNK, now - max_age))
            more = more or expired >= COMPACT_CHUNK
        forget = now - dedup_window
        # a journaled event's uuid stays known while the event is journaled: seen rows go
        # only once older than the oldest event (seen.at is when it was received)
        first_received = conn.execute(
            "SELECT received FROM events ORDER BY seq LIMIT 1").fetchone()
        seen_forget = forget if first_received is None else min(forget, first_received[0])
        for table, key, at, before in (("seen", "uuid", "at", seen_forget),
                                       ("content", "key", "at", forget),
                                       ("inflight", "object", "touched", forget),
                                       ("pairs", "pair", "at", forget)):
            gone = conn.execute(
                f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} "  # noqa: S608 - constant names
                f"WHERE {at} < ? ORDER BY {at} LIMIT ?)", (before, COMPACT_CHUNK)).rowcount
            more = more or gone >= COMPACT_CHUNK
        if not (removed or expired or recount):
            return Compacted(int(removed), int(expired), more)
        return Compacted(int(removed), int(expired), more,
                         count(conn) if recount else None, oldest(conn))


def delete_events(conn: sqlite3.Connection, where: str, args: tuple[object, ...]) -> int:
    """Delete the events ``where`` selects (their uuids stay in ``seen``, deduplication, for
    the dedup window from when they were received); how many went."""
    return int(conn.execute(f"DELETE FROM events WHERE {where}", args).rowcount)  # noqa: S608 - callers pass constant conditions
