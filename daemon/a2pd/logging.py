"""structlog set-up: JSON lines when stderr is not a terminal (systemd/journald), a readable
console format on a terminal. Logs go to stderr; stdout belongs to the stdout sink.

Secrets must never be passed to a logger. As a second line of defence every value a2pd
registers with ``register_secret`` (client secret, JWT, tokens) is masked in any log line
that would carry it anyway.
"""

from __future__ import annotations

import logging as std_logging
import os
import re
import sys
from collections import deque
from collections.abc import Mapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, WrappedLogger

__all__ = [
    "MASK",
    "ROTATING_KEEP",
    "VOLATILE",
    "configure",
    "get_logger",
    "mask_secrets",
    "print_error",
    "recent_problems",
    "register_secret",
    "remember_problems",
    "scrub",
    "to_journald",
]

_LEVELS = {"debug": std_logging.DEBUG, "info": std_logging.INFO,
           "warning": std_logging.WARNING, "error": std_logging.ERROR}

# long-lived secrets (client secret, JWT, sink credentials) are kept for the life of the
# process; rotating tokens per kind ("token": access/refresh, "wstoken", "wsc"), each kind
# bounded on its own, so a flood of one kind (a new wsc with every notification) can never
# push out a token of another kind that is still in use
_permanent: list[str] = []
_rotating: dict[str, deque[str]] = {}
ROTATING_KEEP = 64
MASK = "***"
_pattern: re.Pattern[str] | None = None
_pattern_bytes: re.Pattern[bytes] | None = None


def register_secret(value: str | None, *, permanent: bool = False, kind: str = "token") -> None:
    """Mask ``value`` wherever it would appear in a log line (short values are ignored).
    ``permanent`` for credentials that never rotate (never evicted); otherwise the newest
    ``ROTATING_KEEP`` of each ``kind`` are kept."""
    global _pattern, _pattern_bytes
    if not value or len(value) < 6 or value in _permanent:
        return
    if permanent:
        for recent in _rotating.values():
            if value in recent:
                recent.remove(value)
        _permanent.append(value)
    else:
        recent = _rotating.setdefault(kind, deque(maxlen=ROTATING_KEEP))
        if value in recent:
            return
        recent.append(value)
        if kind in VOLATILE:
            return  # checked one by one: recompiling for each would cost far more
    _pattern = _pattern_bytes = None


#: kinds that change with nearly every notification (a new wsc): kept out of the compiled
#: pattern and matched with plain substring checks
VOLATILE = frozenset({"wsc"})


def _stable_secrets() -> list[str]:
    return [*_permanent, *(s for kind, recent in _rotating.items() if kind not in VOLATILE
                           for s in recent)]


def _volatile_secrets() -> list[str]:
    return [s for kind in VOLATILE for s in _rotating.get(kind, ())]


def _patterns() -> tuple[re.Pattern[str], re.Pattern[bytes]] | None:
    """One alternation of every secret, longest first (a secret inside another is masked
    with it), compiled once per change: masking costs one scan, however many are known."""
    global _pattern, _pattern_bytes
    if _pattern is None or _pattern_bytes is None:
        known = sorted(set(_stable_secrets()), key=len, reverse=True)
        if not known:
            return None
        _pattern = re.compile("|".join(re.escape(s) for s in known))
        _pattern_bytes = re.compile(b"|".join(re.escape(s.encode()) for s in known))
    return _pattern, _pattern_bytes


def _mask(value: Any) -> Any:
    if isinstance(value, str):
        patterns = _patterns()
        if patterns:
            value = patterns[0].sub(MASK, value)
        for secret in _volatile_secrets():
            if secret in value:
                value = value.replace(secret, MASK)
        return value
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_mask(v) for v in value)
    if isinstance(value, BaseException):
        return _mask(repr(value))
    return value


def scrub(raw: bytes) -> bytes:
    """``raw`` with every registered secret replaced by ``***`` (for bytes written to disk)."""
    patterns = _patterns()
    if patterns:
        raw = patterns[1].sub(MASK.encode(), raw)
    for secret in _volatile_secrets():
        encoded = secret.encode()
        if encoded in raw:
            raw = raw.replace(encoded, MASK.encode())
    return raw


def mask_secrets(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: replace registered secrets with ``***``."""
    if _patterns() is None and not _volatile_secrets():
        return event_dict
    return {k: _mask(v) for k, v in event_dict.items()}


#: the latest warnings and errors (masked), for `a2pd status` and /status
_recent: deque[dict[str, Any]] = deque(maxlen=50)
_PROBLEM_LEVELS = frozenset({"warning", "error", "critical"})


def remember_problems(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: keep recent warnings and errors (after masking)."""
    if event_dict.get("level") in _PROBLEM_LEVELS:
        _recent.append({k: v if isinstance(v, str | int | float | bool | None) else repr(v)
                        for k, v in event_dict.items()})
    return event_dict


def recent_problems() -> list[dict[str, Any]]:
    """The latest warnings and errors logged by this process, oldest first."""
    return list(_recent)


#: syslog priorities (sd-daemon(3)): journald reads a ``<N>`` prefix as the line's priority
_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}


def to_journald(stream: TextIO, env: Mapping[str, str] | None = None) -> bool:
    """Whether ``stream`` is connected to journald: systemd sets ``$JOURNAL_STREAM`` to the
    device and inode of the stream it gave the service (systemd.exec(5))."""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        st = os.fstat(stream.fileno())
        return bool(inode) and (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (OSError, ValueError, AttributeError):
        return False


def print_error(text: str, stream: TextIO | None = None) -> None:
    """Print a line of a command's error output, with journald's error priority when stderr
    is the journal (``a2pd: stopped: ...`` from the service shows in ``journalctl -p err``)."""
    out = stream if stream is not None else sys.stderr
    prefix = f"<{_PRIORITY['error']}>" if to_journald(out) else ""
    print(f"{prefix}{text}", file=out)


def _with_priority(render: Any) -> Any:
    """A renderer whose line starts with the event's syslog priority, ``<4>{...}``."""
    def renderer(logger: WrappedLogger, name: str, event_dict: EventDict) -> Any:
        priority = _PRIORITY.get(str(event_dict.get("level", "info")), 6)
        return f"<{priority}>{render(logger, name, event_dict)}"
    return renderer


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Set up structlog for the whole process. ``fmt``: auto | json | console. Under systemd
    each line carries its priority for journald (``journalctl -p warning``); colours only on
    a terminal and never with ``$NO_COLOR`` set (no-color.org)."""
    out = stream if stream is not None else sys.stderr
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        mask_secrets,
        remember_problems,
    ]
    colors = out.isatty() and not os.environ.get("NO_COLOR")
    render: Any = (structlog.dev.ConsoleRenderer(colors=colors) if console
                   else structlog.processors.JSONRenderer())
    processors.append(_with_priority(render) if to_journald(out) else render)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    """A logger carrying ``component=name``. It stays lazy (module-level loggers are created at
    import, before ``configure``): it is built from the configuration in force when used."""
    return structlog.get_logger(component=name)
