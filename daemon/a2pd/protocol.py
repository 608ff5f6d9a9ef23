"""The RingCentral WebSocket Gateway framing, as pure functions: text frames ⇄ typed messages.

Every frame is a JSON array ``[header]`` or ``[header, body]`` (PROTOCOL.md §2). ``decode``
never raises: a frame it cannot make sense of comes back as a ``FrameError`` value carrying the
raw bytes, so one bad frame can never end a receive loop (PROTOCOL.md §9 item 10).

This module must never do I/O or import an I/O library.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from a2pd.events import (
    BatchEvent,
    Event,
    EventError,
    MessageEvent,
    OptOutEvent,
    OtherEvent,
    cached_model_for,
    decode_notification,
    describe,
    model_in,
)
from a2pd.vocab import error_code

__all__ = [
    "CLIENT_REQUEST",
    "CONNECTION_DETAILS",
    "ERROR",
    "HEARTBEAT",
    "MAX_DEPTH",
    "SERVER_NOTIFICATION",
    "SUBSCRIPTION_PATH",
    "ClientResponse",
    "ConnectionDetails",
    "ErrorFrame",
    "FrameError",
    "Header",
    "Heartbeat",
    "Message",
    "ServerNotification",
    "SubscriptionInfo",
    "UnknownFrame",
    "Wsc",
    "decode",
    "encode_heartbeat",
    "encode_request",
    "encode_subscribe",
    "newer_wsc",
]

SUBSCRIPTION_PATH: Final = "/restapi/v1.0/subscription"

#: Header ``type`` values the gateway uses (there is no "ClientResponse": replies reuse
#: "ClientRequest" with the request's messageId and a status).
CLIENT_REQUEST: Final = "ClientRequest"
SERVER_NOTIFICATION: Final = "ServerNotification"
CONNECTION_DETAILS: Final = "ConnectionDetails"
HEARTBEAT: Final = "Heartbeat"
ERROR: Final = "Error"

#: the deepest nesting a frame may have (the frame array is level 1; a real notification
#: is 4 deep). Deeper frames are FrameErrors, so the limit does not depend on the stack
#: depth Python's json module and pydantic's serializer happen to allow (docs/reliability.md).
MAX_DEPTH: Final = 64


class Wsc(BaseModel):
    """The session-context token used to recover a dropped session."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    token: str = Field(min_length=1)
    sequence: int


class Header(BaseModel):
    """Element 0 of every frame. Unknown fields are kept, never an error."""

    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)

    type: str
    message_id: str | None = Field(default=None, alias="messageId")
    status: int | None = None
    method: str | None = None
    path: str | None = None
    headers: dict[str, Any] | None = None
    wsc: Wsc | None = None


class SubscriptionInfo(BaseModel):
    """The body of a successful subscription POST/PUT reply (fields we use; the rest is kept)."""

    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)

    id: str = Field(min_length=1)
    status: str | None = None
    event_filters: list[str] = Field(default_factory=list, alias="eventFilters")
    disabled_filters: list[Any] = Field(default_factory=list, alias="disabledFilters")
    expires_in: int | None = Field(default=None, alias="expiresIn")


@dataclass(frozen=True, slots=True)
class ConnectionDetails:
    """The first frame of every connection; says whether a recovery worked."""

    header: Header
    body: dict[str, Any]

    @property
    def recovery_state(self) -> str | None:
        value = self.body.get("recoveryState")
        return value if isinstance(value, str) else None

    @property
    def recovery_error_code(self) -> str | None:
        value = self.body.get("recoveryErrorCode")
        return value if isinstance(value, str) else None

    def seconds(self, key: str, default: float) -> float:
        """A numeric timing field of the body (recoveryTimeout, idleTimeout, …) or ``default``."""
        value = self.body.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return float(value)
        return default


