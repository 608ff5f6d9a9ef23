"""The ops endpoint: Prometheus metrics, health, readiness and status over HTTP/1.1.

    GET /metrics   Prometheus text format (prometheus_client's; docs/metrics.md lists it)
    GET /healthz   200 while the event loop answers (the process is alive)
    GET /readyz    200 when the socket is subscribed AND every sink is within its lag
                   budget; 503 with the reasons otherwise
    GET /status    the JSON `a2pd status` renders

It listens on loopback by default (``[ops] listen``). The server is a few lines of h11 over
anyio sockets: no framework, no signal handlers of its own, nothing that can outlive the
daemon's task group. Requests are small and answered from memory (and two ``stat`` calls
for the journal's size).

``Metrics`` is the exposition: a private prometheus_client registry per daemon (tests run
several in one process) with a collector that reads the daemon's snapshot at scrape time
and yields fixed, declared families — the counters of ``observe.COUNTERS``, every series
from the start (per sink, per event kind, per outcome, at 0) until the daemon stops (a sink
a reload removes keeps its counter series; only its gauges go), gauges, the delivery latency
histogram — and prometheus_client's process collector. A counter nobody declared is not
exported (a warning says so once); a test keeps the declarations complete.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import anyio
import h11
from anyio.abc import SocketStream, TaskStatus
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from a2pd import counts
from a2pd.errors import ConfigError, ConfigProblem
from a2pd.logging import get_logger
from a2pd.names import BUILTIN_SINK_TYPES, DEAD_LETTER_SOURCES
from a2pd.observe import (
    DEAD_LETTER_LABELS,
    DELIVERY_LATENCY_BUCKETS,
    FAMILIES,
    FILE_SINKS,
    HTTP_SINKS,
    SINKS,
    Histogram,
    exported_elsewhere,
    resolve,
)
from a2pd.sinks.http import LATENCY_BUCKETS_MS

__all__ = [
    "MAX_REQUEST",
    "READ_TIMEOUT",
    "DaemonCollector",
    "Latency",
    "Metrics",
    "Snapshot",
    "answer",
    "serve",
]

log = get_logger("ops")

#: one request head is at most this big; anything larger is refused
MAX_REQUEST = 16 * 1024
READ_TIMEOUT = 10.0

Snapshot = Callable[[], dict[str, Any]]
#: per sink, the delivery latency histogram (Pipeline.delivery_latency)
Latency = Callable[[], Mapping[str, Histogram]]


async def serve(host: str, port: int, snapshot: Snapshot, metrics: Metrics, *,
                task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
    """Serve until cancelled; ``task_status.started`` gets the bound port. An address it
    cannot listen on is the configuration's ``ops.listen`` at fault (``ConfigError``)."""
    try:
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port,
                                                   reuse_port=False)
    except OSError as exc:
        shown = f"[{host}]" if ":" in host else host
        raise ConfigError([ConfigProblem(
            "ops.listen", f"cannot listen on {shown}:{port}: {exc.strerror or exc}")]) from None
    bound = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610
    log.info("ops_listening", host=host, port=bound,
             paths=["/metrics", "/healthz", "/readyz", "/status"])
    async with listener:
        task_status.started(bound)
        await listener.serve(lambda stream: _connection(stream, snapshot, metrics))


async def _connection(stream: SocketStream, snapshot: Snapshot, metrics: Metrics) -> None:
    """One client connection. Nothing a client does can end the server (or the daemon):
    every failure ends only this connection."""
    try:
        await _serve_connection(stream, snapshot, metrics)
    except Exception as exc:  # noqa: BLE001 - a bad client must never stop the daemon
        log.warning("ops_request_failed", error=type(exc).__name__)
        await stream.aclose()


async def _serve_connection(stream: SocketStream, snapshot: Snapshot, metrics: Metrics) -> None:
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
                                                snapshot, metrics)
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


def answer(method: str, target: str, snapshot: Snapshot,
           metrics: Metrics) -> tuple[int, str, bytes]:
    """(status, content type, body) for one request."""
    path = target.split("?", 1)[0]
    if method not in ("GET", "HEAD"):
        return 405, "text/plain; charset=utf-8", b"only GET\n"
    if path == "/healthz":
        return 200, "text/plain; charset=utf-8", b"ok\n"
    if path not in ("/metrics", "/readyz", "/status"):
        return 404, "text/plain; charset=utf-8", b"not found: /metrics /healthz /readyz /status\n"
    if path == "/metrics":
        return 200, CONTENT_TYPE_LATEST, metrics.render()
    state = snapshot()
    if path == "/readyz":
        if state["ready"]:
            return 200, "text/plain; charset=utf-8", b"ready\n"
        return 503, "text/plain; charset=utf-8", \
            ("not ready: " + "; ".join(state["not_ready"]) + "\n").encode()
    return 200, "application/json", json.dumps(state, indent=2, default=str).encode() + b"\n"


