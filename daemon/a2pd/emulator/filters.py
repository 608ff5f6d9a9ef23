"""Event filters: parse, validate, expand ``~`` and match A2P events. Pure, no I/O.

Filters follow PROTOCOL.md 5.1-5.3:

- ``/restapi/v1.0/account/~/a2p-sms/batches[?from=E164]``
- ``/restapi/v1.0/account/~/a2p-sms/batches/{batchId}``
- ``/restapi/v1.0/account/~/a2p-sms/messages[?direction=..][&to=..][&from=..][&batchId=..]``
- ``/restapi/v1.0/account/~/a2p-sms/opt-outs[?from=E164]``

Query strings are split by hand: a raw ``+`` in a phone number stays ``+`` (``parse_qs``
would turn it into a space) and ``%2B`` is decoded to ``+``. The ``event`` field of a
notification is the subscribed filter with ``~`` expanded and its query string kept verbatim.
Any other well-formed ``/restapi/v1.0/...`` path is accepted but never matches an A2P event.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote

EventKind = Literal["batch", "message", "optout"]
FilterKind = Literal["batches", "batch", "messages", "optouts", "other"]

E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_A2P = re.compile(r"^/restapi/v1\.0/account/(?P<account>[^/?]+)/a2p-sms/(?P<rest>[^?]*)$")
_GENERIC = re.compile(r"^/restapi/v1\.0(/[A-Za-z0-9~._\-]+)+$")
_BATCH_ID = re.compile(r"^[A-Za-z0-9._\-]+$")

#: the query parameters each A2P filter accepts
_ALLOWED: dict[FilterKind, frozenset[str]] = {
    "batches": frozenset({"from"}),
    "batch": frozenset(),
    "messages": frozenset({"direction", "to", "from", "batchId"}),
    "optouts": frozenset({"from"}),
}


class FilterRejected(Exception):
    """A filter the emulator refuses; ``reason`` goes into ``disabledFilters``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class EventFilter:
    """One accepted filter: as subscribed, as expanded, and what it matches."""

    subscribed: str
    expanded: str
    kind: FilterKind
    params: tuple[tuple[str, str], ...] = ()
    batch_id: str | None = None

    def param(self, name: str) -> str | None:
        """The decoded value of query parameter ``name``, if given."""
        for key, value in self.params:
            if key == name:
                return value
        return None

    def matches(self, kind: EventKind, body: dict[str, Any]) -> bool:
        """Whether an event of ``kind`` with ``body`` is selected by this filter."""
        if kind == "batch":
            if self.kind == "batch":
                return body.get("id") == self.batch_id
            return self.kind == "batches" and self._eq("from", body.get("from"))
        if kind == "optout":
            return self.kind == "optouts" and self._eq("from", body.get("from"))
        if kind != "message" or self.kind != "messages":
            return False
        to = self.param("to")
        if to is not None:
            recipients = body.get("to")
            listed = recipients if isinstance(recipients, list) else [recipients]
            if to not in listed:
                return False
        return (self._eq("direction", body.get("direction"))
                and self._eq("from", body.get("from"))
                and self._eq("batchId", body.get("batchId")))

    def _eq(self, name: str, value: object) -> bool:
        wanted = self.param(name)
        return wanted is None or wanted == value


def split_query(query: str) -> list[tuple[str, str]]:
    """``a=1&b=+2`` as pairs, percent-decoded, with ``+`` kept as ``+`` (not a space)."""
    pairs = []
    for part in query.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        pairs.append((unquote(key), unquote(value)))
    return pairs


def parse_filter(text: object, account_id: str, extension_id: str) -> EventFilter:
    """Validate one filter string; raise :class:`FilterRejected` with the reason if refused."""
    if not isinstance(text, str) or not text:
        raise FilterRejected("Event filter must be a non-empty string")
    path, sep, query = text.partition("?")
    match = _A2P.match(path)
    if match is None:
        if sep or not _GENERIC.match(path):
            raise FilterRejected("Event filter is not supported")
        return EventFilter(text, _expand_generic(path, account_id, extension_id), "other")
    account = match["account"]
    if account not in ("~", account_id):
        raise FilterRejected("Event filter refers to another account")
    kind, batch_id = _a2p_kind(match["rest"])
    params = split_query(query)
    names = [name for name, _ in params]
    if len(names) != len(set(names)):
        raise FilterRejected("Duplicate query parameter in event filter")
    for name, value in params:
        if name not in _ALLOWED[kind]:
            raise FilterRejected(f"Query parameter '{name}' is not supported by this filter")
        _check_value(name, value)
    prefix = f"/restapi/v1.0/account/{account_id}/a2p-sms/{match['rest']}"
    expanded = prefix + (sep + query if sep else "")
    return EventFilter(text, expanded, kind, tuple(params), batch_id)


def _a2p_kind(rest: str) -> tuple[FilterKind, str | None]:
    if rest == "batches":
        return "batches", None
    if rest == "messages":
        return "messages", None
    if rest == "opt-outs":
        return "optouts", None
    head, _, batch_id = rest.partition("/")
    if head == "batches" and _BATCH_ID.match(batch_id):
        return "batch", batch_id
    raise FilterRejected("Event filter is not supported")


def _check_value(name: str, value: str) -> None:
    if name in ("from", "to") and not E164.match(value):
        raise FilterRejected(f"Parameter '{name}' must be an E.164 phone number")
    if name == "direction" and value not in ("Inbound", "Outbound"):
        raise FilterRejected("Parameter 'direction' must be Inbound or Outbound")
    if name == "batchId" and not _BATCH_ID.match(value):
        raise FilterRejected("Parameter 'batchId' is invalid")


def _expand_generic(path: str, account_id: str, extension_id: str) -> str:
    parts = path.split("/")
    for i in range(1, len(parts)):
        if parts[i] == "~" and parts[i - 1] == "account":
            parts[i] = account_id
        elif parts[i] == "~" and parts[i - 1] == "extension":
            parts[i] = extension_id
    return "/".join(parts)


def first_match(filters: tuple[EventFilter, ...], kind: EventKind,
                body: dict[str, Any]) -> EventFilter | None:
    """The first filter (in subscription order) that selects the event, if any."""
    for event_filter in filters:
        if event_filter.matches(kind, body):
            return event_filter
    return None
