"""The emulated WebSocket Gateway (WSG): sessions, subscriptions, recovery, notifications.

Pure state machine, no I/O: each method takes what arrived and returns the frames to write
as ``(connection_id, Outgoing)`` pairs; ``server.py`` owns the sockets and writes them in
order. Follows PROTOCOL.md sections 2, 4, 6 and 7:

- a *WS session* (what ``wsc`` points at) belongs to one OAuth session and holds at most
  one subscription; a second POST replaces it;
- every notification generated for a session gets the next ``sequence`` and goes into the
  session's recovery buffer (newest ``recovery_buffer_size``), whether or not it is live;
- recovery with ``wsc`` replays buffered notifications newer than the token's ``sequence``;
- a ``wsc`` token is ``base64url(session.sequence)`` + ``.`` + an HMAC of it, opaque to clients;
- a user and app hold at most ``max_subscriptions`` subscriptions (API reference: 403
  ``SUB-505`` "Subscriptions limit exceeded"); the subscription of a session that is gone
  (abandoned past its recovery window) still counts until its ``expirationTime``, 24 h on
  (undocumented: the harshest reading), unless the client deletes it by id (``DELETE
  /restapi/v1.0/subscription/{id}``, over the socket or over HTTP).

This module must never import from the rest of ``a2pd``: it is an independent
implementation of the protocol, there to catch the daemon's bugs.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import hmac
import json
import random
import secrets
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from a2pd.emulator.config import READ_ACCOUNTS, WS_PERMISSION, EmulatorConfig, seconds
from a2pd.emulator.errors import ApiError, EmulatorConfigError
from a2pd.emulator.filters import (
    EventFilter,
    EventKind,
    FilterRejected,
    first_match,
    parse_filter,
)
from a2pd.emulator.oauth import OAuthServer

#: ids the platform makes unique everywhere (not from the seed)
_UNIQUE = random.SystemRandom()

EVENT_KINDS: tuple[EventKind, ...] = ("batch", "message", "optout")
DropMode = Literal["abrupt", "close", "error902", "error903"]
DROP_MODES: tuple[str, ...] = ("abrupt", "close", "error902", "error903")
RECOVERY_FAILURES = ("WSG-1003", "WSG-1005")
SUBSCRIPTION_PATH = "/restapi/v1.0/subscription"
#: close codes the emulator uses (documented in the package docstring)
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_NO_TOKEN = 4400
#: a WS subscription nominally lives 24 h and is renewed by the server while the session lives
SUBSCRIPTION_TTL = 86400
ROUTING_KEY = "EMU01P01"


def iso_millis(wall: float, zone: str = "Z") -> str:
    """``2026-01-10T08:00:00.123Z`` (or with ``+0000``), the notification timestamp format."""
    moment = datetime.fromtimestamp(wall, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}{zone}"


def dumps(value: object) -> str:
    """Compact JSON, the way frames go on the wire."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class Notification:
    """One generated notification and its exact frame text (replays resend the same bytes)."""

    uuid: str
    event: str
    timestamp: str
    subscription_id: str
    body: dict[str, Any]
    sequence: int
    session_id: str
    kind: EventKind
    frame: str


@dataclass(frozen=True)
class Outgoing:
    """Something to write to one socket: a frame (``data``) or a close (``close``)."""

    data: str | bytes | None = None
    notification: Notification | None = None
    replay: bool = False
    close: tuple[int, str] | None = None


Sends = list[tuple[int, Outgoing]]


@dataclass(frozen=True)
class SentRecord:
    """A notification frame that was actually written to a socket."""

    uuid: str
    subscription_id: str
    event: str
    body: dict[str, Any]
    sequence: int
    replay: bool
    connection_id: int
    session_id: str
    timestamp: str


@dataclass(frozen=True)
class GeneratedRecord:
    """A notification as generated (once), whether it was delivered or not."""

    uuid: str
    subscription_id: str
    event: str
    body: dict[str, Any]
    sequence: int
    session_id: str
    kind: str
    timestamp: str
    #: True when a live socket was there to take it at generation time
    live: bool