# -- Prometheus exposition ---------------------------------------------------------------------


class Metrics:
    """The /metrics of one daemon: a registry of its own (never prometheus_client's global
    one) with the daemon's collector and the process collector (``process_cpu_seconds_total``,
    ``process_resident_memory_bytes``, ``process_open_fds``, …)."""

    def __init__(self, snapshot: Snapshot, latency: Latency) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(DaemonCollector(snapshot, latency))
        ProcessCollector(registry=self.registry)

    def render(self) -> bytes:
        """The exposition, in prometheus_client's text format (``CONTENT_TYPE_LATEST``)."""
        return generate_latest(self.registry)


class DaemonCollector:
    """Reads the daemon at scrape time (``snapshot``, ``latency``) and yields its families;
    the names, labels and help are fixed here and in ``observe.COUNTERS``."""

    def __init__(self, snapshot: Snapshot, latency: Latency) -> None:
        self._snapshot = snapshot
        self._latency = latency
        #: undeclared counters already warned about
        self._warned: set[str] = set()
        #: every (sink, type) this daemon has had: a sink a reload removed (or gave another
        #: type) keeps its counter and histogram series until the restart; only its gauges go
        self._sinks_seen: set[tuple[str, str]] = set()
        #: each sink name's latest type (a third-party sink's counters are told by it)
        self._sink_types: dict[str, str] = {}

    def collect(self) -> Iterator[Metric]:
        state = self._snapshot()
        sinks: dict[str, dict[str, Any]] = state["sinks"]
        for name, spec in sinks.items():
            kind = str(spec["type"])
            self._sinks_seen.add((name, kind))
            self._sink_types[name] = kind
        names = sorted(self._sink_types)
        known: dict[str, Sequence[str]] = {
            SINKS: names,
            HTTP_SINKS: sorted({name for name, kind in self._sinks_seen if kind == "http"}),
            FILE_SINKS: sorted({name for name, kind in self._sinks_seen if kind == "file"}),
            DEAD_LETTER_LABELS: [*names, *DEAD_LETTER_SOURCES],
        }
        counters: dict[str, int] = state["counters"]
        yield from self._counters(counters, known)
        yield from _gauges(state)
        yield _latency_family(self._latency(), names)
        yield _http_latency_family(counters, known[HTTP_SINKS])

    def _counters(self, counters: Mapping[str, int], known: dict[str, Sequence[str]]
                  ) -> Iterator[Metric]:
        series: dict[str, dict[tuple[str, ...], float]] = {
            name: dict.fromkeys(family.series(known), 0.0) for name, family in FAMILIES.items()}
        plugin: dict[tuple[str, str], float] = {}
        for key, value in counters.items():
            found = resolve(key)
            if found is not None:
                family, labels = found
                values = series[family.name]
                values[labels] = values.get(labels, 0.0) + value
                continue
            if exported_elsewhere(key):
                continue
            base, _, sink = key.partition(".")
            kind = self._sink_types.get(sink)
            if kind is not None and kind not in BUILTIN_SINK_TYPES:
                plugin[(sink, base)] = value  # a third-party sink's own counter
            elif key not in self._warned:
                self._warned.add(key)
                log.warning("metric_undeclared", counter=key,
                            note="not exported; declare it in a2pd.observe.COUNTERS")
        for name, family in FAMILIES.items():
            metric = CounterMetricFamily(name, family.help, labels=family.labels)
            for labels, total in sorted(series[name].items()):
                metric.add_metric(labels, total)
            yield metric
        metric = CounterMetricFamily(
            "a2pd_sink_plugin_counter_total",
            "A third-party sink's own counters (self.counters \"<counter>.<sink>\"), by sink "
            "and counter name", labels=("sink", "counter"))
        for pair, total in sorted(plugin.items()):
            metric.add_metric(pair, total)
        yield metric


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


