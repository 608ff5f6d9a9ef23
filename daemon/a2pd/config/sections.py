"""The config file's tables as validated models: each section of the document, with its
defaults and what each key means. ``Document`` is the whole file minus the sinks' own
options (each sink type validates its table itself)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator

from a2pd.router import ROUTABLE_FIELDS
from a2pd.vocab import Duration, DurationOrOff, LocalPath, StrictModel

__all__ = [
    "DEFAULT_EVENT_FILTERS",
    "BackfillConfig",
    "ConnectionConfig",
    "DefaultRouteConfig",
    "DeliveryConfig",
    "Document",
    "JournalConfig",
    "LogConfig",
    "OpsConfig",
    "PlatformConfig",
    "RouteConfig",
    "StateConfig",
    "SubscriptionConfig",
    "parse_listen",
]

DEFAULT_EVENT_FILTERS = (
    "/restapi/v1.0/account/~/a2p-sms/batches",
    "/restapi/v1.0/account/~/a2p-sms/messages?direction=Inbound",
    "/restapi/v1.0/account/~/a2p-sms/messages?direction=Outbound",
    "/restapi/v1.0/account/~/a2p-sms/opt-outs",
)

class PlatformConfig(StrictModel):
    """Where the RingCentral platform is and who we are to it."""

    server: str = "https://platform.ringcentral.com"
    client_id: str = Field(min_length=1)
    client_secret: SecretStr | None = None
    client_secret_file: LocalPath | None = None
    jwt: SecretStr | None = None
    jwt_file: LocalPath | None = None
    http_timeout: Duration = 30.0
    #: refresh the access token once this fraction of its lifetime has passed
    refresh_at: float = Field(default=0.5, gt=0.0, lt=1.0)
    #: revoke the OAuth session on a clean stop (off: a restart can then recover the session)
    revoke_on_stop: bool = False

    @field_validator("server")
    @classmethod
    def _server_url(cls, value: str) -> str:
        # the reasons never quote the value: it may hold credentials (user:password@)
        if not value.isprintable() or any(ch.isspace() for ch in value):
            raise ValueError("must be a URL without spaces or control characters")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL")
        try:
            parts.port  # noqa: B018 - parsing the port is the check
        except ValueError:
            raise ValueError("has an invalid port") from None
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not carry credentials (user:password@)")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query string or fragment")
        return value.rstrip("/")


class SubscriptionConfig(StrictModel):
    """The event filters of the one subscription a2pd holds."""

    event_filters: list[str] = Field(default_factory=lambda: list(DEFAULT_EVENT_FILTERS),
                                     min_length=1)

    @field_validator("event_filters")
    @classmethod
    def _filters(cls, value: list[str]) -> list[str]:
        for i, item in enumerate(value):
            if not item.startswith("/restapi/"):
                raise ValueError(f"item {i} is not an event filter path (must start /restapi/)")
        if len(set(value)) != len(value):
            raise ValueError("the same filter is listed twice")
        return value


class ConnectionConfig(StrictModel):
    """WebSocket keep-alive, timeouts and reconnect pacing (PROTOCOL.md §3, §8)."""

    heartbeat_interval: Duration = 60.0
    #: also send a Heartbeat when nothing was sent for this long (below the 30 min idle timeout)
    keepalive_interval: Duration = 600.0
    heartbeat_timeout: Duration = 30.0
    connect_timeout: Duration = 30.0
    request_timeout: Duration = 30.0
    backoff_initial: Duration = 1.0
    backoff_max: Duration = 120.0
    #: never ask for a WebSocket token more often than this (Auth rate group: 5/min/user)
    wstoken_min_interval: Duration = 15.0
    max_frame_bytes: int = Field(default=4 * 1024 * 1024, ge=64 * 1024)
    #: frames read off the socket while the journal cannot take them (a stalled disk, a full
    #: journal with full_policy "block"): reading on keeps the gateway's pings answered (it
    #: drops a client that does not pong within 10 s). Past this, reading pauses.
    receive_buffer_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024)
    #: a frame's handling that has waited this long is a stall: from then on the socket is
    #: read on into memory (up to receive_buffer_bytes); well below the 10 s pong deadline
    stall_read_after: Duration = 1.0
    #: a connection that lived at least this long resets the backoff
    stable_after: Duration = 60.0


class StateConfig(StrictModel):
    """Where a2pd keeps what must survive it: the journal (events, cursors, dead letters)."""

    directory: LocalPath = Path("./state")
    #: keep OAuth tokens and the newest wsc (encrypted) so a restart inside the gateway's
    #: recovery window recovers the session and gets what was sent meanwhile
    persist_session: bool = True


class JournalConfig(StrictModel):
    """The durable journal between the socket and the sinks (SQLite, WAL)."""

    #: commits start at most this often: an event after a quiet spell is committed at
    #: once, events arriving within the interval share the next commit (fewer WAL pages per
    #: event); 0: a commit starts as soon as the previous one is done. An event counts as
    #: received once committed; a crash loses only uncommitted appends, which session
    #: recovery replays
    commit_interval: DurationOrOff = 0.005
    #: commit sooner when this many appends are waiting; while a commit runs, reading
    #: waits once this many more are (what a burst holds in memory)
    commit_max: int = Field(default=1000, ge=1)
    #: fsync at every commit (SQLite synchronous=FULL); off: NORMAL, safe against a process
    #: crash, may lose the last commits on power loss
    fsync: bool = False
    #: bound on journaled events (0: no bound)
    max_events: int = Field(default=1_000_000, ge=0)
    #: events older than this are removed even if a sink has not delivered them (0: never)
    max_age: DurationOrOff = 7 * 24 * 3600.0
    #: when max_events is reached: block (stop reading the socket until sinks catch up) or
    #: drop_oldest (drop the oldest undelivered events, counted and logged as errors)
    full_policy: Literal["block", "drop_oldest"] = "block"
    #: how long a notification uuid is remembered to drop replays and duplicates
    dedup_window: Duration = 24 * 3600.0
    #: how often delivered events are compacted away
    compact_interval: Duration = 1.0


class BackfillConfig(StrictModel):
    """Rebuilding an unrecovered gap from the A2P REST lists (PROTOCOL.md §5.4, §8 step 7)."""

    enabled: bool = True
    #: the window starts this long before the last notification received before the gap
    #: (a state change is stamped before its notification leaves the platform)
    margin: DurationOrOff = 60.0
    #: records asked for per list page (the platform's maximum and default is 1000)
    per_page: int = Field(default=1000, ge=1, le=1000)
    #: a longer gap is cut to its newest part (the lists' default window is 24 h)
    max_window: Duration = 24 * 3600.0
    #: first delay after a failed list call (doubles, capped at retry_max; a 429's
    #: Retry-After is obeyed)
    retry_initial: Duration = 1.0
    retry_max: Duration = 60.0


class DeliveryConfig(StrictModel):
    """How events move from the journal to the sinks."""

    #: most events handed to a sink in one send()
    batch_max: int = Field(default=512, ge=1)
    retry_initial: Duration = 0.5
    retry_max: Duration = 30.0
    #: give up on an event after this many failed attempts and dead-letter it (0: never)
    max_attempts: int = Field(default=0, ge=0)
    #: on SIGTERM/SIGINT, how long sinks get to deliver what is queued
    shutdown_timeout: Duration = 10.0
    #: sinks removed from this file whose undelivered events may be dropped (a start or
    #: reload that removes a sink with a backlog is refused otherwise; a sink's
    #: ``takes_over`` hands the backlog on instead)
    drop_backlog: list[str] = Field(default_factory=list)


class OpsConfig(StrictModel):
    """The ops HTTP endpoint: /metrics, /healthz, /readyz, /status."""

    #: "host:port" to listen on ("" turns the endpoint off); loopback by default
    listen: str = "127.0.0.1:9108"
    #: /readyz fails when a sink's current delivery has been failing/running this long
    ready_max_lag: Duration = 60.0
    #: how often the STATUS= line for systemd is refreshed
    status_interval: Duration = 10.0

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        if value and parse_listen(value) is None:
            raise ValueError("use host:port (e.g. 127.0.0.1:9108, [::1]:9108) or \"\" for off")
        return value

    @property
    def address(self) -> tuple[str, int] | None:
        return parse_listen(self.listen) if self.listen else None


def parse_listen(value: str) -> tuple[str, int] | None:
    """``host:port`` (IPv6 in brackets) → (host, port), or None if it is not one."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class LogConfig(StrictModel):
    """Log level and format (JSON lines under systemd, console on a terminal)."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class RouteConfig(StrictModel):
    """One ``[[routes]]`` entry."""

    name: str = Field(min_length=1)
    sinks: list[str] = Field(min_length=1)
    match: dict[str, str | bool | list[str | bool]] = Field(default_factory=dict)
    stop: bool = False

    @field_validator("match")
    @classmethod
    def _fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if key not in ROUTABLE_FIELDS:
                raise ValueError(f"unknown field {key!r} (known: {', '.join(ROUTABLE_FIELDS)})")
        return value


class DefaultRouteConfig(StrictModel):
    """Where events no route matched go."""

    sinks: list[str] = Field(default_factory=list)


class Document(StrictModel):
    """The whole config file (the sinks' tables unchecked here)."""

    platform: PlatformConfig
    subscription: SubscriptionConfig = SubscriptionConfig()
    connection: ConnectionConfig = ConnectionConfig()
    state: StateConfig = StateConfig()
    journal: JournalConfig = JournalConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    backfill: BackfillConfig = BackfillConfig()
    log: LogConfig = LogConfig()
    ops: OpsConfig = OpsConfig()
    sinks: dict[str, dict[str, Any]] = Field(min_length=1)
    routes: list[RouteConfig] = Field(default_factory=list)
    default_route: DefaultRouteConfig = DefaultRouteConfig()
