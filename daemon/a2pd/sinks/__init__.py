"""The sink interface and the registry of sink types.

A sink is a small async resource: ``send(batch)`` delivers events in order and returns only
once they are written (or raises ``SinkError``; ``permanent=True`` means retrying cannot help
and the events go to the dead letters), ``aclose()`` flushes and releases everything, and
``reopen()`` (optional; a no-op by default) reopens files after log rotation.

A sink may set ``retry`` (a ``RetryPolicy``) to replace the ``[delivery]`` retry settings for
itself, and ``linger`` (seconds) to let the pipeline wait that long for a fuller batch.

Sink types come from two places: the built-ins below and any installed package that declares
an entry point in the group ``a2pd.sinks`` whose object is a ``Sink`` subclass. Each sink type
has an ``Options`` pydantic model; the ``[sinks.NAME]`` table of the config (minus ``type``) is
validated against it, with unknown keys refused.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any, ClassVar
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    SecretStr,
    ValidationInfo,
    model_validator,
)

from a2pd.events import Event
from a2pd.observe import Counters

ENTRY_POINT_GROUP = "a2pd.sinks"

_BUILTINS = {
    "stdout": "a2pd.sinks.stdout:StdoutSink",
    "file": "a2pd.sinks.file:FileSink",
    "http": "a2pd.sinks.http:HttpSink",
    "redis": "a2pd.sinks.redis:RedisSink",
}


def _resolve_secret(value: Any, info: ValidationInfo) -> Any:
    """A secret option: a string, or a table naming exactly one source — ``{ env = "VAR" }``,
    ``{ file = "/abs/path" }`` or ``{ credential = "name" }`` (a systemd credential in
    $CREDENTIALS_DIRECTORY). Errors name the source, never the value."""
    if not isinstance(value, dict):
        return value
    context = info.context if isinstance(info.context, dict) else {}
    env: Mapping[str, str] = context.get("env", os.environ)
    unknown = set(value) - {"env", "file", "credential"}
    if unknown or len(value) != 1:
        raise ValueError("give a string or exactly one of env, file, credential")
    [(source, where)] = value.items()
    if not isinstance(where, str) or not where:
        raise ValueError(f"{source} must be a non-empty string")
    if source == "file" and not Path(where).is_absolute():
        raise ValueError(f"{where} must be an absolute path")
    if not secrets_wanted(info):
        return UNREAD_SECRET
    if source == "env":
        text = env.get(where)
        if text is None:
            raise ValueError(f"${where} is not set")
        if not text.strip():
            raise ValueError(f"${where} is set but empty")
        return text.strip()
    if source == "file":
        path = Path(where)
    else:
        cred_dir = env.get("CREDENTIALS_DIRECTORY")
        if not cred_dir:
            raise ValueError("$CREDENTIALS_DIRECTORY is not set (systemd LoadCredential=)")
        path = Path(cred_dir) / where
    return read_secret_file(path)


#: what a secret option holds when the config is checked without its secrets
UNREAD_SECRET = "(not read: a2pd validate --no-secrets)"  # noqa: S105 - a placeholder


def secrets_wanted(info: ValidationInfo) -> bool:
    """False when the config is being checked without reading its secrets
    (``a2pd validate --no-secrets``): an Options model then leaves its secrets unread."""
    context = info.context if isinstance(info.context, Mapping) else {}
    return context.get("secrets", True) is not False


#: a secret file larger than this is refused unread (a path to /dev/zero, a log file)
MAX_SECRET_FILE = 64 * 1024


def read_secret_file(path: Path) -> str:
    """A secret kept in a file, stripped; ``ValueError`` naming the path (never the value).
    Files over ``MAX_SECRET_FILE`` bytes are refused without reading the rest. The one
    reader of secret files: the platform's secrets and every sink's."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_SECRET_FILE + 1)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or 'error'}") from None
    if len(data) > MAX_SECRET_FILE:
        raise ValueError(f"{path} is larger than {MAX_SECRET_FILE} bytes")
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    if not text:
        raise ValueError(f"{path} is empty")
    return text


