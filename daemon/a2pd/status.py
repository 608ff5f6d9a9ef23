"""``a2pd status``: a running daemon's state, read from its ops endpoint's /status.

The endpoint is found from ``--url``, or from the config: the state directory's ``ops.json``
(written by the running daemon, so an ``[ops] listen`` port of 0 works too), else
``[ops] listen``. Exit codes: 0 ready, 1 running but not ready, 69 not reachable.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import httpx

from a2pd import config
from a2pd.admin import state_dir
from a2pd.errors import ConfigError, ConfigProblem, one_line

__all__ = [
    "EXIT_NOT_READY",
    "EXIT_UNAVAILABLE",
    "endpoint",
    "fetch",
    "render",
]

EXIT_NOT_READY = 1
EXIT_UNAVAILABLE = 69


def endpoint(config_path: str) -> str:
    """The base URL of the ops endpoint of the daemon that runs ``config_path`` (only
    [state] and [ops] are read: no secrets are needed to ask)."""
    ops_file = state_dir(config_path, None) / "ops.json"
    try:
        where = json.loads(ops_file.read_text())
        host, port = str(where["host"]), int(where["port"])
    except (OSError, ValueError, KeyError, TypeError):
        try:
            data = tomllib.loads(Path(config_path).read_text(encoding="utf-8"))
            ops = config.OpsConfig.model_validate(data.get("ops", {}))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, ValueError) as exc:
            raise ConfigError([ConfigProblem("ops", f"cannot read: {exc}")],
                              config_path) from None
        address = ops.address
        if address is None:
            raise ConfigError([ConfigProblem(
                "ops.listen", "the ops endpoint is off; a2pd status needs it")],
                config_path) from None
        host, port = address
    if host in ("0.0.0.0", "", "::"):  # noqa: S104 - a wildcard bind: ask over loopback
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def fetch(base_url: str) -> dict[str, Any]:
    """GET /status; raises ``httpx.HTTPError`` when the daemon is not reachable."""
    response = httpx.get(base_url.rstrip("/") + "/status", timeout=5.0, trust_env=False)
    response.raise_for_status()
    state: dict[str, Any] = response.json()
    return state


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _size(size: int | None) -> str:
    """`` (1.5 MiB)`` for a journal's bytes on disk; empty when the daemon did not say."""
    if size is None:
        return ""
    if size < 1024:
        return f" ({size} B)"
    value = float(size)
    units = ["KiB", "MiB", "GiB", "TiB"]
    value /= 1024
    while value >= 1024 and len(units) > 1:
        value /= 1024
        units.pop(0)
    return f" ({value:.1f} {units[0]})"


def render(state: dict[str, Any]) -> str:
    """A human-readable view of a /status document."""
    conn, journal = state["connection"], state["journal"]
    lines = [
        f"a2pd {state['version']} (pid {state['pid']}), up {_age(state['uptime_seconds'])}: "
        f"{state['state']}, {'ready' if state['ready'] else 'NOT READY'}",
        f"connection:  {'subscribed' if conn['subscribed'] else 'not subscribed'}"
        f" (subscription {conn['subscription_id'] or '-'}), {conn['connections']} connections,"
        f" recoveries {conn['recoveries_successful']} ok / {conn['recoveries_failed']} failed,"
        f" last event {_age(conn['last_event_age_seconds'])} ago",
        f"events:      {state['events_per_second']:.1f}/s; journal {journal['events']} events"
        f"{_size(journal.get('size_bytes'))}, oldest {_age(journal['oldest_age_seconds'])}",
        "sinks:",
    ]
    width = max((len(name) for name in state["sinks"]), default=4)
    for name, sink in sorted(state["sinks"].items()):
        busy = sink["busy_seconds"]
        health = "ok" if sink["ready"] else f"delivering one batch for {_age(busy)}: NOT READY"
        lines.append(f"  {name:<{width}}  {sink['type']:<6} backlog {sink['backlog']:<7}"
                     f" delivered {sink['delivered']:<9} retries {sink['retries']:<6}"
                     f" dead letters {sink['dead_letters']:<5} {health}")
    refused = (state.get("backfill") or {}).get("refused")
    if refused:
        lines.append(f"backfill:    REFUSED by the platform: {refused}; gaps are kept until "
                     "the app's A2P SMS permission is fixed and a2pd reloaded or restarted")
    if state["not_ready"]:
        lines.append("not ready: " + "; ".join(state["not_ready"]))
    if state["recent_problems"]:
        lines.append("recent problems:")
        for problem in state["recent_problems"]:
            extra = " ".join(f"{k}={v}" for k, v in problem.items()
                             if k not in ("timestamp", "level", "event", "component"))
            lines.append(f"  {problem.get('timestamp', '')} {problem.get('level', ''):<7} "
                         f"{problem.get('component', '')}: {problem.get('event', '')} {extra}"
                         .rstrip())
    # values can come from a receiver or a notification (a sink's error text): escaped, so
    # they cannot break lines or send escape sequences to the operator's terminal
    return "\n".join(one_line(line) for line in lines)
