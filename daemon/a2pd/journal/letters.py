"""Dead letters: what could not be decoded or delivered, kept with why, until an operator
replays or purges it.

    dead_letters  sink (or a source that is not a sink: frame, notification, backfill),
                  uuid, seq, reason, attempts, first/last attempt, created, size, raw bytes
                  (cut to ``max_raw_bytes``, known secrets masked)

Received input that does not decode is dead-lettered with the next group commit
(``Committer.queue_dead_letter``); a sink's refusals are written at once (``add``).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Sequence

from a2pd import counts
from a2pd.errors import JournalError
from a2pd.journal.db import Database
from a2pd.journal.model import DeadLetter, targets_field
from a2pd.logging import scrub
from a2pd.names import DEAD_LETTER_SOURCES
from a2pd.observe import Counters

__all__ = ["DeadLetters", "insert", "purge", "replay", "select"]


def insert(conn: sqlite3.Connection, letter: DeadLetter) -> None:
    with conn:
        conn.execute(
            "INSERT INTO dead_letters (sink, reason, raw, uuid, seq, attempts, first_attempt, "
            "last_attempt, created, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (letter.sink, letter.reason, letter.raw, letter.uuid, letter.seq, letter.attempts,
             letter.first_attempt, letter.last_attempt, letter.created, letter.size))


def select(conn: sqlite3.Connection, sink: str | None = None) -> list[DeadLetter]:
    sql = ("SELECT id, sink, uuid, seq, reason, attempts, first_attempt, last_attempt, "
           "created, size, raw FROM dead_letters")
    rows = conn.execute(sql + (" WHERE sink = ?" if sink else "") + " ORDER BY id",
                        (sink,) if sink else ()).fetchall()
    return [DeadLetter(id=r[0], sink=r[1], uuid=r[2], seq=r[3], reason=r[4], attempts=r[5],
                       first_attempt=r[6], last_attempt=r[7], created=r[8], size=r[9],
                       raw=bytes(r[10]))
            for r in rows]


def replay(conn: sqlite3.Connection, ids: list[int] | None, sink: str | None, now: float
           ) -> int:
    """Move sink dead letters back into the journal as new events for their sink; how
    many. Letters of input that never reached a sink, and cut ones, stay. ``ValueError``
    naming ids that are not there."""
    letters = [d for d in select(conn, sink) if ids is None or d.id in ids]
    if ids is not None:
        missing = set(ids) - {d.id for d in letters}
        if missing:
            raise ValueError(f"no dead letter with id {sorted(missing)}")
    requeued = 0
    with conn:
        for letter in letters:
            if letter.sink in DEAD_LETTER_SOURCES:
                continue  # never reached a sink: nothing to deliver again
            if letter.truncated:
                continue  # the record was cut: replaying it would deliver a fragment
            uuid = f"{letter.uuid or 'dead-letter'}#replay-{letter.id}"
            conn.execute(
                "INSERT INTO events (uuid, kind, targets, received, record) "
                "VALUES (?, ?, ?, ?, ?)",
                (uuid, _kind_of(letter.raw), targets_field([letter.sink]), now, letter.raw))
            conn.execute("INSERT OR IGNORE INTO seen (uuid, at) VALUES (?, ?)", (uuid, now))
            conn.execute("DELETE FROM dead_letters WHERE id = ?", (letter.id,))
            requeued += 1
    return requeued


def purge(conn: sqlite3.Connection, ids: list[int] | None, sink: str | None) -> int:
    letters = [d.id for d in select(conn, sink) if ids is None or d.id in ids]
    with conn:
        conn.executemany("DELETE FROM dead_letters WHERE id = ?", [(i,) for i in letters])
    return len(letters)


def _kind_of(record: bytes) -> str:
    try:
        kind = json.loads(record).get("kind")
    except (ValueError, AttributeError):
        return "unknown"
    return kind if isinstance(kind, str) else "unknown"


class DeadLetters:
    """A journal's dead letters (``Journal.letters``)."""

    def __init__(self, db: Database, counters: Counters, *, max_raw_bytes: int,
                 clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._counters = counters
        self._max_raw_bytes = max_raw_bytes
        self._clock = clock

    async def add(self, sink: str, reason: str, raw: bytes, *, uuid: str | None = None,
                  seq: int | None = None, attempts: int = 1, first_attempt: float | None = None,
                  last_attempt: float | None = None) -> None:
        """Keep ``raw`` (cut to ``max_raw_bytes``, known secrets masked) with why it failed."""
        now = self._clock()
        kept = scrub(raw)[: self._max_raw_bytes]
        await self._db.run(insert, DeadLetter(
            0, sink, uuid, seq, reason, attempts, first_attempt or now, last_attempt or now,
            now, len(raw), kept))
        self._counters.inc(counts.DEAD_LETTERS)
        self._counters.inc(f"{counts.DEAD_LETTERS}.{sink}")

    async def entries(self, sink: str | None = None) -> list[DeadLetter]:
        """Every dead letter (only ``sink``'s), oldest first."""
        return await self._db.run_thread(select, sink)

    async def replay(self, ids: Sequence[int] | None, sink: str | None) -> int:
        """Move sink dead letters back into the journal for their sink (all of them when
        ``ids`` is None, optionally only ``sink``'s). Returns how many were requeued."""
        try:
            return await self._db.run_thread(replay, None if ids is None else list(ids), sink,
                                             self._clock())
        except ValueError as exc:
            raise JournalError(str(exc), self._db.path) from None

    async def purge(self, ids: Sequence[int] | None, sink: str | None) -> int:
        """Delete dead letters (all, or by id, optionally only ``sink``'s)."""
        return await self._db.run_thread(purge, None if ids is None else list(ids), sink)
