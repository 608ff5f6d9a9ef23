"""A2P SMS event models: one frozen pydantic model per event kind. Pure; no I/O.

A notification's envelope (uuid, event, timestamp, subscriptionId, ownerId, body) is decoded
once, by the event filter path it matched, into:

    BatchEvent     /restapi/v1.0/account/{id}/a2p-sms/batches[...]     kind "batch"
    MessageEvent   /restapi/v1.0/account/{id}/a2p-sms/messages[...]    kind "inbound" | "outbound"
    OptOutEvent    /restapi/v1.0/account/{id}/a2p-sms/opt-outs[...]    kind "optout" | "optin"
    OtherEvent     any other event filter (never dropped)              kind "other"

Decoding is tolerant where RingCentral's docs are loose (PROTOCOL.md §5): unknown fields are
kept, ``to`` may be a string or a list, statuses are open sets, message ids may be numbers.
It is strict where a wrong value would mislead a consumer: phone numbers must be E.164 and the
envelope must carry a uuid. A notification that does not decode is an ``EventError`` value
(dead-lettered by the caller), never an exception.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, NamedTuple

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)
from pydantic_core import PydanticSerializationError

from a2pd.names import KINDS

__all__ = [
    "BATCH_STATUSES",
    "E164",
    "FINAL_BATCH_STATUSES",
    "FINAL_MESSAGE_STATUSES",
    "ISO_TIME_PATTERN",
    "MESSAGE_STATUSES",
    "RECORD_START",
    "BatchBody",
    "BatchEvent",
    "Event",
    "EventError",
    "IsoTime",
    "Lifecycle",
    "LooseId",
    "MessageBody",
    "MessageEvent",
    "OptOutBody",
    "OptOutEvent",
    "OtherEvent",
    "Recipients",
    "cached_model_for",
    "content_key",
    "decode_notification",
    "describe",
    "encode_record",
    "field_values",
    "from_record",
    "from_record_json",
    "is_backfilled",
    "lifecycle",
    "model_for",
    "model_in",
    "pair_time",
    "parse_time",
    "record_json",
    "superseded_keys",
    "to_json",
    "to_record",
]

#: Documented values; anything else is tolerated and passed through (PROTOCOL.md §5.2, §11.8).
MESSAGE_STATUSES: Final = frozenset(
    {"Queued", "Sent", "Delivered", "SendingFailed", "DeliveryFailed"}
)
BATCH_STATUSES: Final = frozenset({"Processing", "Completed", "Sent", "Queued"})
#: States after which an object changes no more. Any other status (documented or not) is
#: taken as still changing: the backfill then asks for it again after a gap.
FINAL_MESSAGE_STATUSES: Final = frozenset(
    {"Delivered", "SendingFailed", "DeliveryFailed", "Received"})
FINAL_BATCH_STATUSES: Final = frozenset({"Completed"})

E164 = Annotated[str, StringConstraints(pattern=r"^\+[1-9][0-9]{1,14}$")]


#: ISO 8601 date and time as RingCentral writes them ("2021-05-26T04:16:43.533Z",
#: "…56.000000Z", "…+00:00"): checked by pydantic-core's regex engine, not by a Python
#: validator (a Python call per field was a third of the decoding time). Days are checked
#: by range, not by month: a "2026-02-30" passes here, and ``parse_time`` gives None for it.
ISO_TIME_PATTERN: Final = (
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9](:([0-5][0-9]|60)([.,][0-9]+)?)?"
    r"(Z|z|[+-]([01][0-9]|2[0-3])(:?[0-5][0-9])?)?$"
)


def parse_time(value: str | None) -> datetime | None:
    """A validated time field as an aware datetime (UTC when the text had no offset); None
    when absent, or when the text has the right shape but names no real time (Feb 30)."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _one(value: str) -> list[str]:
    return [value]


