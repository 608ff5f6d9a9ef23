"""A notification decoded into its event (or an ``EventError``, never an exception), and
the record every sink writes: ``kind`` plus the notification as RingCentral sent it, one
line of compact UTF-8 JSON, encoded once per event and shared by the journal and every
sink; and a journal row decoded back into its event (a fast path for the records this
module writes)."""

from __future__ import annotations

import json
from typing import Any, Final

from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from a2pd.events.models import (
    RECORD_SLOT,
    Event,
    EventError,
    cached_model_for,
    describe,
    model_for,
    model_in,
)
from a2pd.names import KINDS

__all__ = [
    "RECORD_START",
    "decode_notification",
    "encode_record",
    "from_record",
    "from_record_json",
    "record_json",
    "to_json",
    "to_record",
]


def decode_notification(envelope: Any, raw: bytes) -> Event | EventError:
    """Decode a notification envelope (already parsed JSON). Never raises."""
    if not isinstance(envelope, dict):
        return EventError("notification body is not a JSON object", raw)
    uuid = envelope.get("uuid")
    uuid_str = str(uuid) if isinstance(uuid, str | int) and not isinstance(uuid, bool) else None
    path = envelope.get("event")
    if not isinstance(path, str):
        return EventError("notification has no 'event' string", raw, uuid_str)
    try:
        event = model_for(path).model_validate(envelope)
    except ValidationError as exc:
        return EventError(describe(exc), raw, uuid_str)
    except RecursionError:
        return EventError("notification nested too deeply", raw, uuid_str)
    # What cannot be written as UTF-8 JSON would fail later, in the journal or a sink, and
    # stop the daemon: JSON's "\ud800" escape gives an unpaired surrogate that pydantic keeps,
    # and pydantic's serializer has its own nesting limit.
    try:
        to_json(event).encode("utf-8")
    except UnicodeEncodeError:
        return EventError("a string holds an unpaired UTF-16 surrogate", raw, uuid_str)
    except (ValueError, RecursionError) as exc:
        return EventError(f"cannot be re-encoded as JSON ({type(exc).__name__})", raw, uuid_str)
    return event


def to_record(event: Event) -> dict[str, Any]:
    """The JSON-ready record sinks write: ``kind`` plus the notification as RingCentral sent it
    (field names as on the wire, unknown fields kept except a top-level ``kind``, ``to``
    always a list)."""
    record: dict[str, Any] = {"kind": event.kind}
    for key, value in event.model_dump(mode="json", by_alias=True, exclude_unset=True).items():
        # an envelope field named "kind" must not overwrite ours (it is dropped)
        if key != "kind":
            record[key] = value
    return record


#: characters JSON allows raw inside strings that line splitters other than "\n" treat as
#: line ends (Python's str.splitlines, some log shippers): escaped so a record stays one line
_LINE_BREAKS: Final = (("\u2028", "\\u2028"), ("\u2029", "\\u2029"), ("\x85", "\\u0085"))


_LINE_BREAKS_UTF8: Final = tuple((char.encode(), escape.encode()) for char, escape in _LINE_BREAKS)


def record_json(event: Event) -> bytes:
    """``to_record`` as one compact line of UTF-8 JSON (no newline), encoded once per event:
    the journal stores these bytes and every sink writes them, so nothing is serialised
    twice. Serialised by pydantic-core from the model (the ``kind`` key first)."""
    try:
        return RECORD_SLOT.__get__(event, None)  # type: ignore[no-any-return]
    except AttributeError:
        return encode_record(event)


def encode_record(event: Event) -> bytes:
    """Encode ``event``'s record and keep it on the event (what ``record_json`` returns from
    then on); for a new event, whose record is not there yet to look up."""
    try:
        dumped = type(event).__pydantic_serializer__.to_json(event, by_alias=True,
                                                            exclude_unset=True)
        encoded = _KIND_PREFIX[event.kind] + dumped[1:]
    except (PydanticSerializationError, ValueError):
        # what pydantic-core will not write (a lone surrogate, say): the stdlib's way
        encoded = json.dumps(to_record(event), separators=(",", ":"),
                             ensure_ascii=False).encode("utf-8")
    for char, escape in _LINE_BREAKS_UTF8:
        if char in encoded:
            encoded = encoded.replace(char, escape)
    RECORD_SLOT.__set__(event, encoded)
    return encoded


#: how every record starts, and what it starts with by kind
RECORD_START: Final = b'{"kind":'
_KIND_PREFIX: Final = {kind: RECORD_START + json.dumps(kind).encode() + b"," for kind in KINDS}


def to_json(event: Event) -> str:
    """``record_json`` as text."""
    return record_json(event).decode("utf-8")


def from_record(record: dict[str, Any]) -> Event | EventError:
    """Decode a record written by ``to_record`` (the ``kind`` key is derived, so it is dropped)."""
    envelope = {k: v for k, v in record.items() if k != "kind"}
    raw = json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()
    return decode_notification(envelope, raw)


def from_record_json(data: bytes) -> Event | EventError:
    """Decode a record from its JSON (a journal row); the event keeps ``data`` as its
    ``record_json``, so it is written exactly as it was journaled."""
    fast = _record_fast(data)
    if fast is not None:
        return fast
    try:
        record = json.loads(data)
    except ValueError:
        return EventError("journal row is not JSON", data)
    if not isinstance(record, dict):
        return EventError("journal row is not an object", data)
    record.pop("kind", None)
    decoded = decode_notification(record, data)
    if not isinstance(decoded, EventError):
        RECORD_SLOT.__set__(decoded, data)
    return decoded


_KIND_BYTES: Final = frozenset(kind.encode() for kind in KINDS)


def _record_fast(data: bytes) -> Event | None:
    """A record as ``record_json`` writes it, validated straight from its JSON by the model
    its event path names (a journal row was checked when it was received); None for
    anything else: ``from_record_json`` then takes the general path."""
    if not data.startswith(RECORD_START + b'"'):
        return None
    end = data.find(b'",', len(RECORD_START) + 1)
    if end < 0 or data[len(RECORD_START) + 1:end] not in _KIND_BYTES:
        return None
    envelope = b"{" + data[end + 2:]
    model = model_in(envelope)
    if model is None:
        return None
    try:
        event: Event = model.__pydantic_validator__.validate_json(envelope)
    except (ValidationError, RecursionError):
        return None
    if type(event) is not cached_model_for(event.event):
        return None
    RECORD_SLOT.__set__(event, data)
    return event