def _gauges(state: dict[str, Any]) -> Iterator[Metric]:
    conn, journal = state["connection"], state["journal"]
    uptime = float(state["uptime_seconds"])
    yield _gauge("a2pd_up", "1 while the daemon runs", 1)
    info = GaugeMetricFamily("a2pd_build_info", "The running a2pd: its version and Python's "
                             "(always 1)", labels=("version", "python"))
    info.add_metric((str(state["version"]), platform.python_version()), 1)
    yield info
    yield _gauge("a2pd_uptime_seconds", "Seconds since the daemon started", uptime)
    yield _gauge("a2pd_connected", "1 while the WebSocket is open", int(conn["connected"]))
    yield _gauge("a2pd_subscribed", "1 while the subscription is active",
                 int(conn["subscribed"]))
    yield _gauge("a2pd_ready", "1 when /readyz answers 200", int(state["ready"]))
    last = conn["last_event_age_seconds"]
    yield _gauge("a2pd_last_event_age_seconds",
                 "Seconds since the last live notification arrived (since the start while "
                 "none has)", uptime if last is None else last)
    yield _gauge("a2pd_journal_events", "Events in the journal (depth)", journal["events"])
    yield _gauge("a2pd_journal_oldest_age_seconds",
                 "Age of the oldest event in the journal (0: empty)",
                 journal["oldest_age_seconds"] or 0.0)
    yield _gauge("a2pd_journal_size_bytes",
                 "Bytes the journal takes on disk: journal.db and its write-ahead log",
                 journal["size_bytes"])
    yield _gauge("a2pd_journal_limit_events",
                 "journal.max_events: the most events the journal keeps (0: no limit)",
                 journal["limit_events"])
    yield _gauge("a2pd_journal_limit_age_seconds",
                 "journal.max_age: undelivered events older than this are removed (0: off)",
                 journal["limit_age_seconds"] or 0.0)
    yield _gauge("a2pd_journal_commits_failing",
                 "1 while journal commits fail (nothing more is read until one succeeds)",
                 int(journal["commits_failing"] is not None))
    backfill = state["backfill"]
    yield _gauge("a2pd_backfill_enabled", "1 when unrecovered gaps are backfilled",
                 int(backfill is not None))
    yield _gauge("a2pd_backfill_refused",
                 "1 while the platform refuses the backfill's lists for good (permission; "
                 "a reload retries)", int(bool(backfill and backfill["refused"])))
    sinks: dict[str, dict[str, Any]] = state["sinks"]
    families: list[tuple[GaugeMetricFamily, Callable[[dict[str, Any]], float]]] = [
        (GaugeMetricFamily("a2pd_sink_backlog_events", "Journal rows a sink has not passed "
                           "yet", labels=("sink",)), lambda s: s["backlog"]),
        (GaugeMetricFamily("a2pd_sink_busy_seconds", "How long the sink's current delivery "
                           "has been running (0: idle)", labels=("sink",)),
         lambda s: s["busy_seconds"] or 0.0),
        (GaugeMetricFamily("a2pd_sink_ready", "1 unless the sink's current delivery has been "
                           "running longer than ops.ready_max_lag", labels=("sink",)),
         lambda s: int(s["ready"])),
    ]
    for family, value in families:
        for name in sorted(sinks):
            family.add_metric((name,), value(sinks[name]))
        yield family
    info = GaugeMetricFamily("a2pd_sink_info", "A configured sink and its type (always 1)",
                             labels=("sink", "type"))
    for name in sorted(sinks):
        info.add_metric((name, str(sinks[name]["type"])), 1)
    yield info


def _le(bound: float) -> str:
    """A bucket bound as prometheus_client writes it (``0.005``, ``1.0``, ``+Inf``)."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


def _latency_family(latency: Mapping[str, Histogram], sinks: Sequence[str]) -> Metric:
    family = HistogramMetricFamily(
        "a2pd_delivery_latency_seconds",
        "Seconds from a live notification's arrival to its sink's confirmation (events "
        "delivered from a previous run's backlog and backfilled events are not observed; "
        "a wait reaching an hour is observed then, in the +Inf bucket)",
        labels=("sink",))
    empty = Histogram(DELIVERY_LATENCY_BUCKETS)
    for name in sorted({*sinks, *latency}):
        histogram = latency.get(name, empty)
        family.add_metric((name,), [(_le(bound), count)
                                    for bound, count in histogram.cumulative()],
                          histogram.sum)
    return family


def _http_latency_family(counters: Mapping[str, int], http_sinks: Sequence[str]) -> Metric:
    """The http sink's latency counters (cumulative ``http_latency_ms_le_<bound>.<sink>``,
    ``_sum``, ``_count``, in milliseconds) as a histogram in seconds."""
    seen = {key.partition(".")[2] for key in counters if key.startswith("http_latency_ms_")}
    family = HistogramMetricFamily("a2pd_http_request_duration_seconds",
                                   "Seconds an HTTP sink's request took until its answer",
                                   labels=("sink",))
    for sink in sorted({*http_sinks, *seen}):
        buckets: list[tuple[str, float]] = [
            (_le(bound / 1000.0), counters.get(f"{counts.HTTP_LATENCY_MS_LE}_{bound}.{sink}", 0))
            for bound in LATENCY_BUCKETS_MS]
        buckets.append(("+Inf", counters.get(f"{counts.HTTP_LATENCY_MS_COUNT}.{sink}", 0)))
        family.add_metric((sink,), buckets,
                          counters.get(f"{counts.HTTP_LATENCY_MS_SUM}.{sink}", 0) / 1000.0)
    return family