#: message ids are strings in events but int64 in the REST list schema: numbers become text
#: (in pydantic-core; booleans stay errors)
LooseId = Annotated[str, Field(coerce_numbers_to_str=True), StringConstraints(min_length=1)]
#: kept as the text RingCentral sent (records stay byte-faithful: "…56.000000Z" is not
#: rewritten as "…56Z"), but it must be an ISO 8601 date and time
IsoTime = Annotated[str, StringConstraints(pattern=ISO_TIME_PATTERN)]
#: the docs table says string, every sample says list (PROTOCOL.md §5.2): always a list
Recipients = list[E164] | Annotated[E164, AfterValidator(_one)]


class _Model(BaseModel):
    # Fields are read by their wire names only: with populate_by_name a notification lacking
    # "messageStatus" but carrying "message_status" would decode as if it had the former.
    model_config = ConfigDict(frozen=True, extra="allow")


class BatchBody(_Model):
    """A message batch's progress (status Processing → Completed)."""

    id: LooseId
    from_: E164 | None = Field(default=None, alias="from")
    batch_size: int | None = Field(default=None, alias="batchSize")
    processed_count: int | None = Field(default=None, alias="processedCount")
    status: str
    creation_time: IsoTime | None = Field(default=None, alias="creationTime")
    last_modified_time: IsoTime | None = Field(default=None, alias="lastModifiedTime")
    cost: float | None = None
    rejected: list[Any] | None = None


class MessageBody(_Model):
    """One message's state: an outbound delivery status or an inbound message."""

    id: LooseId
    batch_id: LooseId | None = Field(default=None, alias="batchId")
    from_: E164 = Field(alias="from")
    to: Recipients
    text: str | None = None
    direction: Literal["Inbound", "Outbound"]
    message_status: str = Field(alias="messageStatus")
    segment_count: int | None = Field(default=None, alias="segmentCount")
    cost: float | None = None
    creation_time: IsoTime | None = Field(default=None, alias="creationTime")
    last_modified_time: IsoTime | None = Field(default=None, alias="lastModifiedTime")
    error_code: str | None = Field(default=None, alias="errorCode")


class OptOutBody(_Model):
    """``active`` true: ``to`` opted out of messages from ``from``; false: opted back in."""

    from_: E164 = Field(alias="from")
    to: E164
    active: bool


class _Envelope(_Model):
    uuid: LooseId
    event: str
    timestamp: IsoTime | None = None
    subscription_id: str | None = Field(default=None, alias="subscriptionId")
    owner_id: LooseId | None = Field(default=None, alias="ownerId")
    # the record's JSON once encoded (``record_json``): encoded once, then shared by the
    # journal and every sink. A slot, not a pydantic private attribute: those are read
    # through BaseModel.__getattr__, in Python, on every access.
    __slots__ = ("_record",)

    def __eq__(self, other: object) -> bool:
        # an event's value is its fields: whether its record JSON is cached does not count
        if not isinstance(other, _Envelope):
            return NotImplemented
        return (type(self) is type(other) and self.__dict__ == other.__dict__
                and self.__pydantic_extra__ == other.__pydantic_extra__)

    def __hash__(self) -> int:
        return hash(tuple(self.__dict__.values()))

    @property
    def time(self) -> datetime | None:
        """When the notification was sent, as a datetime."""
        return parse_time(self.timestamp)


class BatchEvent(_Envelope):
    """A notification from an ``a2p-sms/batches`` filter."""

    body: BatchBody

    @property
    def kind(self) -> str:
        return "batch"


class MessageEvent(_Envelope):
    """A notification from an ``a2p-sms/messages`` filter."""

    body: MessageBody

    @property
    def kind(self) -> str:
        return "inbound" if self.body.direction == "Inbound" else "outbound"


class OptOutEvent(_Envelope):
    """A notification from an ``a2p-sms/opt-outs`` filter."""

    body: OptOutBody

    @property
    def kind(self) -> str:
        return "optout" if self.body.active else "optin"


