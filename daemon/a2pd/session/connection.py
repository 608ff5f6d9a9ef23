"""One live socket: frames in and out (read on into memory while a handler is held up,
so the gateway's pings are answered), requests waiting for their reply, the receive loop,
Heartbeats, and the subscription request."""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable

import anyio
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)
from websockets.frames import CloseCode

from a2pd import counts, protocol
from a2pd.config import ConnectionConfig
from a2pd.errors import (
    ConfigError,
    ConfigProblem,
    ConnectionLost,
    FatalPlatformError,
    RateLimited,
    SubscriptionLimit,
)
from a2pd.logging import get_logger, register_secret
from a2pd.session.state import BadFrameHandler, NotificationHandler, SessionState

__all__ = ["FATAL_SUBSCRIBE_CODES", "RECOVERABLE_ERRORS", "Connection", "open_socket"]

log = get_logger("session")

# Error codes after which the server closes the socket but the session can be recovered
RECOVERABLE_ERRORS = frozenset({"WSG-902", "WSG-903"})
FATAL_SUBSCRIBE_CODES = frozenset({"SUB-528", "CMN-401", "InsufficientPermissions"})



async def open_socket(url: str, cfg: ConnectionConfig) -> ClientConnection:
    """Open the socket (the upgrade); every failure is a ``ConnectionLost``."""
    try:
        # No client pings: the gateway ignores them for its idle timer (Heartbeats do that);
        # websockets still answers the server's pings by itself.
        return await connect(url, open_timeout=cfg.connect_timeout, close_timeout=2,
                             max_size=cfg.max_frame_bytes, ping_interval=None,
                             compression=None, user_agent_header="a2pd")
    except InvalidStatus as exc:
        status = exc.response.status_code
        raise ConnectionLost(f"WebSocket upgrade refused (HTTP {status})",
                             code=f"http-{status}", recoverable=status not in (401, 403)) from exc
    except (InvalidHandshake, InvalidURI, OSError, TimeoutError) as exc:
        raise ConnectionLost(f"cannot open the WebSocket: {type(exc).__name__}") from exc


