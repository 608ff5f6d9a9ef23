"""A2P list records as notifications: the subscription's A2P filters, which records each
would have notified, and the synthetic notification a record becomes (marked
``"backfilled": true``, uuid ``backfill:<content key>``). Pure: no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import unquote

__all__ = ["CONSENTS_PATH", "LIST_PATH", "Filter", "OpenObjects", "iso", "parse_filters",
           "synthetic", "wall", "window_query"]

_FILTER = re.compile(
    r"^/restapi/v1\.0/account/[^/?]+/a2p-sms/(batches|messages|opt-outs)(?:\?(.*))?$")
LIST_PATH: Final = "/restapi/v1.0/account/~/a2p-sms/"
#: the opt-out states: the v2 consents API (the v1 ``a2p-sms/opt-outs`` list has left
#: RingCentral's API spec, and its records carry no time: docs/protocol-notes.md §9)
CONSENTS_PATH: Final = "/restapi/v2/accounts/~/sms/consents"


@dataclass(frozen=True, slots=True)
class Filter:
    """A subscribed A2P event filter: its resource and its query parameters."""

    text: str
    resource: str
    params: tuple[tuple[str, str], ...]

    def matches(self, body: dict[str, Any]) -> bool:
        """Whether a list record would have been notified through this filter."""
        for name, value in self.params:
            if name == "to":
                to = body.get("to")
                if value not in (to if isinstance(to, list) else [to]):
                    return False
            elif str(body.get(name)) != value:
                return False
        return True


def parse_filters(texts: list[str]) -> list[Filter]:
    """The A2P filters among the subscription's (other filters have no list to rebuild from)."""
    found = []
    for text in texts:
        match = _FILTER.match(text)
        if match is None:
            continue
        params = []
        for part in (match.group(2) or "").split("&"):
            if part:
                name, _, value = part.partition("=")
                # unquote, not unquote_plus: a raw "+" starts an E.164 number (§5.2)
                params.append((unquote(name), unquote(value)))
        found.append(Filter(text, match.group(1), tuple(params)))
    return found


def iso(wall: float) -> str:
    """A wall time as the lists' ISO 8601 (UTC, milliseconds)."""
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def wall(text: Any) -> float | None:
    """An ISO 8601 time of a record as a wall time (UTC when it has no offset)."""
    if not isinstance(text, str):
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def synthetic(resource: str, record: dict[str, Any], event_path: str,
              owner_id: str | None) -> dict[str, Any] | None:
    """The notification envelope equivalent to a list record (None: not enough to name it)."""
    if resource == "opt-outs":
        status = record.get("optStatus") or record.get("status")
        if status not in ("OptOut", "OptIn") and not isinstance(record.get("active"), bool):
            return None
        active = record["active"] if isinstance(record.get("active"), bool) else \
            status == "OptOut"
        body = {**record, "active": active}
        when = record.get("lastModifiedTime") or record.get("creationTime") or ""
        uuid = f"backfill:optout:{record.get('from')}:{record.get('to')}:" \
            f"{'true' if active else 'false'}:{when}"
    elif resource == "messages":
        body = dict(record)
        uuid = f"backfill:message:{record.get('id')}:{record.get('messageStatus')}:" \
            f"{record.get('lastModifiedTime') or ''}"
    else:
        body = dict(record)
        uuid = f"backfill:batch:{record.get('id')}:{record.get('status')}:" \
            f"{record.get('lastModifiedTime') or ''}"
    envelope: dict[str, Any] = {"uuid": uuid, "event": event_path, "backfilled": True,
                                "body": body}
    if owner_id:
        envelope["ownerId"] = owner_id
    return envelope


def window_query(resource: str, start: float, end: float) -> dict[str, Any]:
    """A list's query for the window [start, end] (the consents list has no date filter)."""
    if resource == "opt-outs":
        return {"optStatus": ["OptOut", "OptIn"]}
    params: dict[str, Any] = {"dateFrom": iso(start), "dateTo": iso(end)}
    if resource == "messages":
        params["view"] = "Detailed"
    return params


@dataclass(slots=True)
class OpenObjects:
    """The objects still open that were created before a window, as the backfill reads
    them: each batch by id, a batch's messages by ``batchId`` from the oldest creation
    among them, a message with no batch by id."""

    batches: list[str]
    #: messages with no batch
    singles: list[str]
    #: batch id → the oldest creation time among its open objects
    by_batch: dict[str, float]
    #: the oldest creation time of all (at most the window's start)
    oldest: float

    @classmethod
    def of(cls, rows: list[tuple[str, str | None, float]], start: float) -> OpenObjects:
        """From the journal's open objects (``kind:id``, batch, created)."""
        found = cls([], [], {}, start)
        for obj, batch, created in rows:
            found.oldest = min(found.oldest, created)
            kind, _, ident = obj.partition(":")
            if kind == "batch":
                found.batches.append(ident)
            if batch is None:
                found.singles.append(ident)
            else:
                found.by_batch[batch] = min(created, found.by_batch.get(batch, created))
        return found

    def reads(self, *, batches: bool, messages: bool) -> int:
        """The calls reading them one by one takes (``batches``/``messages``: whether that
        resource is subscribed)."""
        return len(self.batches) * batches + (len(self.by_batch) + len(self.singles)) * messages
