"""The PostgreSQL sink's parameters for one batch, built without I/O: the events' records
one per line, as the journal keeps them; JSON arrays of rows for the events' other columns
and for the state rows, a key's states in rounds (``postgres_schema`` reads them)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, Final, NamedTuple

from a2pd.events import (
    BatchBody,
    Event,
    MessageBody,
    OptOutBody,
    is_backfilled,
    pair_time,
    parse_time,
    record_json,
)
from a2pd.sinks.postgres_schema import BATCH_RANK, MESSAGE_RANK

__all__ = [
    "BATCH_COLUMNS",
    "EVENT_COLUMNS",
    "MESSAGE_COLUMNS",
    "OPT_OUT_COLUMNS",
    "STATE_TABLES",
    "BatchRows",
    "batch_rows",
]

#: the columns of each JSON row of the statement's parameters (``postgres_schema``)
EVENT_COLUMNS: Final = ("uuid", "kind", "event_time", "backfilled", "subscription_id")
MESSAGE_COLUMNS: Final = ("id", "batch_id", "direction", "from_number", "to_numbers",
                          "status", "status_rank", "error_code", "cost", "segment_count",
                          "text", "creation_time", "last_modified_time", "event_uuid")
BATCH_COLUMNS: Final = ("id", "from_number", "status", "status_rank", "batch_size",
                        "processed_count", "rejected_count", "cost", "creation_time",
                        "last_modified_time", "event_uuid")
OPT_OUT_COLUMNS: Final = ("from_number", "to_number", "opted_out", "changed_at",
                          "event_uuid")
STATE_TABLES: Final = ("messages", "batches", "opt_outs")


def _epoch(text: str | None, absent: float | None = None) -> float | None:
    """A time field as seconds since the epoch (what the statement's ``to_timestamp``
    takes: a float is far cheaper to write than an ISO text); ``absent`` when the field is
    absent, None when it names no real time (a state of unknown time is older than any)."""
    if text is None:
        return absent
    when = parse_time(text)
    return None if when is None else when.timestamp()


def _finite(value: float | None) -> float | None:
    # JSON has no NaN or infinity (the record writes them as null; so does this)
    return value if value is None or math.isfinite(value) else None


def _without_text(record: bytes) -> str:
    """A message's record with its text removed (``store_text = false``)."""
    doc = json.loads(record)
    body = doc.get("body")
    if isinstance(body, dict):
        body.pop("text", None)
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


class BatchRows(NamedTuple):
    """The parameters of the statements that write one batch: ``first`` for the batch's
    statement (``postgres_schema.WRITE_BATCH``), and ``later``: each state table's rows
    for keys that occur again in the batch, one list of rows per further occurrence."""

    first: dict[str, str]
    later: list[tuple[str, str]]


def _rounds(states: dict[Any, list[list[Any]]]) -> list[str]:
    """A key's states in the order the batch holds them, as rounds: round k holds every
    key's k-th state (so no statement touches a row twice, and each state is weighed
    against the one before it, as if the events had come one by one); each round in key
    order (two writers lock rows in the same order)."""
    rounds: list[list[list[Any]]] = []
    for key in sorted(states):
        for k, row in enumerate(states[key]):
            if k == len(rounds):
                rounds.append([])
            rounds[k].append(row)
    return [json.dumps(rows, separators=(",", ":")) for rows in rounds]


def batch_rows(batch: Sequence[Event], *, keep_text: bool = True) -> BatchRows:
    """The parameters that write ``batch``: the events' records as the text the journal
    keeps (never parsed and serialised again, unless the text must go), one per line
    (compact JSON has no raw newline); JSON arrays of rows (``*_COLUMNS``, times as seconds
    since the epoch) for the events' other columns and the state rows; the events in uuid
    order (two writers insert in the same order)."""
    events: list[tuple[str, list[Any], str]] = []
    states: dict[str, dict[Any, list[list[Any]]]] = {table: {} for table in STATE_TABLES}
    for event in batch:
        stamp = _epoch(event.timestamp)
        body = event.body
        record = record_json(event)
        if isinstance(body, MessageBody):
            if not keep_text and body.text is not None:
                text = _without_text(record)
            else:
                text = record.decode()
            rank = MESSAGE_RANK.get(body.message_status, 0)
            states["messages"].setdefault(body.id, []).append([
                body.id, body.batch_id, body.direction, body.from_, ",".join(body.to),
                body.message_status, rank, body.error_code, _finite(body.cost),
                body.segment_count, body.text if keep_text else None,
                _epoch(body.creation_time),
                # a state without its own time is as old as the notification that carried it
                _epoch(body.last_modified_time, stamp), event.uuid])
        else:
            text = record.decode()
            if isinstance(body, BatchBody):
                states["batches"].setdefault(body.id, []).append([
                    body.id, body.from_, body.status, BATCH_RANK.get(body.status, 0),
                    body.batch_size, body.processed_count,
                    None if body.rejected is None else len(body.rejected), _finite(body.cost),
                    _epoch(body.creation_time), _epoch(body.last_modified_time, stamp),
                    event.uuid])
            elif isinstance(body, OptOutBody):
                pair = pair_time(event)
                states["opt_outs"].setdefault((body.from_, body.to), []).append([
                    body.from_, body.to, body.active, pair[1] if pair else None, event.uuid])
        events.append((event.uuid, [event.uuid, event.kind, stamp, is_backfilled(event),
                                    event.subscription_id], text))
    events.sort(key=lambda item: item[0])
    first = {"events": json.dumps([head for _, head, _ in events], separators=(",", ":")),
             "records": "\n".join(text for _, _, text in events)}
    later: list[tuple[str, str]] = []
    for table in STATE_TABLES:
        rounds = _rounds(states[table]) or ["[]"]
        first[table] = rounds[0]
        later.extend((table, rows) for rows in rounds[1:])
    return BatchRows(first, later)
