"""One WebSocket connection's life: handshake, subscription, receive loop, keep-alive.

    connect(uri?access_token=…[&wsc=…])
      → ConnectionDetails (or Error)            nothing is sent before it arrives (§2.4)
      → subscribe, unless recovery succeeded     one POST with every filter (§2.5)
      → receive loop until the connection ends   never dies on a bad frame (§9.10)
        + Heartbeat after inbound silence, dead-socket timeout after it (§3)

``run_session`` returns only by raising: ``ConnectionLost`` (reconnect), ``RateLimited``,
``FatalPlatformError`` or ``ConfigError`` (stop). Everything that must outlive the
connection (newest ``wsc``, subscription id, recovery window) lives in ``SessionState``,
owned by the supervisor. ``probe_subscription`` is the same handshake and subscription
request for ``a2pd check``: it deletes what it created and reports the platform's answer.

Only this module imports websockets.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import quote

import anyio
from pydantic import ValidationError
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
    A2pdError,
    ConfigError,
    ConfigProblem,
    ConnectionLost,
    FatalPlatformError,
    PlatformError,
    RateLimited,
    SubscriptionLimit,
)
from a2pd.logging import get_logger, register_secret
from a2pd.observe import Counters, LogThrottle

__all__ = [
    "FATAL_SUBSCRIBE_CODES",
    "MAX_STALE",
    "RECOVERABLE_ERRORS",
    "BadFrameHandler",
    "NotificationHandler",
    "Probe",
    "SessionState",
    "connect_url",
    "most_telling",
    "probe_subscription",
    "run_session",
]

log = get_logger("session")


#: stale subscription ids remembered for deletion (older ones expire on the platform anyway)
MAX_STALE = 100

# Error codes after which the server closes the socket but the session can be recovered
RECOVERABLE_ERRORS = frozenset({"WSG-902", "WSG-903"})
FATAL_SUBSCRIBE_CODES = frozenset({"SUB-528", "CMN-401", "InsufficientPermissions"})


@dataclass
class SessionState:
    """What outlives one connection: the recovery token, the subscription, the window."""

    wsc: protocol.Wsc | None = None
    #: the OAuth session the wsc belongs to (recovery needs the same one, §4.4)
    wsc_oauth_session: str | None = None
    subscription_id: str | None = None
    recovery_timeout: float = 180.0
    #: monotonic time the last connection ended, for the recovery window
    disconnected_at: float | None = None
    connected: bool = False
    subscribed: bool = False
    connection_count: int = 0
    #: frames (read by the receive loop), frames_malformed, frames_oversized (lost: over
    #: max_frame_bytes), notifications, heartbeats_sent, recoveries_successful/failed,
    #: connections, subscriptions
    counters: Counters = field(default_factory=Counters)
    #: a sample of frame_malformed lines (every frame is counted and dead-lettered)
    malformed_log: LogThrottle = field(default_factory=LogThrottle)
    #: a sample of gateway_error lines for errors that do not end the session
    gateway_error_log: LogThrottle = field(default_factory=LogThrottle)

    #: subscriptions of sessions this daemon left behind (not recovered): they count against
    #: the platform's limit until deleted (the supervisor deletes them)
    stale_subscriptions: list[str] = field(default_factory=list)

    def count(self, name: str, n: int = 1) -> None:
        self.counters.inc(name, n)

    def leave_subscription(self) -> None:
        """A fresh session context starts: the old subscription is stale from now on."""
        if self.subscription_id is not None and \
                self.subscription_id not in self.stale_subscriptions:
            self.stale_subscriptions.append(self.subscription_id)
            del self.stale_subscriptions[:-MAX_STALE]
        self.subscription_id = None


NotificationHandler = Callable[[protocol.ServerNotification], Awaitable[None]]
BadFrameHandler = Callable[[protocol.FrameError], Awaitable[None]]


def connect_url(uri: str, ws_access_token: str, wsc: protocol.Wsc | None) -> str:
    """``uri?access_token=…[&wsc=…]`` with both values percent-encoded (harmless, safer)."""
    sep = "&" if "?" in uri else "?"
    url = f"{uri}{sep}access_token={quote(ws_access_token, safe='')}"
    if wsc is not None:
        url += f"&wsc={quote(wsc.token, safe='')}"
    return url


class _Connection:
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


async def run_session(
    url: str,
    *,
    filters: list[str],
    cfg: ConnectionConfig,
    state: SessionState,
    on_notification: NotificationHandler,
    on_bad_frame: BadFrameHandler,
    presented_wsc: bool,
    oauth_session: str | None,
    on_subscribed: Callable[[], None] | None = None,
) -> None:
    """Run one connection until it ends (always by raising); ``on_subscribed`` is called once
    the subscription is active (created, or carried over by a successful recovery)."""
    ws = await _open(url, cfg)
    conn = _Connection(ws, cfg, state, on_notification, on_bad_frame, oauth_session)
    state.connection_count += 1
    state.count(counts.CONNECTIONS)
    try:
        await _handshake(conn, presented_wsc)
        state.connected = True
        async with anyio.create_task_group() as tg:
            tg.start_soon(conn.guard)
            tg.start_soon(conn.receive_loop)
            tg.start_soon(conn.heartbeat_loop)
            if state.subscription_id is None:
                await conn.subscribe(filters)
            else:
                # recovered: the subscription carried over; one line says it is active
                # either way (operators and tests wait for "subscribed")
                log.info("subscribed", subscription_id=state.subscription_id, recovered=True)
            state.subscribed = True
            if on_subscribed is not None:
                on_subscribed()
    except* (FatalPlatformError, ConfigError, PlatformError) as group:
        # one except* clause, one error raised: the session's tasks can fail at once (the
        # subscription refused while the gateway drops the socket), and two clauses
        # raising would hand the caller an ExceptionGroup instead
        raise most_telling(group) from None
    finally:
        if state.connected:
            # the recovery window runs from the loss of a live session, not from each
            # failed attempt after it
            state.disconnected_at = anyio.current_time()
        state.connected = False
        state.subscribed = False
        with anyio.CancelScope(shield=True):
            await ws.close()


def most_telling(group: BaseExceptionGroup[A2pdError]) -> A2pdError:
    """The error that says most about why a session ended, of several its tasks raised at
    once: one that stops the daemon, then a rate limit (it says how long to wait), then
    any other platform error, then the connection's loss (often the others' consequence);
    the first of a kind."""
    found: list[A2pdError] = []

    def leaves(inner: BaseExceptionGroup[A2pdError]) -> None:
        for exc in inner.exceptions:
            if isinstance(exc, BaseExceptionGroup):
                leaves(exc)
            else:
                found.append(exc)

    leaves(group)

    def rank(exc: A2pdError) -> int:
        if isinstance(exc, FatalPlatformError | ConfigError):
            return 0
        if isinstance(exc, RateLimited):
            return 1
        return 3 if isinstance(exc, ConnectionLost) else 2

    return min(found, key=rank)


async def _open(url: str, cfg: ConnectionConfig) -> ClientConnection:
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


@dataclass(frozen=True, slots=True)
class Probe:
    """What ``probe_subscription`` saw."""

    #: the platform's answer to the subscription request (a ClientRequest reply or an Error)
    reply: protocol.ClientResponse | protocol.ErrorFrame
    #: the subscription created (None: refused, or a reply without an id)
    info: protocol.SubscriptionInfo | None
    #: the platform confirmed the deletion of ``info`` over the socket
    deleted: bool


async def probe_subscription(url: str, filters: list[str], cfg: ConnectionConfig) -> Probe:
    """Connect, wait for ConnectionDetails, subscribe with ``filters`` as ``run_session``
    does, delete the subscription it created (over the socket) and close: can this app
    subscribe, leaving nothing behind (``a2pd check``)? Raises ``ConnectionLost`` when the
    socket cannot be opened, the gateway refuses the session or an answer does not come."""

    async def ignore(_message: object) -> None:
        return None

    ws = await _open(url, cfg)
    conn = _Connection(ws, cfg, SessionState(), ignore, ignore, None)
    probe: Probe | None = None
    try:
        await _handshake(conn, presented_wsc=False)
        async with anyio.create_task_group() as tg:
            tg.start_soon(conn.receive_loop)
            probe = await _subscribe_and_delete(conn, filters)
            tg.cancel_scope.cancel()
    except* ConnectionLost as group:
        raise group.exceptions[0] from None
    finally:
        with anyio.CancelScope(shield=True):
            await ws.close()
    if probe is None:
        raise ConnectionLost("the subscription request was not answered")
    return probe


async def _subscribe_and_delete(conn: _Connection, filters: list[str]) -> Probe:
    reply = await conn.request(lambda mid: protocol.encode_subscribe(mid, filters))
    # only these two are ever handed to a waiting request (``dispatch``)
    if not isinstance(reply, protocol.ClientResponse | protocol.ErrorFrame):
        raise ConnectionLost("unexpected answer to the subscription request")
    info = None
    if isinstance(reply, protocol.ClientResponse) and reply.ok:
        try:
            info = protocol.SubscriptionInfo.model_validate(reply.body)
        except ValidationError:
            return Probe(reply, None, deleted=False)
    if info is None:
        return Probe(reply, None, deleted=False)
    path = f"{protocol.SUBSCRIPTION_PATH}/{quote(info.id, safe='')}"
    answer = await conn.request(lambda mid: protocol.encode_request(mid, "DELETE", path))
    return Probe(reply, info, isinstance(answer, protocol.ClientResponse) and answer.ok)


async def _handshake(conn: _Connection, presented_wsc: bool) -> None:
    state = conn.state
    with anyio.move_on_after(conn.cfg.connect_timeout) as scope:
        data = await conn.recv()
    if scope.cancelled_caught:
        raise ConnectionLost("no ConnectionDetails in time")
    first = protocol.decode(data)
    if isinstance(first, protocol.ErrorFrame):
        code = first.error_code
        if code == "WSG-400":
            state.wsc = None  # a malformed session token: never present it again
        raise ConnectionLost(f"gateway refused the connection: {first.message or code}",
                             code=code, recoverable=code != "WSG-400")
    if not isinstance(first, protocol.ConnectionDetails):
        raise ConnectionLost("first frame was not ConnectionDetails", recoverable=False)
    conn.track_wsc(first)
    state.recovery_timeout = first.seconds("recoveryTimeout", state.recovery_timeout)
    recovery = first.recovery_state
    if presented_wsc and recovery == "Successful":
        state.count(counts.RECOVERIES_SUCCESSFUL)
        log.info("session_recovered", subscription_id=state.subscription_id)
        return
    if presented_wsc:
        state.count(counts.RECOVERIES_FAILED)
        log.warning("session_recovery_failed", code=first.recovery_error_code,
                    state=recovery, note="events sent while disconnected may be missing")
    state.leave_subscription()  # a fresh session context has no subscription
