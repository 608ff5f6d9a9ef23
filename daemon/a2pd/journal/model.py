"""What the journal holds and is configured by: its options, its rows, the appends and dead
letters waiting for a commit, the state its parts share. Plain data; no SQL, no I/O."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "BACKFILLED",
    "LIVE",
    "DeadLetter",
    "Gap",
    "JournalOptions",
    "JournalState",
    "Pending",
    "PendingLetter",
    "Row",
    "repeats_content",
    "targets_field",
]


@dataclass(frozen=True, slots=True)
class JournalOptions:
    """How a journal commits, bounds itself and deduplicates (``[journal]`` in the config;
    the defaults are the config's)."""

    #: commits start at most this often (0: as soon as the previous one is done)
    commit_interval: float = 0.005
    #: commit sooner when this many appends are waiting
    commit_max: int = 1000
    #: fsync at every commit (SQLite synchronous=FULL)
    fsync: bool = False
    #: bound on journaled events (0: none)
    max_events: int = 1_000_000
    #: events older than this are removed even if undelivered (None: never)
    max_age: float | None = 7 * 24 * 3600.0
    #: when max_events is reached: appends wait, or the oldest events are dropped
    full_policy: Literal["block", "drop_oldest"] = "block"
    #: how long a uuid (and a content key) is remembered to drop duplicates
    dedup_window: float = 24 * 3600.0
    #: a dead letter keeps at most this many bytes of what failed
    max_raw_bytes: int = 64 * 1024


@dataclass(slots=True)
class JournalState:
    """What the journal's parts share about the database, kept current by commits and
    compaction (so no one asks the database for it)."""

    #: the newest seq ever given out (compaction may have removed it)
    last_seq: int
    #: events in the journal
    count: int
    #: when the oldest journaled event was received (wall time)
    oldest_received: float | None
    #: whether any backfilled content key is remembered: until then a live event cannot
    #: repeat one, and its lookup is skipped
    backfilled_keys: bool
    #: monotonic time of the last commit (the checkpoint cuts the WAL back when quiet)
    last_commit: float


@dataclass(frozen=True, slots=True)
class Row:
    """One journaled event as a sink reader sees it."""

    seq: int
    uuid: str
    kind: str
    #: the sinks it is routed to, as stored: ``,a,b,`` (``targets_field``)
    targets: str
    record: bytes


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
    """An append waiting for the next group commit."""

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
    #: (object, batch, created, still open) of an A2P message or batch (table inflight)
    track: tuple[str, str | None, float, bool] | None = None
    #: (pair, when its state was set) of an opt-out or opt-in (table pairs)
    pair: tuple[str, float] | None = None

    @property
    def content(self) -> str | None:
        """The content key as stored: live and backfilled keys apart."""
        if self.key is None:
            return None
        return (BACKFILLED if self.backfilled else LIVE) + self.key


@dataclass(frozen=True, slots=True)
class PendingLetter:
    """A dead letter of received input, written with the next group commit."""

    sink: str
    reason: str
    raw: bytes
    size: int
    uuid: str | None
    at: float


@dataclass(frozen=True, slots=True)
class Gap:
    """An unrecovered gap waiting for the backfill: events since ``start`` (wall time)."""

    id: int
    start: float
    opened: float


#: content keys of events received live, and of events the backfill rebuilt
LIVE, BACKFILLED = "key:", "bkey:"


def repeats_content(item: Pending, present: Callable[[str], bool]) -> bool:
    """Whether ``item`` repeats a content key already journaled: a backfilled event whose
    state was received live or backfilled before; a live event the backfill got first."""
    if item.key is None:
        return False
    if item.backfilled:
        return present(LIVE + item.key) or present(BACKFILLED + item.key)
    return present(BACKFILLED + item.key)


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