def redact_url(url: str) -> str:
    """``url`` without user info or query (either may carry a credential), for logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


#: a secret sink option (tokens, passwords, signing keys): inline or from env/file/credential
Secret = Annotated[SecretStr, BeforeValidator(_resolve_secret)]


def refuse_bool_numbers(model: type[BaseModel], data: Any) -> Any:
    """``data`` with ``true``/``false`` given for a number turned into text, so validation
    reports that key as not a number (pydantic's lax mode would read ``true`` as 1)."""
    if not isinstance(data, dict):
        return data
    fields = model.model_fields
    return {key: str(value).lower()
            if isinstance(value, bool) and key in fields
            and fields[key].annotation in (int, float) else value
            for key, value in data.items()}


class SinkOptions(BaseModel):
    """Base for a sink type's options: unknown keys are configuration errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, data: Any) -> Any:
        return refuse_bool_numbers(cls, data)


@dataclass(frozen=True, slots=True)
class SinkContext:
    """What the daemon gives every sink it builds."""

    state_dir: Path
    #: the daemon's counters (sinks add their own, named ``<metric>.<sink name>``)
    counters: Counters = field(default_factory=Counters)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How the pipeline retries a sink's transient failures: capped exponential backoff with
    full jitter, a floor from the receiver's Retry-After (itself capped), and optional caps on
    attempts and elapsed time after which the events are dead-lettered (0: no cap)."""

    initial: float = 0.5
    maximum: float = 30.0
    max_attempts: int = 0
    max_elapsed: float = 0.0
    retry_after_max: float = 300.0


class Sink:
    """Base class of every sink. Subclasses set ``type_name`` and ``Options``."""

    type_name: ClassVar[str] = ""
    Options: ClassVar[type[SinkOptions]] = SinkOptions
    #: replaces the [delivery] retry settings for this sink when set
    retry: RetryPolicy | None = None
    #: seconds the pipeline may wait for more events before a batch that is not full
    linger: float = 0.0

    def __init__(self, name: str, options: Any, context: SinkContext) -> None:
        self.name = name
        self.options = options
        self.context = context
        #: the daemon's counters; a sink's own are named ``<metric>.<sink name>``
        self.counters = context.counters

    async def send(self, batch: Sequence[Event]) -> None:
        """Deliver ``batch`` in order; raise ``SinkError`` if any of it was not delivered."""
        raise NotImplementedError

    def accepted(self, uuid: str) -> bool:
        """True if this sink knows the event already reached its destination (a sink that
        delivers a batch piecemeal can say so; the pipeline then never dead-letters it)."""
        return False

    def adopt(self, previous: Sink) -> None:
        """Take over what ``previous`` (the sink this one replaces on reload) knew."""

    async def reopen(self) -> None:
        """Reopen output files (after logrotate); nothing to do for most sinks."""

    async def aclose(self) -> None:
        """Flush and release resources. Called once; the sink is not used afterwards."""


class UnknownSinkType(LookupError):
    """No built-in or entry-point sink has this type name."""


def sink_types() -> dict[str, str]:
    """Every known sink type name → where it comes from (``module:attr``)."""
    found = dict(_BUILTINS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def sink_class(type_name: str) -> type[Sink]:
    """Load the sink class registered under ``type_name``."""
    target = _BUILTINS.get(type_name)
    if target is not None:
        module_name, _, attr = target.partition(":")
        cls = getattr(importlib.import_module(module_name), attr)
    else:
        matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == type_name]
        if not matches:
            known = ", ".join(sorted(sink_types()))
            raise UnknownSinkType(f"unknown sink type {type_name!r} (known: {known})")
        cls = matches[0].load()
    if not (isinstance(cls, type) and issubclass(cls, Sink)):
        raise UnknownSinkType(f"sink type {type_name!r} does not name a daemon.sinks.Sink class")
    return cls
