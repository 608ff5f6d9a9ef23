"""What outlives one WebSocket connection (``SessionState``, owned by the supervisor) and
how a connection is addressed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import quote

from a2pd import protocol
from a2pd.observe import Counters, LogThrottle

__all__ = ["MAX_STALE", "BadFrameHandler", "NotificationHandler", "SessionState",
           "connect_url"]

#: stale subscription ids remembered for deletion (older ones expire on the platform anyway)
MAX_STALE = 100


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
