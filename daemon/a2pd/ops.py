"""The ops endpoint: Prometheus metrics, health, readiness and status over HTTP/1.1.

    GET /metrics   Prometheus text format (0.0.4)
    GET /healthz   200 while the event loop answers (the process is alive)
    GET /readyz    200 when the socket is subscribed AND every sink is within its lag
                   budget; 503 with the reasons otherwise
    GET /status    the JSON `a2pd status` renders

It listens on loopback by default (``[ops] listen``). The server is a few lines of h11 over
anyio sockets: no framework, no signal handlers of its own, nothing that can outlive the
daemon's task group. Requests are small and answered from memory.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from typing import Any

import anyio
import h11
from anyio.abc import SocketStream, TaskStatus

from a2pd.logging import get_logger

log = get_logger("ops")

#: one request head is at most this big; anything larger is refused
MAX_REQUEST = 16 * 1024
READ_TIMEOUT = 10.0
#: HTTP latency bucket bounds of the http sink, in milliseconds (see sinks/http.py)
_LE = re.compile(r"^http_latency_ms_le_(\d+)$")

Snapshot = Callable[[], dict[str, Any]]


async def serve(host: str, port: int, snapshot: Snapshot, *,
                task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
    """Serve until cancelled; ``task_status.started`` gets the bound port."""
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port,
                                               reuse_port=False)
    bound = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610
    log.info("ops_listening", host=host, port=bound,
             paths=["/metrics", "/healthz", "/readyz", "/status"])
    async with listener:
        task_status.started(bound)
        await listener.serve(lambda stream: _connection(stream, snapshot))


async def _connection(stream: SocketStream, snapshot: Snapshot) -> None:
    """One client connection. Nothing a client does can end the server (or the daemon):
    every failure ends only this connection."""
    try:
        await _serve_connection(stream, snapshot)
    except Exception as exc:  # noqa: BLE001 - a bad client must never stop the daemon
        log.warning("ops_request_failed", error=type(exc).__name__)
        await stream.aclose()


async def _serve_connection(stream: SocketStream, snapshot: Snapshot) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
    async with stream:
        while True:
            try:
                with anyio.fail_after(READ_TIMEOUT):
                    request = await _read_request(conn, stream)
            except (TimeoutError, h11.RemoteProtocolError, anyio.BrokenResourceError,
                    anyio.EndOfStream):
                return
            if request is None:
                return
            method = request.method.decode("ascii", "replace")
            status, content_type, body = answer(method,
                                                request.target.decode("ascii", "replace"),
                                                snapshot)
            headers = [("content-type", content_type), ("content-length", str(len(body))),
                       ("cache-control", "no-store")]
            try:
                await stream.send(conn.send(h11.Response(status_code=status, headers=headers)))
                if method != "HEAD":  # a HEAD answer has the headers of GET and no body
                    await stream.send(conn.send(h11.Data(data=body)))
                await stream.send(conn.send(h11.EndOfMessage()))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                return
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()


async def _read_request(conn: h11.Connection, stream: SocketStream) -> h11.Request | None:
    request: h11.Request | None = None
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            try:
                conn.receive_data(await stream.receive())
            except anyio.EndOfStream:
                conn.receive_data(b"")
            continue
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.EndOfMessage):
            return request
        elif isinstance(event, h11.ConnectionClosed):
            return None


def answer(method: str, target: str, snapshot: Snapshot) -> tuple[int, str, bytes]:
    """(status, content type, body) for one request."""
    path = target.split("?", 1)[0]
    if method not in ("GET", "HEAD"):
        return 405, "text/plain; charset=utf-8", b"only GET\n"
    if path == "/healthz":
        return 200, "text/plain; charset=utf-8", b"ok\n"
    if path not in ("/metrics", "/readyz", "/status"):
        return 404, "text/plain; charset=utf-8", b"not found: /metrics /healthz /readyz /status\n"
    state = snapshot()
    if path == "/metrics":
        return 200, "text/plain; version=0.0.4; charset=utf-8", render_metrics(state).encode()
    if path == "/readyz":
        if state["ready"]:
            return 200, "text/plain; charset=utf-8", b"ready\n"
        return 503, "text/plain; charset=utf-8", \
            ("not ready: " + "; ".join(state["not_ready"]) + "\n").encode()
    return 200, "application/json", json.dumps(state, indent=2, default=str).encode() + b"\n"


# -- Prometheus text format ---------------------------------------------------------------------

#: counter name (before ".<label>") → (metric, help, label name or None)
_COUNTERS: dict[str, tuple[str, str, str | None]] = {
    "received": ("a2pd_events_received_total", "Notifications decoded, by event kind", "kind"),
    "committed": ("a2pd_events_committed_total", "Events written to the journal", None),
    "duplicates": ("a2pd_events_duplicate_total", "Notifications dropped as already seen",
                   None),
    "unrouted": ("a2pd_events_unrouted_total", "Events no route matched", None),
    "delivered": ("a2pd_sink_delivered_total", "Events a sink confirmed", "sink"),
    "retries": ("a2pd_sink_retries_total", "Failed sink attempts that were retried", "sink"),
    "dead_letters": ("a2pd_dead_letters_total", "Dead letters written, by source", "sink"),
    "dropped_full": ("a2pd_journal_dropped_total",
                     "Undelivered events dropped because the journal was full", None),
    "expired": ("a2pd_journal_expired_total", "Undelivered events older than max_age removed",
                None),
    "compacted": ("a2pd_journal_compacted_total", "Delivered events compacted away", None),
    "full_waits": ("a2pd_journal_full_waits_total", "Appends that waited for room", None),
    "commit_failures": ("a2pd_journal_commit_failures_total", "Journal commits that failed",
                        None),
    "journal_retries": ("a2pd_journal_retries_total", "Journal operations retried", None),
    "frames_malformed": ("a2pd_frames_malformed_total", "WebSocket frames that did not decode",
                         None),
    "notifications": ("a2pd_notifications_total", "ServerNotification frames received", None),
    "heartbeats_sent": ("a2pd_heartbeats_sent_total", "Heartbeat frames sent", None),
    "heartbeats_deferred": ("a2pd_heartbeats_deferred_total",
                            "Dead-socket checks deferred by backpressure", None),
    "connections": ("a2pd_connections_total", "WebSocket connections opened", None),
    "subscriptions": ("a2pd_subscriptions_total", "Subscriptions created", None),
    "recoveries_successful": ("a2pd_recoveries_total", "Session recoveries, by outcome", None),
    "recoveries_failed": ("a2pd_recoveries_total", "Session recoveries, by outcome", None),
    "grants": ("a2pd_token_grants_total", "JWT grants", None),
    "refreshes": ("a2pd_token_refreshes_total", "Access-token refreshes", None),
    "wstokens": ("a2pd_wstokens_total", "WebSocket tokens requested", None),
    "http_requests": ("a2pd_http_requests_total", "HTTP sink requests", "sink"),
    "http_sent": ("a2pd_http_sent_events_total", "Events an HTTP receiver accepted", "sink"),
    "http_failures": ("a2pd_http_failures_total", "HTTP sink requests that failed", "sink"),
    "http_errors": ("a2pd_http_errors_total", "HTTP sink network errors and timeouts", "sink"),
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def render_metrics(state: dict[str, Any]) -> str:
    """The Prometheus exposition of a status snapshot."""
    families: dict[str, tuple[str, str, list[str]]] = {}

    def add(metric: str, kind: str, help_text: str, value: float,
            labels: Iterable[tuple[str, str]] = ()) -> None:
        family = families.setdefault(metric, (kind, help_text, []))
        family[2].append(f"{metric}{_labels(labels)} {_number(value)}")

    counters: dict[str, int] = state["counters"]
    histograms: dict[str, dict[str, Any]] = {}
    for key, value in sorted(counters.items()):
        base, _, label = key.partition(".")
        if base.startswith("http_status_"):
            add("a2pd_http_responses_total", "counter", "HTTP sink answers, by status class",
                value, [("sink", label), ("class", base.removeprefix("http_status_"))])
            continue
        if base.startswith("http_latency_ms_"):
            hist = histograms.setdefault(label, {"buckets": {}, "sum": 0, "count": 0})
            bucket = _LE.match(base)
            if bucket:
                hist["buckets"][int(bucket.group(1))] = value
            elif base == "http_latency_ms_sum":
                hist["sum"] = value
            elif base == "http_latency_ms_count":
                hist["count"] = value
            continue
        known = _COUNTERS.get(base)
        if known is None:
            name = "a2pd_" + re.sub(r"[^a-zA-Z0-9_]", "_", base) + "_total"
            add(name, "counter", f"counter {base}", value,
                [("name", label)] if label else [])
            continue
        metric, help_text, label_name = known
        labels: list[tuple[str, str]] = []
        if base.startswith("recoveries_"):
            labels.append(("outcome", base.removeprefix("recoveries_")))
        if label_name and label:
            labels.append((label_name, label))
        elif label:
            labels.append(("name", label))
        add(metric, "counter", help_text, value, labels)
    for sink, hist in sorted(histograms.items()):
        metric = "a2pd_http_request_duration_seconds"
        families.setdefault(metric, ("histogram", "HTTP sink request latency", []))
        for bound, count in sorted(hist["buckets"].items()):
            families[metric][2].append(
                f"{metric}_bucket{_labels([('sink', sink), ('le', _number(bound / 1000.0))])}"
                f" {_number(count)}")
        families[metric][2].append(
            f"{metric}_bucket{_labels([('sink', sink), ('le', '+Inf')])} "
            f"{_number(hist['count'])}")
        families[metric][2].append(
            f"{metric}_sum{_labels([('sink', sink)])} {_number(hist['sum'] / 1000.0)}")
        families[metric][2].append(
            f"{metric}_count{_labels([('sink', sink)])} {_number(hist['count'])}")

    conn = state["connection"]
    add("a2pd_up", "gauge", "1 while the daemon runs", 1)
    add("a2pd_connected", "gauge", "1 while the WebSocket is open", int(conn["connected"]))
    add("a2pd_subscribed", "gauge", "1 while the subscription is active",
        int(conn["subscribed"]))
    add("a2pd_ready", "gauge", "1 when /readyz answers 200", int(state["ready"]))
    if conn["last_event_age_seconds"] is not None:
        add("a2pd_last_event_age_seconds", "gauge", "Seconds since the last notification",
            conn["last_event_age_seconds"])
    journal = state["journal"]
    add("a2pd_journal_events", "gauge", "Events in the journal (depth)", journal["events"])
    if journal["oldest_age_seconds"] is not None:
        add("a2pd_journal_oldest_age_seconds", "gauge",
            "Age of the oldest event in the journal", journal["oldest_age_seconds"])
    for name, sink in sorted(state["sinks"].items()):
        add("a2pd_sink_backlog_events", "gauge", "Journal rows a sink has not passed yet",
            sink["backlog"], [("sink", name)])
        add("a2pd_sink_busy_seconds", "gauge",
            "How long the sink's current delivery has been running (0: idle)",
            sink["busy_seconds"] or 0.0, [("sink", name)])
        add("a2pd_sink_ready", "gauge", "1 when the sink is within its lag budget",
            int(sink["ready"]), [("sink", name)])
    add("a2pd_uptime_seconds", "gauge", "Seconds since the daemon started",
        state["uptime_seconds"])
    lines: list[str] = []
    for metric, (kind, help_text, samples) in families.items():
        lines.append(f"# HELP {metric} {help_text}")
        lines.append(f"# TYPE {metric} {kind}")
        lines.extend(samples)
    return "\n".join(lines) + "\n"