class OtherEvent(_Envelope):
    """A notification from any other event filter, kept whole so nothing is dropped."""

    body: Any = None

    @property
    def kind(self) -> str:
        return "other"


Event = BatchEvent | MessageEvent | OptOutEvent | OtherEvent

#: the slot holding an event's encoded record (set once, by ``record_json`` or the journal)
_RECORD: Final[Any] = _Envelope.__dict__["_record"]


@dataclass(frozen=True, slots=True)
class EventError:
    """A notification that does not decode; the caller dead-letters ``raw`` with ``reason``."""

    reason: str
    raw: bytes = field(repr=False)
    uuid: str | None = None


_A2P_PATH = re.compile(
    r"^/restapi/v1\.0/account/[^/?]+/a2p-sms/(batches|messages|opt-outs)(?:[/?]|$)"
)
_MODEL_BY_RESOURCE: Final[dict[str, type[BatchEvent | MessageEvent | OptOutEvent]]] = {
    "batches": BatchEvent,
    "messages": MessageEvent,
    "opt-outs": OptOutEvent,
}


def model_for(event_path: str) -> type[BatchEvent | MessageEvent | OptOutEvent | OtherEvent]:
    """The model for a notification whose ``event`` field is ``event_path``."""
    match = _A2P_PATH.match(event_path)
    return _MODEL_BY_RESOURCE[match.group(1)] if match else OtherEvent


#: event path → its model: a subscription has a handful of filters, so a handful of paths
_MODEL_BY_PATH: dict[str, type[Event]] = {}
_MODELS_KEPT = 256
_EVENT_KEY: Final = b'"event":'
_JSON_SPACE: Final = b" \t\r\n"


def cached_model_for(path: str) -> type[Event]:
    """``model_for``, remembered for the paths seen (the fast paths call it per event)."""
    model = _MODEL_BY_PATH.get(path)
    if model is None:
        if len(_MODEL_BY_PATH) >= _MODELS_KEPT:
            _MODEL_BY_PATH.clear()
        model = _MODEL_BY_PATH[path] = model_for(path)
    return model


def model_in(raw: bytes) -> type[Event] | None:
    """The model for the first ``"event": "<path>"`` in a JSON text (a frame or a record),
    found without parsing it; None if there is none. The fast paths validate with it, then
    check the event they got names the same model (the first "event" key may not have been
    the envelope's)."""
    at = raw.find(_EVENT_KEY)
    if at < 0:
        return None
    start = at + len(_EVENT_KEY)
    while start < len(raw) and raw[start:start + 1] in _JSON_SPACE:
        start += 1
    if raw[start:start + 1] != b'"':
        return None
    return cached_model_for(raw[start + 1:raw.find(b'"', start + 1)].decode("utf-8", "replace"))


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


