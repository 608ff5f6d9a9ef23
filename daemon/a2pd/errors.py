"""One exception tree for a2pd, and the exit codes a process supervisor understands.

    A2pdError
    ├── ConfigError            bad configuration: exit 78 (EX_CONFIG), never restarted
    ├── FatalPlatformError     the platform refuses us for good (credentials, permission): exit 77
    ├── PlatformError          a transient platform/network fault: retried with backoff
    │   ├── RateLimited        HTTP 429 / CMN-301: wait ``retry_after`` seconds
    │   ├── SubscriptionLimit  403 SUB-505: delete our stale subscriptions, then retry
    │   └── ConnectionLost     the WebSocket ended (close, error frame, dead socket)
    ├── ProtocolError          a frame or notification we cannot decode (dead-lettered, not raised
    │                          out of the receive loop)
    ├── JournalError           the journal cannot be used: exit 74 (EX_IOERR); ``transient``
    │                          (a full disk, a lock held elsewhere) is retried instead
    ├── StateDirInUse          another a2pd holds the state directory: exit 74
    └── SinkError              a sink could not deliver; ``permanent`` decides retry vs dead letter

Foreign exceptions (httpx, websockets, OSError) are translated once at the edge with
``raise ... from exc``; code that handles these reads their fields, never their messages.
No exception message may contain a secret.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "EXIT_CONFIG",
    "EXIT_CRASH",
    "EXIT_IOERR",
    "EXIT_NOPERM",
    "EXIT_OK",
    "A2pdError",
    "ConfigError",
    "ConfigProblem",
    "ConnectionLost",
    "FatalPlatformError",
    "JournalError",
    "PlatformError",
    "ProtocolError",
    "RateLimited",
    "SinkError",
    "StateDirInUse",
    "SubscriptionLimit",
    "one_line",
]

EXIT_OK = 0
EXIT_CRASH = 1
EXIT_IOERR = 74  # EX_IOERR: the journal cannot be used (disk full, corrupt, locked)
EXIT_NOPERM = 77  # EX_NOPERM: credentials or permissions refused by the platform
EXIT_CONFIG = 78  # EX_CONFIG: the unit's RestartPreventExitStatus


class A2pdError(Exception):
    """Root of every error a2pd raises on purpose."""


class ConfigProblem:
    """One problem in a configuration: where (dotted key path) and why."""

    __slots__ = ("key", "reason")

    def __init__(self, key: str, reason: str) -> None:
        # one line each, whatever a hostile file put in a key or a message
        self.key = one_line(key)
        self.reason = one_line(reason)

    def __str__(self) -> str:
        return f"{self.key}: {self.reason}" if self.key else self.reason

    def __repr__(self) -> str:
        return f"ConfigProblem({self.key!r}, {self.reason!r})"


def one_line(text: str) -> str:
    """``text`` with control characters and line separators escaped (``\\n``, ``\\x00``)."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


class ConfigError(A2pdError):
    """The configuration is unusable; ``problems`` lists every key at fault."""

    exit_code = EXIT_CONFIG

    def __init__(self, problems: list[ConfigProblem], source: str = "") -> None:
        self.problems = problems
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(where + "; ".join(str(p) for p in problems))


class _PlatformAnswer(A2pdError):
    """Something the platform said: a reason, and the HTTP status and error code if any."""

    def __init__(self, reason: str, *, status: int | None = None, code: str | None = None) -> None:
        self.reason = reason
        self.status = status
        self.code = code
        parts = [reason]
        if status is not None:
            parts.append(f"HTTP {status}")
        if code:
            parts.append(code)
        super().__init__(" / ".join(parts))


class FatalPlatformError(_PlatformAnswer):
    """The platform refused our credentials or permissions; retrying cannot help."""

    exit_code = EXIT_NOPERM


class PlatformError(_PlatformAnswer):
    """A transient failure talking to the platform; the supervisor retries with backoff."""


class RateLimited(PlatformError):
    """HTTP 429: the platform asks us to wait ``retry_after`` seconds."""

    def __init__(
        self, reason: str, *, retry_after: float, status: int = 429, code: str | None = None
    ) -> None:
        super().__init__(reason, status=status, code=code)
        self.retry_after = retry_after


class SubscriptionLimit(PlatformError):
    """403 ``SUB-505``: the user and app hold as many subscriptions as the platform allows."""


class ConnectionLost(PlatformError):
    """The WebSocket session ended; ``recoverable``: is ``wsc`` recovery worth trying."""

    def __init__(
        self, reason: str, *, code: str | None = None, recoverable: bool = True
    ) -> None:
        super().__init__(reason, code=code)
        self.recoverable = recoverable


class ProtocolError(A2pdError):
    """A frame or notification that does not decode; carries the raw bytes for the dead letter."""

    def __init__(self, reason: str, raw: bytes) -> None:
        super().__init__(reason)
        self.reason = reason
        self.raw = raw


class JournalError(A2pdError):
    """The journal cannot be opened or written (corrupt, locked, disk full, unwritable)."""

    exit_code = EXIT_IOERR

    def __init__(self, reason: str, path: Path, *, transient: bool = False) -> None:
        super().__init__(f"{path}: {reason}")
        self.reason = reason
        self.path = path
        #: disk full or a lock held elsewhere: retrying later can succeed
        self.transient = transient


class StateDirInUse(A2pdError):
    """Another a2pd runs with this state directory (two would share one session and journal:
    both reconnect in turn and deliver the same events twice)."""

    exit_code = EXIT_IOERR


class SinkError(A2pdError):
    """A sink failed to deliver. Permanent failures are dead-lettered; others are retried."""

    def __init__(self, reason: str, *, permanent: bool = False,
                 retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        #: the receiver asked us to wait this long before trying again (HTTP Retry-After)
        self.retry_after = retry_after
