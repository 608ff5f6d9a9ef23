"""The events the receive side decoded, kept for the sink readers: a reader that keeps up
delivers these rather than decoding its rows again (a fast path with the slow path,
``decode_row``, always at hand)."""

from __future__ import annotations

from collections import deque

from a2pd import events
from a2pd.journal import Row

__all__ = ["DECODED_BYTES", "DECODED_KEPT", "Decoded", "decode_row"]

#: as many events as the journal keeps rows of its latest commits, so a reader that reads
#: those gets their events decoded
DECODED_KEPT = 2048
DECODED_BYTES = 4 * 1024 * 1024


def decode_row(row: Row) -> events.Event | events.EventError:
    """The event a journal row holds (the slow path of ``Decoded``)."""
    decoded = events.from_record_json(row.record)
    if isinstance(decoded, events.EventError):
        return events.EventError(decoded.reason, row.record, row.uuid)
    return decoded


class Decoded:
    """Decoded events by uuid, each with the record it was journaled as. A row's event is
    taken from here only when the row holds that very record (a duplicate's event never
    stands in for another's row), else ``decode_row`` decodes it: the same event either
    way (tests/test_pipeline.py checks that). At most ``DECODED_KEPT`` events and
    ``DECODED_BYTES`` of records, the oldest forgotten first."""

    def __init__(self) -> None:
        self._kept: dict[str, tuple[events.Event, bytes]] = {}
        #: the uuids kept, oldest first (a deque: a dict's oldest key costs a scan over the
        #: slots its removed keys left, once per event)
        self._order: deque[str] = deque()
        self._bytes = 0

    def add(self, event: events.Event, record: bytes) -> None:
        kept = self._kept
        uuid = event.uuid
        if uuid in kept:
            return  # the first is the one journaled: a later one is a duplicate
        kept[uuid] = (event, record)
        self._order.append(uuid)
        self._bytes += len(record)
        while len(kept) > DECODED_KEPT or self._bytes > DECODED_BYTES:
            self._bytes -= len(kept.pop(self._order.popleft())[1])

    def get(self, row: Row) -> events.Event | None:
        found = self._kept.get(row.uuid)
        if found is None:
            return None
        event, record = found
        return event if record is row.record or record == row.record else None