@dataclass(frozen=True, slots=True)
class ClientResponse:
    """The server's answer to one of our ClientRequests, matched by ``message_id``."""

    header: Header
    body: Any

    @property
    def message_id(self) -> str | None:
        return self.header.message_id

    @property
    def ok(self) -> bool:
        return self.header.status is not None and 200 <= self.header.status < 300

    @property
    def error_code(self) -> str | None:
        return error_code(self.body)


@dataclass(frozen=True, slots=True)
class ServerNotification:
    """A notification frame: its header, the frame as it arrived (``raw``), the envelope
    (``body``: uuid, event, body, …) and its event (``decoded()``). A well-formed frame was
    decoded into its event in one pass (the fast path, ``_notification``); any other is
    decoded by ``events.decode_notification`` when asked: the same event either way
    (tests/test_protocol.py checks that)."""

    header: Header
    raw: bytes
    #: the envelope, when the general path parsed it
    _body: Any = None
    #: the event, when the fast path decoded it
    _event: Event | None = None

    @property
    def body(self) -> Any:
        """The envelope as parsed JSON (parsed on demand after the fast path)."""
        return self._body if self._body is not None else json.loads(self.raw)[1]

    def decoded(self) -> Event | EventError:
        """The notification's event, or why it does not decode (for the dead letters)."""
        if self._event is not None:
            return self._event
        return decode_notification(self.body, self.raw)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A Heartbeat frame (the reply to ours, or one the server sends)."""

    header: Header


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    """A gateway ``Error`` frame, e.g. WSG-902 idle timeout before a close."""

    header: Header
    body: Any

    @property
    def error_code(self) -> str | None:
        return error_code(self.body)

    @property
    def message(self) -> str | None:
        if isinstance(self.body, dict):
            value = self.body.get("message")
            return value if isinstance(value, str) else None
        return None


@dataclass(frozen=True, slots=True)
class UnknownFrame:
    """A well-formed frame of a type we do not know; logged and ignored."""

    header: Header
    body: Any


@dataclass(frozen=True, slots=True)
class FrameError:
    """A frame that does not decode. A value, not an exception; ``raw`` goes to the dead letter."""

    reason: str
    raw: bytes = field(repr=False)


Message = (
    ConnectionDetails | ClientResponse | ServerNotification | Heartbeat | ErrorFrame | UnknownFrame
)


def decode(data: str | bytes) -> Message | FrameError:
    """Decode one WebSocket message. Never raises."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    # only a frame that cannot nest deeper than the limit takes the fast path (the general
    # path checks the depth precisely)
    fast = _notification(raw) if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH else None
    if fast is not None:
        return fast
    if isinstance(data, bytes | bytearray | memoryview):
        # strictly UTF-8 (RFC 8259 §8.1): json.loads would also take UTF-16/32 and, through
        # "surrogatepass", encoded surrogates
        try:
            data = raw.decode("utf-8")
        except UnicodeDecodeError:
            return FrameError("binary frame is not UTF-8 text", raw)
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError) as exc:
        # Also the multipart REST-over-WS bodies (`[{...},--Boundary`): not for a notification
        # client, so they are reported like any other undecodable frame.
        return FrameError(f"not JSON: {type(exc).__name__}", raw)
    if not isinstance(parsed, list) or not 1 <= len(parsed) <= 2:
        return FrameError("not a JSON array of one or two elements", raw)
    # only a frame with more brackets than the limit can be too deep: the walk is rare
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _too_deep(parsed, MAX_DEPTH):
        return FrameError(f"nested deeper than {MAX_DEPTH} levels", raw)
    if not isinstance(parsed[0], dict):
        return FrameError("header is not a JSON object", raw)
    try:
        header = Header.model_validate(parsed[0])
    except ValidationError as exc:
        return FrameError(f"bad header: {describe(exc, limit=1)}", raw)
    body = parsed[1] if len(parsed) == 2 else None

    kind = header.type
    if kind == SERVER_NOTIFICATION:
        if not isinstance(body, dict):
            return FrameError("ServerNotification without an object body", raw)
        return ServerNotification(header, raw, _body=body)
    if kind == CLIENT_REQUEST:
        return ClientResponse(header, body)
    if kind == CONNECTION_DETAILS:
        return ConnectionDetails(header, body if isinstance(body, dict) else {})
    if kind == HEARTBEAT:
        return Heartbeat(header)
    if kind == ERROR:
        return ErrorFrame(header, body)
    return UnknownFrame(header, body)


