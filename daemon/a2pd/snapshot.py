"""What the daemon says about itself: the /status document (which /metrics and /readyz read
too), systemd's one STATUS= line, and the event rate both show. From memory only (the
journal's size is two ``stat`` calls)."""

from __future__ import annotations

import os
import time
from collections import deque
from typing import Any, Protocol

import anyio

from a2pd import __version__, counts
from a2pd.config import Settings
from a2pd.logging import recent_problems
from a2pd.observe import Counters, Histogram
from a2pd.parts import Parts
from a2pd.session import SessionState

__all__ = ["Rates", "Reported", "Reporter", "build", "received_total", "state_of",
           "status_line"]


def received_total(counters: Counters) -> int:
    """Live events received so far."""
    return sum(counters.snapshot(f"{counts.RECEIVED}.").values())


class Rates:
    """Samples of the received total, for the event rate over the last minute or so."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int]] = deque(maxlen=64)

    def sample(self, now: float, total: int) -> None:
        self._samples.append((now, total))

    def rate(self, now: float, total: int) -> float:
        """Events per second since the oldest sample of the last minute."""
        older = [(t, n) for t, n in self._samples if now - t <= 60.0]
        if not older or now - older[0][0] <= 0:
            return 0.0
        return (total - older[0][1]) / (now - older[0][0])


class Reported(Protocol):
    """What a ``Reporter`` reads of its daemon, each time it is asked."""

    settings: Settings
    stopping: bool
    started_at: float

    @property
    def built(self) -> Parts | None: ...


class Reporter:
    """What one daemon says about itself: the /status document, the STATUS= line, the
    event rate and the delivery latency histograms, read from the daemon when asked."""

    def __init__(self, daemon: Reported) -> None:
        self._daemon = daemon
        self._rates = Rates()

    def _received(self) -> int:
        parts = self._daemon.built
        return received_total(parts.pipeline.counters) if parts is not None else 0

    def sample_rate(self) -> None:
        """Note the received total now (called every few seconds)."""
        self._rates.sample(anyio.current_time(), self._received())

    def event_rate(self) -> float:
        """Events received per second over the last minute or so."""
        return self._rates.rate(anyio.current_time(), self._received())

    def status_line(self) -> str:
        """One line for `systemctl status`."""
        daemon, parts = self._daemon, self._daemon.built
        session = parts.supervisor.state if parts is not None else None
        backlog = sum(parts.pipeline.backlog().values()) if parts is not None else 0
        return status_line(state_of(daemon.stopping, session), self.event_rate(), backlog)

    def delivery_latency(self) -> dict[str, Histogram]:
        """Per sink, the delivery latency so far (/metrics)."""
        parts = self._daemon.built
        return parts.pipeline.delivery_latency if parts is not None else {}

    def snapshot(self) -> dict[str, Any]:
        """Everything /status, /metrics and /readyz report."""
        daemon = self._daemon
        return build(daemon.settings, daemon.built, now=anyio.current_time(),
                     started_at=daemon.started_at, stopping=daemon.stopping,
                     rate=self.event_rate())


def state_of(stopping: bool, session: SessionState | None) -> str:
    """``stopping``, ``subscribed``, ``connected, subscribing`` or ``connecting``."""
    if stopping:
        return "stopping"
    if session is not None and session.subscribed:
        return "subscribed"
    if session is not None and session.connected:
        return "connected, subscribing"
    return "connecting"


def status_line(state: str, rate: float, backlog: int) -> str:
    """One line for `systemctl status`."""
    return f"{state}; {rate:.1f} events/s; backlog {backlog}"


def build(settings: Settings, parts: Parts | None, *, now: float, started_at: float,
          stopping: bool, rate: float) -> dict[str, Any]:
    """The /status document; ``parts`` None before the run has built them."""
    counters: dict[str, int] = {}
    session = parts.supervisor.state if parts else None
    if parts is not None:
        counters.update(parts.pipeline.counters.snapshot())
        counters.update(parts.supervisor.state.counters.snapshot())
        counters.update(parts.auth.counters.snapshot())
    connected = bool(session and session.connected)
    subscribed = bool(session and session.subscribed)
    budget = settings.ops.ready_max_lag
    not_ready: list[str] = []
    if stopping:
        not_ready.append("stopping")
    if not subscribed:
        not_ready.append("the WebSocket subscription is not active")
    journal = parts.journal if parts else None
    if journal is not None and journal.failing is not None:
        not_ready.append(f"journal commits are failing ({journal.failing}); "
                         "nothing more is read until one succeeds")
    if journal is not None and journal.dead is not None:
        not_ready.append(f"the journal is unusable ({journal.dead.reason})")
    sinks: dict[str, Any] = {}
    pipeline = parts.pipeline if parts else None
    backlog = pipeline.backlog() if pipeline else {}
    busy_since = pipeline.delivery.busy_since() if pipeline else {}
    for name, sink in (parts.sinks if parts else {}).items():
        since = busy_since.get(name)
        busy = now - since if since is not None else None
        ready = busy is None or busy <= budget
        if not ready:
            not_ready.append(f"sink {name} has been delivering one batch for "
                             f"{busy:.0f}s (budget {budget:g}s)")
        sinks[name] = {"type": sink.type_name, "backlog": backlog.get(name, 0),
                       "busy_seconds": busy, "ready": ready,
                       "delivered": counters.get(f"{counts.DELIVERED}.{name}", 0),
                       "retries": counters.get(f"{counts.RETRIES}.{name}", 0),
                       "dead_letters": counters.get(f"{counts.DEAD_LETTERS}.{name}", 0)}
    oldest = journal.oldest_received if journal else None
    last_event = pipeline.last_event_at if pipeline else None
    return {
        "version": __version__,
        "pid": os.getpid(),
        "uptime_seconds": now - started_at,
        "state": state_of(stopping, session),
        "ready": not not_ready,
        "not_ready": not_ready,
        "connection": {
            "connected": connected,
            "subscribed": subscribed,
            "subscription_id": session.subscription_id if session else None,
            "connections": counters.get(counts.CONNECTIONS, 0),
            "recoveries_successful": counters.get(counts.RECOVERIES_SUCCESSFUL, 0),
            "recoveries_failed": counters.get(counts.RECOVERIES_FAILED, 0),
            "last_event_age_seconds": now - last_event if last_event else None,
        },
        "events_per_second": round(rate, 3),
        "journal": {
            "events": journal.depth if journal else 0,
            "last_seq": journal.last_seq if journal else 0,
            "commits_failing": journal.failing if journal else None,
            "oldest_age_seconds": time.time() - oldest if oldest else None,
            "size_bytes": journal.size_bytes() if journal else 0,
            "limit_events": settings.journal.max_events,
            "limit_age_seconds": settings.journal.max_age or None,
        },
        "sinks": sinks,
        "backfill": None if parts is None or parts.backfill is None
        else {"refused": parts.backfill.refused},
        "counters": counters,
        "recent_problems": recent_problems()[-10:],
    }
