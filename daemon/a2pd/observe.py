"""Counters a2pd keeps about itself, a way to wait for them, and what each one means.

``Counters`` is a flat map of dotted names (``delivered.archive``, ``frames_malformed``) to
integers. Anything can ``wait_for`` a counter to reach a value: the wait wakes on each
increment instead of polling, which is what tests, the graceful stop and readiness checks
use. ``COUNTERS`` declares the Prometheus counter every name feeds (``resolve``): /metrics
(daemon/a2pd/ops.py) exports declared counters only, each series from the start at 0, and
a test reads the code for every counter name and checks that it resolves. ``Histogram`` is
a bucket count cheap enough for one observation per event.

Pure: no I/O, and no metrics library (ops.py owns the exposition).
"""

from __future__ import annotations

import re
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import anyio

from a2pd import counts
from a2pd.names import KINDS

__all__ = [
    "BACKFILLED",
    "COUNTERS",
    "DEAD_LETTER_LABELS",
    "DELIVERY_LATENCY_BUCKETS",
    "FAMILIES",
    "FILE_SINKS",
    "HTTP_CLASSES",
    "HTTP_LATENCY_BUCKET",
    "HTTP_RESPONSES",
    "HTTP_SINKS",
    "NOT_EXPORTED",
    "RECEIVED",
    "RECOVERIES",
    "RELOADS",
    "SINKS",
    "CounterFamily",
    "Counters",
    "Fixed",
    "Histogram",
    "LogThrottle",
    "exported_elsewhere",
    "resolve",
]


class Counters:
    """Monotonic counters with event-driven waiting. Use from one event loop."""

    def __init__(self) -> None:
        self._values: dict[str, int] = {}
        self._changed: anyio.Event | None = None

    def inc(self, key: str, n: int = 1) -> None:
        self._values[key] = self._values.get(key, 0) + n
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def get(self, key: str) -> int:
        return self._values.get(key, 0)

    def __getitem__(self, key: str) -> int:
        return self._values.get(key, 0)

    def snapshot(self, prefix: str = "") -> dict[str, int]:
        """Every counter whose name starts with ``prefix`` (the prefix removed)."""
        return {k[len(prefix):]: v for k, v in self._values.items() if k.startswith(prefix)}

    async def wait_for(self, key: str, at_least: int) -> int:
        """Return once ``key`` has reached ``at_least`` (its value then)."""
        while self._values.get(key, 0) < at_least:
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()
        return self._values.get(key, 0)


