"""The A2P SMS event models: one frozen pydantic model per event kind, and decoding a
notification's envelope into one (or an ``EventError``, never an exception)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

__all__ = [
    "BATCH_STATUSES",
    "E164",
    "FINAL_BATCH_STATUSES",
    "FINAL_MESSAGE_STATUSES",
    "ISO_TIME_PATTERN",
    "MESSAGE_STATUSES",
    "RECORD_SLOT",
    "BatchBody",
    "BatchEvent",
    "Event",
    "EventError",
    "IsoTime",
    "LooseId",
    "MessageBody",
    "MessageEvent",
    "OptOutBody",
    "OptOutEvent",
    "OtherEvent",
    "Recipients",
    "cached_model_for",
    "describe",
    "model_for",
    "model_in",
    "parse_time",
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


_LEAP_SECOND = re.compile(r"(T\d\d:\d\d:)60(?:[.,]\d+)?")


def parse_time(value: str | None) -> datetime | None:
    """A validated time field as an aware datetime (UTC when the text had no offset); None
    when absent, or when the text has the right shape but names no real time (Feb 30).
    Shapes ``ISO_TIME_PATTERN`` accepts and ``datetime.fromisoformat`` does not are read
    too: a lower-case ``z``, and a leap second (``:60``, read as the last microsecond of
    the minute before it)."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        text = value[:-1] + "Z" if value.endswith("z") else value
        text = _LEAP_SECOND.sub(r"\g<1>59.999999", text, count=1)
        if text == value:
            return None
        try:
            parsed = datetime.fromisoformat(text)
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
RECORD_SLOT: Final[Any] = _Envelope.__dict__["_record"]


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
