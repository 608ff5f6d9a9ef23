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

    models.py  the models, the statuses, which model an event filter path names
    codec.py   a notification decoded into its event; the record every sink writes
    keys.py    routable field values, content keys, lifecycles, opt-out pair times
"""

from __future__ import annotations

from a2pd.events.codec import (
    RECORD_START,
    decode_notification,
    encode_record,
    from_record,
    from_record_json,
    record_json,
    to_json,
    to_record,
)
from a2pd.events.keys import (
    Lifecycle,
    content_key,
    field_values,
    is_backfilled,
    lifecycle,
    pair_time,
    superseded_keys,
)
from a2pd.events.models import (
    BATCH_STATUSES,
    E164,
    FINAL_BATCH_STATUSES,
    FINAL_MESSAGE_STATUSES,
    ISO_TIME_PATTERN,
    MESSAGE_STATUSES,
    BatchBody,
    BatchEvent,
    Event,
    EventError,
    IsoTime,
    LooseId,
    MessageBody,
    MessageEvent,
    OptOutBody,
    OptOutEvent,
    OtherEvent,
    Recipients,
    cached_model_for,
    describe,
    model_for,
    model_in,
    parse_time,
)

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