def _too_deep(value: Any, limit: int) -> bool:
    """Whether ``value`` (parsed JSON) nests deeper than ``limit`` (without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, dict | list))
    return False


#: per event model: the whole notification frame validated from its JSON in one pass (the
#: adapters' pydantic-core validators, called directly)
_FRAME_VALIDATORS: dict[type[Any], Any] = {
    BatchEvent: TypeAdapter(tuple[Header, BatchEvent]).validator,
    MessageEvent: TypeAdapter(tuple[Header, MessageEvent]).validator,
    OptOutEvent: TypeAdapter(tuple[Header, OptOutEvent]).validator,
    OtherEvent: TypeAdapter(tuple[Header, OtherEvent]).validator,
}


def _notification(raw: bytes) -> ServerNotification | None:
    """The fast path for the frame that matters, a well-formed notification: header and
    envelope validated straight from the JSON (pydantic-core, one pass, no intermediate
    dicts) into the event model its ``event`` path names. None for anything else, and
    for anything that does not validate: ``decode`` then takes the general path, which
    says precisely what is wrong."""
    model = model_in(raw)
    if model is None:
        return None
    try:
        header, event = _FRAME_VALIDATORS[model].validate_json(raw)
    except (ValidationError, RecursionError):
        return None
    # the "event" key found first must have been the envelope's (not one in the header)
    if header.type != SERVER_NOTIFICATION or type(event) is not cached_model_for(event.event):
        return None
    return ServerNotification(header, raw, _event=event)


def _dumps(frame: list[Any]) -> str:
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


def encode_request(
    message_id: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    query: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> str:
    """A ClientRequest frame. With no body the frame has one element: the gateway rejects a
    ``null`` body with WSG-808 (PROTOCOL.md §2.1)."""
    header: dict[str, Any] = {
        "type": CLIENT_REQUEST,
        "messageId": message_id,
        "method": method,
        "path": path,
    }
    if query:
        header["query"] = query
    if headers:
        header["headers"] = headers
    return _dumps([header] if body is None else [header, body])


def encode_subscribe(message_id: str, event_filters: list[str]) -> str:
    """POST one subscription with every filter (one subscription per connection, §2.6)."""
    body = {"eventFilters": event_filters, "deliveryMode": {"transportType": "WebSocket"}}
    return encode_request(message_id, "POST", SUBSCRIPTION_PATH, body)


def encode_heartbeat(message_id: str) -> str:
    """An application-level Heartbeat; ping frames do not reset the idle timer (§3)."""
    return _dumps([{"type": HEARTBEAT, "messageId": message_id}])


def newer_wsc(current: Wsc | None, frame: Message) -> Wsc | None:
    """The ``wsc`` to keep after ``frame`` (PROTOCOL.md §4.3; docs/protocol-notes.md).

    Any ConnectionDetails wins: it starts (or resumes) a session context, so its token is
    the one that names it, even when an older session's token had a higher sequence. The
    TypeScript extension keeps the old token there unless ``recoveryState`` is present,
    which can leave it holding the previous session's token after a fresh connect. Any
    other frame's ``wsc`` replaces ours only when its sequence is higher. Returns ``None``
    when nothing changes.
    """
    incoming = frame.header.wsc
    if incoming is None:
        return None
    if current is None or isinstance(frame, ConnectionDetails):
        return incoming
    return incoming if incoming.sequence > current.sequence else None