class Connection:
    """The live socket plus the requests waiting for a reply."""

    def __init__(self, ws: ClientConnection, cfg: ConnectionConfig, state: SessionState,
                 on_notification: NotificationHandler, on_bad_frame: BadFrameHandler,
                 oauth_session: str | None) -> None:
        self.ws = ws
        self.cfg = cfg
        self.state = state
        self.on_notification = on_notification
        self.on_bad_frame = on_bad_frame
        self.oauth_session = oauth_session
        self.last_inbound = anyio.current_time()
        self.last_outbound = self.last_inbound
        self._inbound_waiter: anyio.Event | None = None
        #: the receive loop is inside a handler (e.g. waiting for room in the journal)
        self.handling = False
        #: when the current handler began (monotonic)
        self._handling_since = 0.0
        #: frames the guard read off the socket, not handled yet (a ConnectionLost last: how
        #: the connection ended)
        self._inbox: deque[bytes | ConnectionLost] = deque()
        self._inbox_bytes = 0
        #: the guard is inside recv(): the receive loop must not call it too
        self._guarding = False
        self._guarded = anyio.Event()
        self._handled: anyio.Event | None = None
        self.pending: dict[str, tuple[anyio.Event, list[protocol.Message]]] = {}
        self.send_lock = anyio.Lock()

    async def send(self, text: str) -> None:
        async with self.send_lock:
            try:
                await self.ws.send(text)
            except ConnectionClosed as exc:
                raise _lost(exc) from exc
            self.last_outbound = anyio.current_time()

    async def recv(self) -> bytes:
        try:
            # bytes as received, text frames too: decode() parses the UTF-8 itself (a text
            # frame that is not UTF-8 is then one dead-lettered frame, not a closed session)
            data = await self.ws.recv(decode=False)
        except ConnectionClosed as exc:
            if _oversized(exc):
                # websockets refused a frame over max_size and closed with 1009. The frame
                # (most likely a notification) is gone; a recovery would have the gateway
                # replay it and fail again, so the next connection starts a fresh session.
                self.state.count(counts.FRAMES_OVERSIZED)
                log.error("frame_oversized", max_frame_bytes=self.cfg.max_frame_bytes,
                          note="the frame is lost; reconnecting without recovery")
                raise ConnectionLost(
                    f"a frame exceeded connection.max_frame_bytes ({self.cfg.max_frame_bytes})",
                    code="close-1009", recoverable=False) from exc
            raise _lost(exc) from exc
        # per frame: time.monotonic() is what anyio.current_time() returns on asyncio
        # (loop.time()), without anyio's backend lookup
        self.last_inbound = time.monotonic()
        if self._inbound_waiter is not None:
            self._inbound_waiter.set()
            self._inbound_waiter = None
        return data

    async def guard(self) -> None:
        """Read the socket while a handler is stalled. websockets reads the socket (and so
        answers the gateway's pings) only while its 16-frame queue has room, and the gateway
        drops a client that does not answer a ping within 10 s (§2.8): a journal stalled
        for longer would cost the session. Once a handler has waited ``stall_read_after``, the
        frames that arrive are kept here (up to ``receive_buffer_bytes``) and handed out
        first; the receive loop never calls recv() while this does. The end of the
        connection is queued after the frames. Off the fast path: it only looks twice per
        ``stall_read_after``."""
        while True:
            if not (self._stalled() and self._inbox_bytes < self.cfg.receive_buffer_bytes):
                await anyio.sleep(self.cfg.stall_read_after / 2)
                continue
            self._guarding = True
            try:
                data = await self.recv()
            except ConnectionLost as exc:
                self._inbox.append(exc)
                return
            finally:
                self._guarding = False
                self._guarded.set()
            self._inbox.append(data)
            self._inbox_bytes += len(data)

    def _stalled(self) -> bool:
        return self.handling and \
            time.monotonic() - self._handling_since >= self.cfg.stall_read_after

    async def next_frame(self) -> bytes:
        """The next frame: the guard's first (raising how the connection ended once they
        are handed out), else the socket's (through the guard while it is reading)."""
        while not self._inbox:
            if not self._guarding:
                return await self.recv()
            # the guard is inside recv(): its frame (or the end) comes next
            self._guarded = anyio.Event()
            await self._guarded.wait()
        item = self._inbox.popleft()
        if isinstance(item, ConnectionLost):
            raise item
        self._inbox_bytes -= len(item)
        return item

    def track_wsc(self, message: protocol.Message) -> None:
        newer = protocol.newer_wsc(self.state.wsc, message)
        if newer is not None:
            register_secret(newer.token, kind="wsc")
            self.state.wsc = newer
            self.state.wsc_oauth_session = self.oauth_session

    async def request(self, frame_for: Callable[[str], str]) -> protocol.Message:
        """Send a ClientRequest and wait for the reply with the same messageId."""
        message_id = str(uuid.uuid4())
        done = anyio.Event()
        slot: list[protocol.Message] = []
        self.pending[message_id] = (done, slot)
        try:
            await self.send(frame_for(message_id))
            with anyio.fail_after(self.cfg.request_timeout):
                await done.wait()
        except TimeoutError:
            raise ConnectionLost("no reply to our request in time", recoverable=True) from None
        finally:
            self.pending.pop(message_id, None)
        return slot[0]

    async def receive_loop(self) -> None:
        while True:
            data = await self.next_frame()
            self.state.count(counts.FRAMES)
            message = protocol.decode(data)
            self.handling = True
            self._handling_since = time.monotonic()
            try:
                if isinstance(message, protocol.FrameError):
                    self.state.count(counts.FRAMES_MALFORMED)
                    held = self.state.malformed_log.allow()
                    if held is not None:
                        log.warning("frame_malformed", reason=message.reason,
                                    size=len(message.raw), suppressed=held)
                    await self.on_bad_frame(message)
                    continue
                await self.dispatch(message)
                # Only now: a wsc names where a recovery resumes, so it must not get ahead
                # of a notification that has not reached the journal yet.
                self.track_wsc(message)
            finally:
                self.handling = False
                if self._handled is not None:
                    self._handled.set()
                    self._handled = None

    async def dispatch(self, message: protocol.Message) -> None:
        if isinstance(message, protocol.ServerNotification):
            self.state.count(counts.NOTIFICATIONS)
            await self.on_notification(message)
            return
        message_id = message.header.message_id
        if message_id is not None and message_id in self.pending and isinstance(
            message, protocol.ClientResponse | protocol.ErrorFrame
        ):
            done, slot = self.pending[message_id]
            slot.append(message)
            done.set()
            return
        if isinstance(message, protocol.Heartbeat):
            return
        if isinstance(message, protocol.ErrorFrame):
            code = message.error_code
            ends_session = code in RECOVERABLE_ERRORS or code == "WSG-400"
            held = None if ends_session else self.state.gateway_error_log.allow()
            if ends_session or held is not None:
                log.warning("gateway_error", code=code, message=message.message,
                            suppressed=held or 0)
            if code in RECOVERABLE_ERRORS:
                raise ConnectionLost("gateway closed the session", code=code, recoverable=True)
            if code == "WSG-400":
                raise ConnectionLost("gateway refused our session token", code=code,
                                     recoverable=False)
            return
        if isinstance(message, protocol.ConnectionDetails):
            log.info("connection_details_again")
            return
        log.debug("frame_ignored", type=message.header.type)

    async def heartbeat_loop(self) -> None:
        """Send a Heartbeat after ``heartbeat_interval`` without any inbound frame (is the
        socket alive?) or ``keepalive_interval`` without sending anything (the gateway's
        idle timer may count only client activity; the official SDKs send one every 10
        minutes). The socket is dead when no frame arrives within ``heartbeat_timeout``."""
        cfg = self.cfg
        while True:
            now = anyio.current_time()
            due = min(self.last_inbound + cfg.heartbeat_interval,
                      self.last_outbound + cfg.keepalive_interval)
            if now < due:
                await anyio.sleep(due - now)
                continue
            sent_at = anyio.current_time()
            await self.send(protocol.encode_heartbeat(str(uuid.uuid4())))
            self.state.count(counts.HEARTBEATS_SENT)
            with anyio.move_on_after(cfg.heartbeat_timeout):
                while self.last_inbound < sent_at:
                    self._inbound_waiter = self._inbound_waiter or anyio.Event()
                    await self._inbound_waiter.wait()
            if self.last_inbound >= sent_at:
                continue
            if self.handling:
                # Silence because we are not reading (backpressure from the journal), not
                # because the socket died: wait for the handler, then check afresh.
                self.state.count(counts.HEARTBEATS_DEFERRED)
                log.debug("heartbeat_deferred", reason="a handler is waiting (backpressure)")
                self._handled = self._handled or anyio.Event()
                await self._handled.wait()
                continue
            raise ConnectionLost(f"no frame for {cfg.heartbeat_timeout:g}s after a Heartbeat",
                                 recoverable=True)

    async def subscribe(self, filters: list[str]) -> None:
        reply = await self.request(lambda mid: protocol.encode_subscribe(mid, filters))
        if isinstance(reply, protocol.ErrorFrame) or (
            isinstance(reply, protocol.ClientResponse) and not reply.ok
        ):
            _raise_subscribe_failure(reply)
        assert isinstance(reply, protocol.ClientResponse)
        try:
            info = protocol.SubscriptionInfo.model_validate(reply.body)
        except Exception as exc:
            raise ConnectionLost("subscription reply has no subscription id") from exc
        if info.disabled_filters:
            for item in info.disabled_filters:
                log.warning("filter_disabled", detail=item)
            if len(info.disabled_filters) >= len(filters):
                raise ConfigError([ConfigProblem(
                    "subscription.event_filters",
                    f"the platform disabled every filter: {info.disabled_filters}")])
        if info.status and info.status != "Active":
            log.warning("subscription_not_active", status=info.status)
        self.state.subscription_id = info.id
        self.state.count(counts.SUBSCRIPTIONS)
        log.info("subscribed", subscription_id=info.id, filters=len(info.event_filters))


