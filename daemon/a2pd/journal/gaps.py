"""What the backfill needs from the journal: unrecovered gaps, the A2P objects still
changing, values it keeps (its progress), and the run marker that turns an unclean stop
into a gap.

    gaps      unrecovered gaps waiting for the backfill (start, wall time), until done
    inflight  A2P objects still changing ("message:<id>", "batch:<id>" → batch, created,
              touched): an outbound message until a final status, a batch until Completed;
              the backfill asks for their later states after a gap; forgotten after the
              dedup window without news (written by commits: store.insert)
    meta      the run marker (``run`` running/stopped, ``run_started``, ``last_commit``
              written by every commit): a run that did not end with everything committed
              is a gap from its last commit at the next start (``begin_run``)
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence

from a2pd.journal.db import Database
from a2pd.journal.model import Gap

__all__ = [
    "Gaps",
    "add",
    "begin_run",
    "close",
    "forget_objects",
    "get_meta",
    "open_objects",
    "pending",
    "set_meta",
]


def add(conn: sqlite3.Connection, start: float, now: float) -> int:
    with conn:
        cur = conn.execute("INSERT INTO gaps (start, opened) VALUES (?, ?)", (start, now))
    assert cur.lastrowid is not None
    return cur.lastrowid


def pending(conn: sqlite3.Connection) -> list[Gap]:
    rows = conn.execute("SELECT id, start, opened FROM gaps ORDER BY id").fetchall()
    return [Gap(int(r[0]), float(r[1]), float(r[2])) for r in rows]


def close(conn: sqlite3.Connection, gap_id: int) -> None:
    with conn:
        conn.execute("DELETE FROM gaps WHERE id = ?", (gap_id,))


def open_objects(conn: sqlite3.Connection, created_before: float
                 ) -> list[tuple[str, str | None, float]]:
    return [(str(r[0]), None if r[1] is None else str(r[1]), float(r[2]))
            for r in conn.execute(
                "SELECT object, batch, created FROM inflight WHERE created < ? "
                "ORDER BY batch, created", (created_before,))]


def forget_objects(conn: sqlite3.Connection, objects: list[str]) -> None:
    with conn:
        conn.executemany("DELETE FROM inflight WHERE object = ?", [(obj,) for obj in objects])


def get_meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def set_meta(conn: sqlite3.Connection, key: str, value: str | None) -> None:
    with conn:
        if value is None:
            conn.execute("DELETE FROM meta WHERE key = ?", (key,))
        else:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


def begin_run(conn: sqlite3.Connection, now: float, record_gap: bool
              ) -> tuple[float, int | None] | None:
    """Mark a run as started; ``(since, gap id)`` when the last one did not end cleanly."""
    meta = dict(conn.execute(
        "SELECT key, value FROM meta WHERE key IN ('run', 'run_started', 'last_commit')"))
    unclean = None
    with conn:
        if meta.get("run") == "running":
            # its last commit; if it made none, its start (an older last commit belongs to
            # a run that ended cleanly)
            since = max(float(meta.get(key) or 0.0)
                        for key in ("last_commit", "run_started")) or now
            gap = None
            if record_gap:
                gap = conn.execute("INSERT INTO gaps (start, opened) VALUES (?, ?)",
                                   (since, now)).lastrowid
            unclean = (since, gap)
        conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                         [("run", "running"), ("run_started", repr(now))])
    return unclean


class Gaps:
    """A journal's gaps, open objects and kept values (``Journal.gaps``)."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

    async def add(self, start: float) -> int:
        """Remember an unrecovered gap beginning at ``start`` (wall time); its id."""
        return await self._db.run(add, start, self._clock())

    async def pending(self) -> list[Gap]:
        """Gaps not backfilled yet, oldest first."""
        return await self._db.run(pending)

    async def close(self, gap_id: int) -> None:
        """The gap is backfilled (its events are committed)."""
        await self._db.run(close, gap_id)

    async def open_objects(self, created_before: float) -> list[tuple[str, str | None, float]]:
        """``(object, batch, created)`` of the A2P objects still open that were created
        before ``created_before`` (wall time), by batch."""
        return await self._db.run(open_objects, created_before)

    async def forget_objects(self, objects: Sequence[str]) -> None:
        """Stop tracking objects the platform no longer knows (a 404 on reading them)."""
        await self._db.run(forget_objects, list(objects))

    async def get_meta(self, key: str) -> str | None:
        """A value another module keeps in the journal (e.g. the backfill's progress)."""
        return await self._db.run(get_meta, key)

    async def set_meta(self, key: str, value: str | None) -> None:
        """Keep (None: forget) a value in the journal, durably."""
        await self._db.run(set_meta, key, value)

    async def begin_run(self, *, record_gap: bool = True) -> tuple[float, int | None] | None:
        """A daemon starts using this journal. If the last run did not end with everything
        it had taken in committed (SIGKILL, a crash, a stop while the disk was full):
        ``(since, gap id)``, ``since`` the wall time from which events may be missing (its
        last commit, else its start), recorded as a gap in the same transaction when
        ``record_gap`` (so a start that fails early cannot lose it); else None."""
        return await self._db.run(begin_run, self._clock(), record_gap)
