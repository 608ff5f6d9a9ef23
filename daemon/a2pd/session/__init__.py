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

    state.py       SessionState, the connect URL
    connection.py  one live socket: frames, requests and replies, receive loop, Heartbeats,
                   the subscription request

Only this package imports websockets (connection.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

import anyio
from pydantic import ValidationError

from a2pd import counts, protocol
from a2pd.config import ConnectionConfig
from a2pd.errors import (
    A2pdError,
    ConfigError,
    ConnectionLost,
    FatalPlatformError,
    PlatformError,
    RateLimited,
)
from a2pd.logging import get_logger
from a2pd.session.connection import Connection, open_socket
from a2pd.session.state import (
    MAX_STALE,
    BadFrameHandler,
    NotificationHandler,
    SessionState,
    connect_url,
)

__all__ = [
    "MAX_STALE",
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
    ws = await open_socket(url, cfg)
    conn = Connection(ws, cfg, state, on_notification, on_bad_frame, oauth_session)
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

    ws = await open_socket(url, cfg)
    conn = Connection(ws, cfg, SessionState(), ignore, ignore, None)
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


async def _subscribe_and_delete(conn: Connection, filters: list[str]) -> Probe:
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


async def _handshake(conn: Connection, presented_wsc: bool) -> None:
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