class LogThrottle:
    """At most ``burst`` log lines per ``window`` seconds for one kind of line; the lines
    held back are counted, and the next line let through says how many (``suppressed``).

    For lines hostile input can trigger at wire speed (a malformed frame, an undecodable
    notification): counters and dead letters keep every one, the log keeps a sample, so a
    flood cannot flood journald. No timers: a window ends when the next line comes.
    """

    def __init__(self, burst: int = 10, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.window = window
        self._clock = clock
        self._window_start = -float("inf")
        self._in_window = 0
        self._held = 0

    def allow(self) -> int | None:
        """``None``: skip this line; else log it, with the returned number of lines held
        back since the last one logged."""
        now = self._clock()
        if now - self._window_start >= self.window:
            self._window_start = now
            self._in_window = 0
        if self._in_window >= self.burst:
            self._held += 1
            return None
        self._in_window += 1
        held, self._held = self._held, 0
        return held


class Histogram:
    """Observations counted into fixed buckets, Prometheus style (a bucket holds the values
    ``<=`` its bound). One observation is a bisect and two additions: this is on the
    delivery path, once per event, where prometheus_client's ``Histogram.observe`` (a lock
    and a loop over the bounds) costs several times more. Use from one event loop."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(sorted(bounds))
        #: per bucket, not cumulative; the last one counts what is above every bound
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def observe_all(self, values: Sequence[float]) -> None:
        """``observe`` each of ``values`` (a batch: one call, the loop kept local)."""
        counts, bounds = self.counts, self.bounds
        for value in values:
            counts[bisect_left(bounds, value)] += 1
        self.sum += sum(values)

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations ``<=`` it) per bucket, ending with (+inf, count)."""
        total = 0
        buckets = []
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            buckets.append((bound, total))
        return buckets


#: end-to-end delivery latency buckets, seconds: a millisecond to five minutes
DELIVERY_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                            2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


# -- the exported counters ------------------------------------------------------------------

# The built-in sink types' counters are all declared here; a third-party sink's own counters
# ("<counter>.<sink>") are exported as a2pd_sink_plugin_counter_total{sink, counter}.
#: sets of label values only the running daemon knows (its configured sinks, by type)
SINKS, HTTP_SINKS, FILE_SINKS, DEAD_LETTER_LABELS = \
    "sinks", "http_sinks", "file_sinks", "dead_letter_labels"
#: HTTP answer classes exported from the start (another class a receiver sends is added)
HTTP_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


@dataclass(frozen=True, slots=True)
class CounterFamily:
    """One Prometheus counter: its name (with ``_total``), help, label names, and per label
    the values exported from the start (at 0): a tuple, or the name of a set the running
    daemon knows (``SINKS``, ``HTTP_SINKS``, ``FILE_SINKS``, ``DEAD_LETTER_LABELS``)."""

    name: str
    help: str
    labels: tuple[str, ...] = ()
    domains: tuple[tuple[str, ...] | str, ...] = ()

    def series(self, known: dict[str, Sequence[str]]) -> Iterator[tuple[str, ...]]:
        """The label values of every series exported from the start."""
        combos: list[tuple[str, ...]] = [()]
        for domain in self.domains:
            values = known.get(domain, ()) if isinstance(domain, str) else domain
            combos = [(*combo, value) for combo in combos for value in values]
        return iter(combos)


def _family(name: str, help_text: str, *labelled: tuple[str, tuple[str, ...] | str]
            ) -> CounterFamily:
    return CounterFamily(name, help_text, tuple(label for label, _ in labelled),
                         tuple(domain for _, domain in labelled))


RECEIVED = _family("a2pd_events_received_total",
                   "Live notifications handed to the journal, by event kind (counted at "
                   "commit, with the uuids the commit found already journaled)", ("kind", KINDS))
BACKFILLED = _family("a2pd_events_backfilled_total",
                     "Events the backfill rebuilt from the REST lists and journaled, by event "
                     "kind", ("kind", KINDS))
RECOVERIES = _family("a2pd_recoveries_total",
                     "WebSocket session recoveries attempted, by outcome",
                     ("outcome", ("successful", "failed")))
RELOADS = _family("a2pd_reloads_total", "Configuration reloads (SIGHUP), by outcome",
                  ("outcome", ("applied", "refused")))
HTTP_RESPONSES = _family("a2pd_http_responses_total",
                         "Answers an HTTP sink's receiver gave, by sink and status class",
                         ("sink", HTTP_SINKS), ("class", HTTP_CLASSES))
_HTTP_STATUS = re.compile(rf"{counts.HTTP_STATUS}_([0-9])xx")


#: (label, value) pairs a counter's name fixes (``recoveries_failed``: outcome "failed")
Fixed = tuple[tuple[str, str], ...]


def _plain(counter: str, name: str, help_text: str) -> tuple[str, CounterFamily, Fixed]:
    return counter, _family(name, help_text), ()


def _per(counter: str, name: str, help_text: str, label: str, domain: tuple[str, ...] | str
         ) -> tuple[str, CounterFamily, Fixed]:
    return counter, _family(name, help_text, (label, domain)), ()


_DECLARED: list[tuple[str, CounterFamily, Fixed]] = [
    # the receiving side and the journal (pipeline.py, journal/)
    (counts.RECEIVED, RECEIVED, ()),
    (counts.BACKFILLED, BACKFILLED, ()),
    _plain(counts.COMMITTED, "a2pd_events_committed_total",
           "Events written to the journal (live and backfilled)"),
    _plain(counts.DUPLICATES, "a2pd_events_duplicate_total",
           "Notifications dropped because their uuid was already journaled or pending"),
    _plain(counts.BACKFILL_DUPLICATES, "a2pd_backfill_duplicates_total",
           "Backfilled events dropped because their content was already journaled (and live "
           "events the backfill had journaled first)"),
    _plain(counts.UNROUTED, "a2pd_events_unrouted_total",
           "Events no route sent to any sink (journaled, delivered nowhere)"),
    _per(counts.DELIVERED, "a2pd_sink_delivered_total", "Events a sink confirmed", "sink", SINKS),
    _per(counts.RETRIES, "a2pd_sink_retries_total",
         "Failed sink deliveries that were retried (one per failed attempt)", "sink", SINKS),
    _per(counts.LATENCY_UNOBSERVED, "a2pd_delivery_latency_unobserved_total",
         "Live events a sink still had to deliver when their arrival time was forgotten to "
         "bound memory (more than 65,536 waiting): their delivery is not in "
         "a2pd_delivery_latency_seconds", "sink", SINKS),
    _per(counts.DEAD_LETTERS, "a2pd_dead_letters_total",
         "Dead letters written, by where from: a sink's name (it refused the event or a2pd "
         "gave up), frame, notification or backfill (input that did not decode)",
         "sink", DEAD_LETTER_LABELS),
    _plain(counts.DROPPED_FULL, "a2pd_journal_dropped_total",
           "Undelivered events dropped because the journal was full (full_policy = "
           "drop_oldest)"),
    _plain(counts.DROPPED_REMOVED_SINK, "a2pd_journal_dropped_removed_sink_total",
           "Undelivered events dropped with a sink removed from the config "
           "(delivery.drop_backlog)"),
    _plain(counts.EXPIRED, "a2pd_journal_expired_total",
           "Undelivered events removed because they were older than journal.max_age"),
    _plain(counts.COMPACTED, "a2pd_journal_compacted_total",
           "Delivered events compacted out of the journal"),
    _plain(counts.FULL_WAITS, "a2pd_journal_full_waits_total",
           "Appends that waited for room in a full journal (full_policy = block)"),
    _plain(counts.COMMIT_FAILURES, "a2pd_journal_commit_failures_total",
           "Journal commits that failed (retried: a full disk, a lock held elsewhere)"),
    _plain(counts.JOURNAL_RETRIES, "a2pd_journal_retries_total",
           "Journal reads, cursor saves and compactions retried after a transient error"),
    _plain(counts.ROWS_READ_FROM_DISK, "a2pd_journal_rows_read_from_disk_total",
           "Journal rows a sink reader read back from the database (it was behind the rows "
           "kept in memory)"),
    _plain(counts.UNCOMMITTED_AT_STOP, "a2pd_journal_uncommitted_at_stop_total",
           "Events still uncommitted when the daemon stopped (recorded as a gap)"),
    (counts.RELOADS, RELOADS, (("outcome", "applied"),)),
    (counts.RELOADS_REFUSED, RELOADS, (("outcome", "refused"),)),
    # the WebSocket session (session.py, supervisor.py)
    _plain(counts.FRAMES, "a2pd_frames_total", "WebSocket frames read"),
    _plain(counts.FRAMES_MALFORMED, "a2pd_frames_malformed_total",
           "WebSocket frames that did not decode (dead-lettered)"),
    _plain(counts.FRAMES_OVERSIZED, "a2pd_frames_oversized_total",
           "WebSocket frames over connection.max_frame_bytes (lost; the session restarts)"),
    _plain(counts.NOTIFICATIONS, "a2pd_notifications_total", "ServerNotification frames received"),
    _plain(counts.HEARTBEATS_SENT, "a2pd_heartbeats_sent_total", "Heartbeat frames sent"),
    _plain(counts.HEARTBEATS_DEFERRED, "a2pd_heartbeats_deferred_total",
           "Dead-socket checks deferred because the receive side was held up by backpressure"),
    _plain(counts.CONNECTIONS, "a2pd_connections_total", "WebSocket connections opened"),
    _plain(counts.SUBSCRIPTIONS, "a2pd_subscriptions_total", "Subscriptions created"),
    _plain(counts.SUBSCRIPTION_LIMIT, "a2pd_subscription_limit_total",
           "Subscriptions refused because the platform's subscription limit was reached"),
    _plain(counts.RECONNECT_ATTEMPTS, "a2pd_reconnect_attempts_total",
           "Sessions that ended and were started again (each after its backoff)"),
    (counts.RECOVERIES_SUCCESSFUL, RECOVERIES, (("outcome", "successful"),)),
    (counts.RECOVERIES_FAILED, RECOVERIES, (("outcome", "failed"),)),
    # the platform's REST API (auth.py)
    _plain(counts.GRANTS, "a2pd_token_grants_total", "JWT grants (new OAuth sessions)"),
    _plain(counts.REFRESHES, "a2pd_token_refreshes_total", "Access-token refreshes"),
    _plain(counts.WSTOKENS, "a2pd_wstokens_total", "WebSocket tokens requested"),
    _plain(counts.RATE_LIMITED, "a2pd_platform_rate_limited_total",
           "Platform REST calls answered 429 (token, wstoken, subscription calls)"),
    _plain(counts.SUBSCRIPTIONS_DELETED, "a2pd_subscriptions_deleted_total",
           "Stale subscriptions this daemon left behind and deleted"),
    # unrecovered gaps and the backfill (backfill.py, app.py)
    _plain(counts.GAPS_RECORDED, "a2pd_gaps_recorded_total",
           "Unrecovered gaps recorded for the backfill (this run)"),
    _plain(counts.GAPS_BACKFILLED, "a2pd_gaps_backfilled_total",
           "Gaps the backfill listed completely and closed"),
    _plain(counts.BACKFILL_PAGES, "a2pd_backfill_pages_total", "List pages the backfill read"),
    _plain(counts.BACKFILL_READS, "a2pd_backfill_reads_total",
           "Single objects (open batches, messages) the backfill read"),
    _plain(counts.BACKFILL_RECORDS, "a2pd_backfill_records_total",
           "List records the backfill read"),
    _plain(counts.BACKFILL_SKIPPED, "a2pd_backfill_skipped_total",
           "List records skipped: outside the gap's window, or matching no subscribed filter"),
    _plain(counts.BACKFILL_ERRORS, "a2pd_backfill_errors_total",
           "Backfill requests that failed (retried) and records that did not decode"),
    _plain(counts.BACKFILL_RATE_LIMITED, "a2pd_backfill_rate_limited_total",
           "Backfill requests answered 429 (retried after Retry-After)"),
    _plain(counts.BACKFILL_PACED, "a2pd_backfill_paced_total",
           "Pauses of the backfill for the rate limit's window (X-Rate-Limit-Remaining 0)"),
    # (a2pd_backfill_refused is the gauge: 1 while refused)
    _plain(counts.BACKFILL_REFUSED, "a2pd_backfill_refusals_total",
           "Backfills the platform refused for good (permission; retried after a reload)"),
    _plain(counts.BACKFILL_OPTOUTS_REFUSED, "a2pd_backfill_optouts_refused_total",
           "Opt-out listings the platform refused (the SMS permission is missing)"),
    _plain(counts.BACKFILL_WINDOW_CUT, "a2pd_backfill_window_cut_total",
           "Backfills whose window was cut to backfill.max_window"),
    # the sinks' own (sinks/http.py, sinks/file.py)
    _per(counts.HTTP_REQUESTS, "a2pd_http_requests_total", "HTTP sink requests sent", "sink",
         HTTP_SINKS),
    _per(counts.HTTP_SENT, "a2pd_http_sent_events_total", "Events an HTTP receiver accepted (2xx)",
         "sink", HTTP_SINKS),
    _per(counts.HTTP_FAILURES, "a2pd_http_failures_total",
         "HTTP sink requests that failed (a non-2xx answer, a network error or a timeout)",
         "sink", HTTP_SINKS),
    _per(counts.HTTP_ERRORS, "a2pd_http_errors_total",
         "HTTP sink requests without an answer (network errors and timeouts)", "sink",
         HTTP_SINKS),
    *((f"{counts.HTTP_STATUS}_{cls}", HTTP_RESPONSES, (("class", cls),))
      for cls in HTTP_CLASSES),
    _per(counts.FILE_REOPENED, "a2pd_file_reopened_total",
         "Files a file sink reopened because the open file had been moved or deleted",
         "sink", FILE_SINKS),
    _per(counts.FILE_TORN_TAILS, "a2pd_file_torn_tails_total",
         "Torn last lines (a crash mid-write) a file sink repaired", "sink", FILE_SINKS),
]

#: counter name (the part before any ".") → (its family, the labels its name fixes); the
#: ".<suffix>" fills the family's other label
COUNTERS: dict[str, tuple[CounterFamily, Fixed]] = {
    counter: (family, fixed) for counter, family, fixed in _DECLARED}
#: every exported counter family, by name
FAMILIES: dict[str, CounterFamily] = {family.name: family for _, family, _ in _DECLARED}
#: counters that feed no counter family on purpose, and what exports them instead
NOT_EXPORTED: dict[str, str] = {
    counts.DEAD_LETTERS: "the sum of dead_letters.<source>: sum(a2pd_dead_letters_total)",
    counts.HTTP_LATENCY_MS_SUM: "a2pd_http_request_duration_seconds (histogram)",
    counts.HTTP_LATENCY_MS_COUNT: "a2pd_http_request_duration_seconds (histogram)",
}
#: http_latency_ms_le_<bound>: the http sink's buckets (a2pd_http_request_duration_seconds)
HTTP_LATENCY_BUCKET = re.compile(rf"{counts.HTTP_LATENCY_MS_LE}_([0-9]+)")


def resolve(key: str) -> tuple[CounterFamily, tuple[str, ...]] | None:
    """The family a counter feeds and its label values (in the family's label order); None
    for an undeclared name, and for those exported another way (``exported_elsewhere``)."""
    base, dot, suffix = key.partition(".")
    entry = COUNTERS.get(base)
    if entry is None:
        status = _HTTP_STATUS.fullmatch(base)
        if status is None:
            return None
        entry = HTTP_RESPONSES, (("class", f"{status.group(1)}xx"),)
    family, fixed = entry
    given = dict(fixed)
    free = [label for label in family.labels if label not in given]
    if len(free) != (1 if dot else 0):
        return None
    if dot:
        given[free[0]] = suffix
    return family, tuple(given[label] for label in family.labels)


def exported_elsewhere(key: str) -> bool:
    """Whether a counter is left out of the counter families on purpose."""
    base = key.partition(".")[0]
    return base in NOT_EXPORTED or HTTP_LATENCY_BUCKET.fullmatch(base) is not None