@dataclass(frozen=True)
class ConnectionInfo:
    """A snapshot of one WebSocket connection, live or past."""

    id: int
    session_id: str | None
    oauth_session_id: str | None
    #: None: no wsc presented; True/False: recoveryState Successful/Failed
    recovered: bool | None
    recovery_error_code: str | None
    subscription_id: str | None
    closed: bool
    close_reason: str | None


@dataclass
class Subscription:
    """The (single) subscription of a WS session."""

    id: str
    filters: tuple[EventFilter, ...]
    disabled: tuple[tuple[str, str], ...]
    created: float

    def info(self, wall: float) -> dict[str, Any]:
        """The SubscriptionInfo body (PROTOCOL 2.5)."""
        info: dict[str, Any] = {
            "uri": f"{SUBSCRIPTION_PATH}/{self.id}",
            "id": self.id,
            "creationTime": iso_millis(self.created),
            "status": "Active",
            "eventFilters": [f.expanded for f in self.filters],
            # renewed by the server while the session lives (PROTOCOL 2.6)
            "expirationTime": iso_millis(wall + SUBSCRIPTION_TTL),
            "expiresIn": SUBSCRIPTION_TTL - 1,
            "deliveryMode": {"transportType": "WebSocket", "encryption": False},
        }
        if self.disabled:
            info["disabledFilters"] = [{"filter": f, "reason": r} for f, r in self.disabled]
        return info


@dataclass
class WsSession:
    """A WS session context: what ``wsc`` refers to and what recovery restores."""

    id: str
    oauth_session_id: str
    created: float
    buffer: deque[Notification]
    subscription: Subscription | None = None
    counter: int = 0
    connection_id: int | None = None
    disconnected_at: float | None = None


@dataclass
class Connection:
    """One accepted, authenticated WebSocket connection."""

    id: int
    ws_token: str
    session_id: str
    oauth_session_id: str
    opened: float
    last_inbound: float
    recovered: bool | None
    recovery_error_code: str | None
    closing: bool = False
    close_reason: str | None = None
    #: the subscription it had when it went away
    last_subscription_id: str | None = None