def describe(exc: ValidationError, limit: int = 3) -> str:
    """A one-line summary of a validation error that never echoes the input value."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False)[:limit]:
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - limit
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


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
        return _RECORD.__get__(event, None)  # type: ignore[no-any-return]
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
    _RECORD.__set__(event, encoded)
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
        _RECORD.__set__(decoded, data)
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
    _RECORD.__set__(event, data)
    return event


# Field accessors used by the router (and by file-sink path templates).


def field_values(event: Event, name: str) -> tuple[str, ...]:
    """The values of a routable field as strings; empty when the event has no such field.

    Names: kind, direction, from, to, batchId, status, active, uuid, subscriptionId, ownerId.
    """
    body = event.body
    if name == "kind":
        return (event.kind,)
    if name == "uuid":
        return (event.uuid,)
    if name == "subscriptionId":
        return (event.subscription_id,) if event.subscription_id else ()
    if name == "ownerId":
        return (event.owner_id,) if event.owner_id else ()
    if isinstance(body, MessageBody):
        values: dict[str, tuple[str, ...]] = {
            "direction": (body.direction,),
            "from": (body.from_,),
            "to": tuple(body.to),
            "batchId": (body.batch_id,) if body.batch_id else (),
            "status": (body.message_status,),
        }
        return values.get(name, ())
    if isinstance(body, BatchBody):
        values = {
            "from": (body.from_,) if body.from_ else (),
            "batchId": (body.id,),
            "status": (body.status,),
        }
        return values.get(name, ())
    if isinstance(body, OptOutBody):
        values = {
            "from": (body.from_,),
            "to": (body.to,),
            "active": ("true" if body.active else "false",),
        }
        return values.get(name, ())
    return ()


# Content keys: what identifies an A2P state change whatever notification (or REST list
# record) carried it. The backfill uses them to drop rebuilt events already delivered.


def content_key(event: Event) -> str | None:
    """``message:<id>:<status>:<lastModifiedTime>``, ``batch:<id>:<status>:<lastModifiedTime>``
    or ``optout:<from>:<to>:<active>`` (opt-out notifications carry no time: the key names the
    pair's state, and an event of the opposite state forgets it, see ``superseded_keys``);
    None for other events."""
    body = event.body
    if isinstance(body, MessageBody):
        return f"message:{body.id}:{body.message_status}:{body.last_modified_time or ''}"
    if isinstance(body, BatchBody):
        return f"batch:{body.id}:{body.status}:{body.last_modified_time or ''}"
    if isinstance(body, OptOutBody):
        return f"optout:{body.from_}:{body.to}:{'true' if body.active else 'false'}"
    return None


def superseded_keys(event: Event) -> tuple[str, ...]:
    """Content keys this event makes stale (an opt-in ends the pair's opt-out state)."""
    body = event.body
    if isinstance(body, OptOutBody):
        return (f"optout:{body.from_}:{body.to}:{'false' if body.active else 'true'}",)
    return ()


class Lifecycle(NamedTuple):
    """Where an A2P object stands after an event: the backfill must reach the later states of
    objects still open when a gap began, which the lists (selecting by creation time) do not
    show in the gap's window. ``batch`` is how to list a message (None: read it by id)."""

    object: str
    batch: str | None
    created: float
    open: bool


def lifecycle(event: Event, received: float) -> Lifecycle | None:
    """The message's or batch's ``Lifecycle`` (None for other events); ``created`` falls back
    to ``received`` (wall time) when the body has no usable creationTime."""
    body = event.body
    if isinstance(body, MessageBody):
        is_open = body.message_status not in FINAL_MESSAGE_STATUSES and \
            body.direction == "Outbound"
        obj, batch = f"message:{body.id}", body.batch_id
    elif isinstance(body, BatchBody):
        is_open = body.status not in FINAL_BATCH_STATUSES
        obj, batch = f"batch:{body.id}", body.id
    else:
        return None
    if not is_open:
        return Lifecycle(obj, batch, received, False)
    created = parse_time(body.creation_time)
    return Lifecycle(obj, batch, created.timestamp() if created else received, True)


def pair_time(event: Event) -> tuple[str, float] | None:
    """An opt-out or opt-in's pair (``from:to``) and when its state was set: the list
    record's ``lastModifiedTime`` for a backfilled one, else the notification's
    ``timestamp``; None for other events or without a time. Opt-out notifications carry no
    state time, so this is what orders a rebuilt state against a received one."""
    body = event.body
    if not isinstance(body, OptOutBody):
        return None
    extra = body.__pydantic_extra__
    stamp = extra.get("lastModifiedTime") if extra else None
    when = parse_time(stamp if isinstance(stamp, str) else event.timestamp)
    return None if when is None else (f"{body.from_}:{body.to}", when.timestamp())


def is_backfilled(event: Event) -> bool:
    """Whether the event was rebuilt from the REST lists (``"backfilled": true``)."""
    extra = event.__pydantic_extra__
    return extra is not None and extra.get("backfilled") is True
