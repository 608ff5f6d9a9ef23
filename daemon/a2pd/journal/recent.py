"""The rows of the latest commits, kept in memory: sink readers that keep up read them from
here instead of from the database (no statement, no worker-thread round trip)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

from a2pd.journal.model import Row

__all__ = ["RECENT_BYTES", "RECENT_ROWS", "RecentRows"]

#: at most this many rows, and at most RECENT_BYTES of records (events can be as large as
#: a frame: by count alone, a stream of large events would keep gigabytes)
RECENT_ROWS = 2048
RECENT_BYTES = 4 * 1024 * 1024


class RecentRows:
    """The newest committed rows, in seq order, within ``RECENT_ROWS`` and ``RECENT_BYTES``."""

    def __init__(self) -> None:
        self._rows: deque[Row] = deque()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[Row]:
        return iter(self._rows)

    def add(self, rows: Iterable[Row]) -> None:
        """Rows a commit wrote (in seq order, after every row kept)."""
        kept = self._rows
        for row in rows:
            kept.append(row)
            self._bytes += len(row.record)
        while kept and (len(kept) > RECENT_ROWS or self._bytes > RECENT_BYTES):
            self._bytes -= len(kept.popleft().record)

    def clear(self) -> None:
        """Forget every row (some may be gone or changed in the database)."""
        self._rows.clear()
        self._bytes = 0

    def read(self, after: int, limit: int) -> list[Row]:
        """Rows ``after + 1, after + 2, …``; empty (ask the database) unless they follow
        each other up to ``limit`` rows or the newest commit: a gap can only be rows
        another process added (a dead-letter replay), which only the database has."""
        recent = self._rows
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
