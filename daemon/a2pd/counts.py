"""The name of every counter a2pd keeps (``Counters``), one constant each.

A counter of one sink, source or kind is the name, a dot and that label:
``f"{DELIVERED}.{sink}"``. observe.py declares the Prometheus family each name feeds; a
test checks that every name here is declared and that the code names counters only
through these constants.

Imports nothing else of the daemon (tests/test_layers.py holds it to that).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "BACKFILLED",
    "BACKFILL_DUPLICATES",
    "BACKFILL_ERRORS",
    "BACKFILL_OPTOUTS_REFUSED",
    "BACKFILL_PACED",
    "BACKFILL_PAGES",
    "BACKFILL_RATE_LIMITED",
    "BACKFILL_READS",
    "BACKFILL_RECORDS",
    "BACKFILL_REFUSED",
    "BACKFILL_SKIPPED",
    "BACKFILL_WINDOW_CUT",
    "COMMITTED",
    "COMMIT_FAILURES",
    "COMPACTED",
    "CONNECTIONS",
    "DEAD_LETTERS",
    "DELIVERED",
    "DROPPED_FULL",
    "DROPPED_REMOVED_SINK",
    "DUPLICATES",
    "EXPIRED",
    "FILE_REOPENED",
    "FILE_TORN_TAILS",
    "FRAMES",
    "FRAMES_MALFORMED",
    "FRAMES_OVERSIZED",
    "FULL_WAITS",
    "GAPS_BACKFILLED",
    "GAPS_RECORDED",
    "GRANTS",
    "HEARTBEATS_DEFERRED",
    "HEARTBEATS_SENT",
    "HTTP_ERRORS",
    "HTTP_FAILURES",
    "HTTP_LATENCY_MS_COUNT",
    "HTTP_LATENCY_MS_LE",
    "HTTP_LATENCY_MS_SUM",
    "HTTP_REQUESTS",
    "HTTP_SENT",
    "HTTP_STATUS",
    "JOURNAL_RETRIES",
    "LATENCY_UNOBSERVED",
    "NOTIFICATIONS",
    "RATE_LIMITED",
    "RECEIVED",
    "RECONNECT_ATTEMPTS",
    "RECOVERIES_FAILED",
    "RECOVERIES_SUCCESSFUL",
    "REFRESHES",
    "RELOADS",
    "RELOADS_REFUSED",
    "RETRIES",
    "ROWS_READ_FROM_DISK",
    "SUBSCRIPTIONS",
    "SUBSCRIPTIONS_DELETED",
    "SUBSCRIPTION_LIMIT",
    "UNCOMMITTED_AT_STOP",
    "UNROUTED",
    "WSTOKENS",
]


# the receiving side and the journal (pipeline, journal, app)
RECEIVED: Final = "received"
BACKFILLED: Final = "backfilled"
COMMITTED: Final = "committed"
DUPLICATES: Final = "duplicates"
BACKFILL_DUPLICATES: Final = "backfill_duplicates"
UNROUTED: Final = "unrouted"
DELIVERED: Final = "delivered"
RETRIES: Final = "retries"
LATENCY_UNOBSERVED: Final = "latency_unobserved"
DEAD_LETTERS: Final = "dead_letters"
DROPPED_FULL: Final = "dropped_full"
DROPPED_REMOVED_SINK: Final = "dropped_removed_sink"
EXPIRED: Final = "expired"
COMPACTED: Final = "compacted"
FULL_WAITS: Final = "full_waits"
COMMIT_FAILURES: Final = "commit_failures"
JOURNAL_RETRIES: Final = "journal_retries"
ROWS_READ_FROM_DISK: Final = "rows_read_from_disk"
UNCOMMITTED_AT_STOP: Final = "uncommitted_at_stop"
RELOADS: Final = "reloads"
RELOADS_REFUSED: Final = "reloads_refused"

# the WebSocket session (session, supervisor)
FRAMES: Final = "frames"
FRAMES_MALFORMED: Final = "frames_malformed"
FRAMES_OVERSIZED: Final = "frames_oversized"
NOTIFICATIONS: Final = "notifications"
HEARTBEATS_SENT: Final = "heartbeats_sent"
HEARTBEATS_DEFERRED: Final = "heartbeats_deferred"
CONNECTIONS: Final = "connections"
SUBSCRIPTIONS: Final = "subscriptions"
SUBSCRIPTION_LIMIT: Final = "subscription_limit"
RECONNECT_ATTEMPTS: Final = "reconnect_attempts"
RECOVERIES_SUCCESSFUL: Final = "recoveries_successful"
RECOVERIES_FAILED: Final = "recoveries_failed"

# the platform's REST API (auth)
GRANTS: Final = "grants"
REFRESHES: Final = "refreshes"
WSTOKENS: Final = "wstokens"
RATE_LIMITED: Final = "rate_limited"
SUBSCRIPTIONS_DELETED: Final = "subscriptions_deleted"

# unrecovered gaps and the backfill (backfill, app)
GAPS_RECORDED: Final = "gaps_recorded"
GAPS_BACKFILLED: Final = "gaps_backfilled"
BACKFILL_PAGES: Final = "backfill_pages"
BACKFILL_READS: Final = "backfill_reads"
BACKFILL_RECORDS: Final = "backfill_records"
BACKFILL_SKIPPED: Final = "backfill_skipped"
BACKFILL_ERRORS: Final = "backfill_errors"
BACKFILL_RATE_LIMITED: Final = "backfill_rate_limited"
BACKFILL_PACED: Final = "backfill_paced"
BACKFILL_REFUSED: Final = "backfill_refused"
BACKFILL_OPTOUTS_REFUSED: Final = "backfill_optouts_refused"
BACKFILL_WINDOW_CUT: Final = "backfill_window_cut"

# the sinks' own (sinks/http.py, sinks/file.py)
HTTP_REQUESTS: Final = "http_requests"
HTTP_SENT: Final = "http_sent"
HTTP_FAILURES: Final = "http_failures"
HTTP_ERRORS: Final = "http_errors"
FILE_REOPENED: Final = "file_reopened"
FILE_TORN_TAILS: Final = "file_torn_tails"
#: + "_<n>xx.<sink>": a receiver's answers by class (``http_status_2xx.hook``)
HTTP_STATUS: Final = "http_status"
HTTP_LATENCY_MS_SUM: Final = "http_latency_ms_sum"
HTTP_LATENCY_MS_COUNT: Final = "http_latency_ms_count"
#: + "_<bound>.<sink>": a request-latency bucket (``http_latency_ms_le_250.hook``)
HTTP_LATENCY_MS_LE: Final = "http_latency_ms_le"
