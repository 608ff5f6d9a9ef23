"""What the router, the file sink's templates and the journal read off an event: routable
field values, content keys (deduplication against the backfill), an A2P object's
lifecycle, an opt-out pair's state time."""

from __future__ import annotations

from typing import NamedTuple

from a2pd.events.models import (
    FINAL_BATCH_STATUSES,
    FINAL_MESSAGE_STATUSES,
    BatchBody,
    Event,
    MessageBody,
    OptOutBody,
    parse_time,
)

__all__ = [
    "Lifecycle",
    "content_key",
    "field_values",
    "is_backfilled",
    "lifecycle",
    "pair_time",
    "superseded_keys",
]


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