@dataclass
class Gateway:
    """Every WS session, connection and subscription of one emulator."""

    config: EmulatorConfig
    oauth: OAuthServer
    clock: Callable[[], float]
    wall: Callable[[], float]
    rng: random.Random
    sessions: dict[str, WsSession] = field(default_factory=dict)
    connections: dict[int, Connection] = field(default_factory=dict)
    generated: list[GeneratedRecord] = field(default_factory=list)
    subscriptions_created: int = 0
    #: subscriptions of sessions that are gone: id → (subscription, monotonic expiry)
    orphans: dict[str, tuple[Subscription, float]] = field(default_factory=dict)
    _next_connection: int = 0
    _forced_failure: str | None = None
    _uuids: set[str] = field(default_factory=set)
    _wsc_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    # -- ids -------------------------------------------------------------------------------

    def new_id(self) -> str:
        """A UUID-shaped id, unique across runs like the platform's (not from the seed)."""
        return str(uuid.UUID(int=_UNIQUE.getrandbits(128), version=4))

    def new_connection_id(self) -> int:
        """The id for the next connection (ids start at 1)."""
        self._next_connection += 1
        return self._next_connection

    def _notification_uuid(self) -> str:
        # Unique across runs and processes like the platform's, not drawn from the seed:
        # a daemon that keeps its journal between two emulator runs must not see the second
        # run's notifications as duplicates of the first's.
        while True:
            value = str(_UNIQUE.randrange(10**18, 10**19))
            if value not in self._uuids:
                self._uuids.add(value)
                return value

    # -- wsc tokens --------------------------------------------------------------------

    def wsc_token(self, session_id: str, sequence: int) -> str:
        """An opaque, HMAC-signed session context token."""
        payload = f"{session_id}.{sequence}".encode()
        signature = hmac.new(self._wsc_key, payload, hashlib.sha256).digest()[:18]
        return f"{_b64(payload)}.{_b64(signature)}"

    def decode_wsc(self, token: str) -> tuple[str, int] | None:
        """``(session_id, sequence)`` of a token this gateway issued, or None if forged."""
        payload_text, dot, signature_text = token.partition(".")
        if not dot:
            return None
        try:
            payload = _unb64(payload_text)
            signature = _unb64(signature_text)
        except (binascii.Error, ValueError):
            return None
        expected = hmac.new(self._wsc_key, payload, hashlib.sha256).digest()[:18]
        if not hmac.compare_digest(signature, expected):
            return None
        session_id, _, sequence = payload.decode().rpartition(".")
        return session_id, int(sequence)

    def _wsc(self, session: WsSession, sequence: int) -> dict[str, Any]:
        return {"token": self.wsc_token(session.id, sequence), "sequence": sequence}

    # -- connecting --------------------------------------------------------------------

    def connect(self, connection_id: int, query: dict[str, str]) -> Sends:
        """A socket was accepted: authenticate, maybe recover, and say ConnectionDetails."""
        now = self.clock()
        self._sweep(now)
        token_text = query.get("access_token", "")
        if not token_text:
            return [(connection_id, Outgoing(close=(CLOSE_NO_TOKEN, "Missing access token")))]
        token = self.oauth.check_ws_token(token_text)
        if token is None:
            error = self._error_frame(None, 401, "OAU-128",
                                      "WebSocket access token is invalid or expired")
            return [(connection_id, Outgoing(data=error)),
                    (connection_id, Outgoing(close=(CLOSE_POLICY, "Invalid access token")))]
        sends: Sends = []
        if token.connection_id is not None and token.connection_id in self.connections:
            sends += self._close(token.connection_id, CLOSE_POLICY,
                                 "Another connection uses this access token")
        wsc_text = query.get("wsc")
        recovery: tuple[WsSession | None, str | None, int] | None = None
        if wsc_text is not None:
            decoded = self.decode_wsc(wsc_text)
            if decoded is None:
                error = self._error_frame(None, 400, "WSG-400",
                                          "Malformed WebSocket session context token")
                return [*sends, (connection_id, Outgoing(data=error)),
                        (connection_id, Outgoing(close=(CLOSE_POLICY, "Bad wsc")))]
            recovery = self._recover(decoded, token.oauth_session_id, now)
        token.connection_id = connection_id
        session: WsSession | None = None
        failure: str | None = None
        after = 0
        if recovery is not None:
            session, failure, after = recovery
        if session is None:
            session = WsSession(self.new_id(), token.oauth_session_id, self.wall(),
                                deque(maxlen=self.config.recovery_buffer_size))
            self.sessions[session.id] = session
        elif session.connection_id is not None:
            sends += self._close(session.connection_id, CLOSE_NORMAL,
                                 "Session recovered on another connection")
        session.connection_id = connection_id
        session.disconnected_at = None
        recovered = None if recovery is None else failure is None
        self.connections[connection_id] = Connection(
            connection_id, token.token, session.id, token.oauth_session_id, now, now,
            recovered, failure)
        # after a recovery the token still points where the replay starts: were this socket
        # to drop mid-replay, the next recovery must not skip what was never delivered
        resume_at = after if recovered else session.counter
        sends.append((connection_id, Outgoing(
            data=self._connection_details(session, resume_at, recovered, failure))))
        if recovered:
            for notification in session.buffer:
                if notification.sequence > after:
                    sends.append((connection_id, Outgoing(
                        data=notification.frame, notification=notification, replay=True)))
        return sends

    def _recover(self, decoded: tuple[str, int], oauth_session_id: str, now: float,
                 ) -> tuple[WsSession | None, str | None, int]:
        """``(session to resume or None, failure code or None, replay-after sequence)``."""
        session_id, sequence = decoded
        session = self.sessions.get(session_id)
        forced, self._forced_failure = self._forced_failure, None
        if forced is not None:
            if session is not None and session.connection_id is None:
                self._forget_session(session)  # a forced failure loses the old context
            return None, forced, 0
        if session is None:
            return None, "WSG-1005", 0  # expired and swept (we chose 1005 for "too late")
        if session.oauth_session_id != oauth_session_id:
            return None, "WSG-1003", 0
        if session.subscription is None:
            return None, "WSG-1005", 0
        return session, None, sequence

    def _connection_details(self, session: WsSession, sequence: int, recovered: bool | None,
                            failure: str | None) -> str:
        header = {
            "type": "ConnectionDetails",
            "messageId": self.new_id(),
            "status": 200,
            "wsc": self._wsc(session, sequence),
            "headers": {"RCRequestId": self.new_id()},
        }
        body: dict[str, Any] = {
            "creationTime": iso_millis(session.created, "+0000"),
            "maxConnectionsPerSession": 50,
            "recoveryBufferSize": self.config.recovery_buffer_size,
            "recoveryTimeout": seconds(self.config.recovery_timeout),
            "idleTimeout": seconds(self.config.idle_timeout),
            "absoluteTimeout": seconds(self.config.absolute_timeout),
            "maxActiveRequests": 10,
        }
        if recovered is not None:
            body["recoveryState"] = "Successful" if recovered else "Failed"
            if failure is not None:
                body["recoveryErrorCode"] = failure
        return dumps([header, body])

    def fail_next_recovery(self, code: str = "WSG-1005") -> None:
        """Make the next recovery attempt (with a well-formed wsc) answer Failed ``code``."""
        if code not in RECOVERY_FAILURES:
            raise EmulatorConfigError(f"recovery failure code must be one of "
                                      f"{RECOVERY_FAILURES}, got {code!r}")
        self._forced_failure = code

    # -- disconnecting -------------------------------------------------------------------

    def disconnected(self, connection_id: int, reason: str = "closed by peer") -> None:
        """The socket is gone (or going): the session becomes recoverable, not live."""
        connection = self.connections.get(connection_id)
        if connection is None:
            return
        if not connection.closing:
            connection.closing = True
            connection.close_reason = reason
        session = self.sessions.get(connection.session_id)
        if session is not None and session.connection_id == connection_id:
            connection.last_subscription_id = (session.subscription.id
                                               if session.subscription else None)
            session.connection_id = None
            session.disconnected_at = self.clock()
        token = self.oauth.ws_tokens.get(connection.ws_token)
        if token is not None and token.connection_id == connection_id:
            token.connection_id = None

    def _close(self, connection_id: int, code: int, reason: str,
               error: tuple[str, str] | None = None) -> Sends:
        """Close a live connection from the server side (optionally with an Error frame)."""
        connection = self.connections.get(connection_id)
        if connection is None or connection.closing:
            return []
        sends: Sends = []
        if error is not None:
            sends.append((connection_id, Outgoing(
                data=self._error_frame(None, 400, error[0], error[1]))))
        sends.append((connection_id, Outgoing(close=(code, reason))))
        self.disconnected(connection_id, reason)
        return sends

    def live_connections(self) -> list[int]:
        """Ids of the connections that are open and not being closed."""
        return [c.id for c in self.connections.values() if not c.closing]

    def drop(self, mode: str) -> Sends:
        """Close every live connection: ``close`` (1000) or ``error902``/``error903`` first."""
        if mode not in DROP_MODES:
            raise EmulatorConfigError(f"drop mode must be one of {DROP_MODES}, got {mode!r}")
        sends: Sends = []
        for connection_id in self.live_connections():
            if mode == "error902":
                sends += self._close(connection_id, CLOSE_NORMAL, "Idle timeout expired",
                                     ("WSG-902", "Idle timeout expired"))
            elif mode == "error903":
                sends += self._close(connection_id, CLOSE_NORMAL, "Absolute timeout expired",
                                     ("WSG-903", "Absolute timeout expired"))
            elif mode == "close":
                sends += self._close(connection_id, CLOSE_NORMAL, "Closed by the emulator")
            else:
                self.disconnected(connection_id, "aborted by the emulator")
        return sends

    def deadline(self, connection_id: int) -> tuple[float, str] | None:
        """When the connection times out (monotonic) and with which code, or None."""
        connection = self.connections.get(connection_id)
        if connection is None or connection.closing:
            return None
        idle = connection.last_inbound + self.config.idle_timeout
        absolute = connection.opened + self.config.absolute_timeout
        return (absolute, "WSG-903") if absolute <= idle else (idle, "WSG-902")

    def expire(self, connection_id: int, code: str) -> Sends:
        """The idle (WSG-902) or absolute (WSG-903) timeout fired: Error frame, then close."""
        message = "Idle timeout expired" if code == "WSG-902" else "Absolute timeout expired"
        return self._close(connection_id, CLOSE_NORMAL, message, (code, message))

    def end_oauth_sessions(self, oauth_session_ids: list[str]) -> Sends:
        """OAuth sessions were revoked or evicted: their WS sessions die with them."""
        sends: Sends = []
        for session in list(self.sessions.values()):
            if session.oauth_session_id in oauth_session_ids:
                if session.connection_id is not None:
                    sends += self._close(session.connection_id, CLOSE_POLICY,
                                         "OAuth session ended")
                del self.sessions[session.id]
        return sends

    def _sweep(self, now: float) -> None:
        """Forget sessions that are past their recovery window."""
        for session in list(self.sessions.values()):
            if (session.connection_id is None and session.disconnected_at is not None
                    and now - session.disconnected_at > self.config.recovery_timeout):
                self._forget_session(session)
        for orphan_id, (_, expires) in list(self.orphans.items()):
            if now >= expires:
                del self.orphans[orphan_id]

    def _forget_session(self, session: WsSession) -> None:
        """A session is gone; its subscription lives on, orphaned, until it expires."""
        del self.sessions[session.id]
        if session.subscription is not None:
            self.orphans[session.subscription.id] = (session.subscription,
                                                     self.clock() + SUBSCRIPTION_TTL)

    def subscription_count(self) -> int:
        """Subscriptions counted against the user and app's limit (orphans included)."""
        self._sweep(self.clock())
        return sum(1 for s in self.sessions.values() if s.subscription is not None) + \
            len(self.orphans)

    def list_subscriptions(self) -> dict[str, Any]:
        """``GET /restapi/v1.0/subscription``: every subscription of the user and app."""
        wall = self.wall()
        self._sweep(self.clock())
        records = [s.subscription.info(wall) for s in self.sessions.values()
                   if s.subscription is not None]
        records += [sub.info(wall) for sub, _ in self.orphans.values()]
        return {"records": records}

    def delete_subscription(self, subscription_id: str) -> None:
        """``DELETE /restapi/v1.0/subscription/{id}``, whichever session had it (404 if
        unknown or already gone)."""
        if self.orphans.pop(subscription_id, None) is not None:
            return
        for session in self.sessions.values():
            if session.subscription is not None and session.subscription.id == subscription_id:
                session.subscription = None
                return
        raise ApiError(404, "SUB-507", f"Subscription [{subscription_id}] is not found")

    # -- client frames -------------------------------------------------------------------

    def receive(self, connection_id: int, data: str | bytes) -> Sends:
        """A frame from the client: Heartbeat, ClientRequest, or something to reject."""
        connection = self.connections.get(connection_id)
        if connection is None or connection.closing:
            return []
        connection.last_inbound = self.clock()
        try:
            frame = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            return [(connection_id, Outgoing(data=self._error_frame(
                None, 400, "WSG-808", f"Could not parse the message: {exc}")))]
        if not isinstance(frame, list) or not frame or not isinstance(frame[0], dict):
            return [(connection_id, Outgoing(data=self._error_frame(
                None, 400, "WSG-808", "Expected a JSON array starting with a header object")))]
        header: dict[str, Any] = frame[0]
        message_id = header.get("messageId")
        message_id = message_id if isinstance(message_id, str) else None
        if len(frame) > 1 and frame[1] is None:
            return [(connection_id, Outgoing(data=self._error_frame(
                message_id, 400, "WSG-808",
                "Unexpected 'null' body: expected either '{' or '\"'")))]
        kind = header.get("type")
        if kind == "Heartbeat":
            reply = {"type": "Heartbeat", "messageId": message_id or self.new_id(),
                     "status": 200}
            return [(connection_id, Outgoing(data=dumps([reply])))]
        if kind != "ClientRequest":
            return [(connection_id, Outgoing(data=self._error_frame(
                message_id, 400, "WSG-808", f"Unsupported message type: {kind!r}")))]
        body = frame[1] if len(frame) > 1 else None
        try:
            status, reply_body = self._request(connection, header, body)
        except ApiError as exc:
            status, reply_body = exc.status, exc.body()
        headers: dict[str, Any] = {"RCRequestId": self.new_id(), "RoutingKey": ROUTING_KEY}
        if reply_body is not None:
            headers = {"Content-Type": "application/json", **headers}
        reply_header = {"type": "ClientRequest", "messageId": message_id or self.new_id(),
                        "status": status, "headers": headers}
        parts: list[Any] = [reply_header] if reply_body is None else [reply_header, reply_body]
        return [(connection_id, Outgoing(data=dumps(parts)))]

    def _request(self, connection: Connection, header: dict[str, Any], body: object,
                 ) -> tuple[int, dict[str, Any] | None]:
        method = str(header.get("method", "")).upper()
        path = str(header.get("path", "")).partition("?")[0].rstrip("/")
        session = self.sessions[connection.session_id]
        wall = self.wall()
        if path == SUBSCRIPTION_PATH:
            if method == "POST":
                filters, disabled = self._filters(body)
                _check_delivery_mode(body)
                self._check_permissions(filters)
                if session.subscription is None and \
                        self.subscription_count() >= self.config.max_subscriptions:
                    raise ApiError(403, "SUB-505", "Subscriptions limit exceeded")
                self.subscriptions_created += 1
                session.subscription = Subscription(self.new_id(), filters, disabled, wall)
                return 200, session.subscription.info(wall)
            if method == "GET":
                records = [session.subscription.info(wall)] if session.subscription else []
                return 200, {"records": records}
            raise ApiError(405, "CMN-405", f"Method {method} is not allowed here")
        prefix = SUBSCRIPTION_PATH + "/"
        if not path.startswith(prefix):
            raise ApiError(404, "CMN-102", f"Resource for path [{path}] is not found")
        subscription_id, _, tail = path[len(prefix):].partition("/")
        current = session.subscription
        if method == "DELETE" and not tail:
            self.delete_subscription(subscription_id)
            return 204, None
        if current is None or current.id != subscription_id:
            raise ApiError(404, "SUB-507", f"Subscription [{subscription_id}] is not found")
        if tail == "renew" and method == "POST":
            return 200, current.info(wall)
        if tail:
            raise ApiError(404, "CMN-102", f"Resource for path [{path}] is not found")
        if method == "GET":
            return 200, current.info(wall)
        if method == "PUT":
            filters, disabled = self._filters(body)
            self._check_permissions(filters)
            current.filters, current.disabled = filters, disabled
            return 200, current.info(wall)
        raise ApiError(405, "CMN-405", f"Method {method} is not allowed here")

    def _filters(self, body: object,
                 ) -> tuple[tuple[EventFilter, ...], tuple[tuple[str, str], ...]]:
        raw = body.get("eventFilters") if isinstance(body, dict) else None
        if not isinstance(raw, list) or not raw:
            raise ApiError(400, "CMN-101", "Parameter [eventFilters] value is invalid")
        accepted: list[EventFilter] = []
        disabled: list[tuple[str, str]] = []
        seen: set[str] = set()
        for text in raw:
            try:
                parsed = parse_filter(text, self.config.account_id, self.config.extension_id)
            except FilterRejected as exc:
                disabled.append((str(text), exc.reason))
                continue
            if parsed.expanded not in seen:
                seen.add(parsed.expanded)
                accepted.append(parsed)
        if not accepted:
            listed = ", ".join(str(t) for t in raw)
            raise ApiError(400, "SUB-508", f"Invalid event filters: [{listed}]")
        return tuple(accepted), tuple(disabled)

    def _check_permissions(self, filters: tuple[EventFilter, ...]) -> None:
        """The app permissions a subscription needs: ``WebSocketsSubscription`` when it is
        refused here rather than at the WS token (403 SUB-528, worded after the API
        reference's SUB-528 row and the permission name a third-party client met), and
        ``ReadAccounts`` for the A2P filters (their event-filter pages' "Required
        Permissions"; how the platform refuses a filter's permission is not documented: the
        app-permission answer, 403 InsufficientPermissions, is our reading)."""
        config = self.config
        if config.ws_permission_refused_at == "subscription" and \
                WS_PERMISSION not in config.app_permissions:
            raise ApiError(403, "SUB-528", "[SubscriptionWebSocket] application permission "
                                           "is required for [WebSocket] transport")
        if any(f.kind != "other" for f in filters):
            self.oauth.require(READ_ACCOUNTS)

    def _error_frame(self, message_id: str | None, status: int, code: str, message: str) -> str:
        header = {"type": "Error", "messageId": message_id or self.new_id(), "status": status,
                  "headers": {"RCRequestId": self.new_id()}}
        return dumps([header, {"errorCode": code, "message": message}])

    # -- notifications -------------------------------------------------------------------

    def publish(self, kind: str, body: dict[str, Any]) -> tuple[int, Sends]:
        """Generate one notification per live-or-recoverable matching subscription."""
        if kind not in EVENT_KINDS:
            raise EmulatorConfigError(f"event kind must be one of {EVENT_KINDS}, got {kind!r}")
        if not isinstance(body, dict):
            raise EmulatorConfigError("an event body must be a JSON object")
        event_kind: EventKind = kind
        self._sweep(self.clock())
        sends: Sends = []
        count = 0
        for session in self.sessions.values():
            subscription = session.subscription
            if subscription is None:
                continue
            matched = first_match(subscription.filters, event_kind, body)
            if matched is None:
                continue
            notification = self._notify(session, subscription, matched, event_kind, body)
            count += 1
            live = session.connection_id is not None
            self.generated.append(GeneratedRecord(
                notification.uuid, subscription.id, notification.event,
                notification.body, notification.sequence, session.id, kind,
                notification.timestamp, live))
            if session.connection_id is not None:
                sends.append((session.connection_id, Outgoing(
                    data=notification.frame, notification=notification)))
        return count, sends

    def _notify(self, session: WsSession, subscription: Subscription, matched: EventFilter,
                kind: EventKind, body: dict[str, Any]) -> Notification:
        session.counter += 1
        sequence = session.counter
        notification_uuid = self._notification_uuid()
        timestamp = iso_millis(self.wall())
        header: dict[str, Any] = {
            "type": "ServerNotification",
            "messageId": notification_uuid,
            "status": 200,
            "headers": {"RCRequestId": self.new_id()},
        }
        every = self.config.wsc_on_notifications
        if every and sequence % every == 0:
            header["wsc"] = self._wsc(session, sequence)
        own_body = copy.deepcopy(body)
        envelope = {
            "uuid": notification_uuid,
            "event": matched.expanded,
            "timestamp": timestamp,
            "subscriptionId": subscription.id,
            "ownerId": self.config.extension_id,
            "body": own_body,
        }
        notification = Notification(notification_uuid, matched.expanded, timestamp,
                                    subscription.id, own_body, sequence, session.id, kind,
                                    dumps([header, envelope]))
        session.buffer.append(notification)
        return notification

    def raw_frame(self, data: str | bytes) -> Sends:
        """An arbitrary frame for every live connection (malformed-frame tests)."""
        return [(c, Outgoing(data=data)) for c in self.live_connections()]

    # -- views ---------------------------------------------------------------------------

    def active_subscription(self) -> str | None:
        """The id of a subscription active on a live socket (the newest), if any."""
        for connection_id in reversed(self.live_connections()):
            session = self.sessions.get(self.connections[connection_id].session_id)
            if session is not None and session.subscription is not None:
                return session.subscription.id
        return None

    def connection_infos(self) -> list[ConnectionInfo]:
        """Snapshots of every connection so far."""
        infos = []
        for c in self.connections.values():
            session = self.sessions.get(c.session_id)
            if c.closing:
                subscription_id = c.last_subscription_id
            else:
                subscription_id = (session.subscription.id
                                   if session is not None and session.subscription else None)
            infos.append(ConnectionInfo(c.id, c.session_id, c.oauth_session_id, c.recovered,
                                        c.recovery_error_code, subscription_id, c.closing,
                                        c.close_reason))
        return infos


def _check_delivery_mode(body: object) -> None:
    mode = body.get("deliveryMode") if isinstance(body, dict) else None
    transport = mode.get("transportType") if isinstance(mode, dict) else None
    if transport != "WebSocket":
        raise ApiError(400, "CMN-101", "Parameter [deliveryMode.transportType] value is invalid")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not text or any(ch in text for ch in "=+/"):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
