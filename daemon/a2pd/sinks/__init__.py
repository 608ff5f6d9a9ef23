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
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

from a2pd.events import Event
from a2pd.observe import Counters
from a2pd.vocab import Secret, StrictModel, redact_url

__all__ = [
    "ENTRY_POINT_GROUP",
    "RetryPolicy",
    "Secret",
    "Sink",
    "SinkContext",
    "SinkOptions",
    "UnknownSinkType",
    "redact_url",
    "sink_class",
    "sink_types",
]

ENTRY_POINT_GROUP = "a2pd.sinks"

_BUILTINS = {
    "stdout": "a2pd.sinks.stdout:StdoutSink",
    "file": "a2pd.sinks.file:FileSink",
    "http": "a2pd.sinks.http:HttpSink",
    "redis": "a2pd.sinks.redis:RedisSink",
    "postgres": "a2pd.sinks.postgres:PostgresSink",
}


class SinkOptions(StrictModel):
    """Base for a sink type's options: unknown keys are configuration errors, ``true`` is
    not a number. A secret option is typed ``Secret``: a string, or a table naming where it
    is (``{ env = "VAR" }``, ``{ file = "/abs/path" }``, ``{ credential = "name" }``)."""


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
        raise UnknownSinkType(f"sink type {type_name!r} does not name an a2pd.sinks.Sink class")
    return cls