def _raise_subscribe_failure(reply: protocol.Message) -> None:
    status = reply.header.status
    code = reply.error_code if isinstance(reply, protocol.ClientResponse | protocol.ErrorFrame) \
        else None
    if status == 429:
        raise RateLimited("subscription request rate limited", retry_after=30.0, code=code)
    if code == "SUB-505":
        raise SubscriptionLimit("the platform's subscription limit for this user and app is "
                                "reached", status=status, code=code)
    if code in FATAL_SUBSCRIBE_CODES or status == 403:
        raise FatalPlatformError("subscribing was refused: missing permission or limit reached",
                                 status=status, code=code)
    if code == "SUB-508" or status == 400:
        raise ConfigError([ConfigProblem("subscription.event_filters",
                                         f"the platform rejected the filters ({code})")])
    raise ConnectionLost("subscription request failed", code=code, recoverable=False)


def _oversized(exc: ConnectionClosed) -> bool:
    """Whether we closed the connection because a frame was over ``max_size``."""
    return exc.sent is not None and exc.sent.code == CloseCode.MESSAGE_TOO_BIG and \
        exc.rcvd_then_sent is not True


def _lost(exc: ConnectionClosed) -> ConnectionLost:
    close = exc.rcvd
    if close is None:
        return ConnectionLost("connection dropped without a close frame", recoverable=True)
    return ConnectionLost(f"connection closed by server (code {close.code})",
                          code=f"close-{close.code}", recoverable=True)
