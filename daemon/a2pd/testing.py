"""Help for testing with a2pd: a sink that keeps what it is sent, for plug-in authors' tests
and a2pd's own.

    from a2pd.testing import CollectingSink

    sink = CollectingSink("out")
    sink.fail_transient = 2          # the next two sends fail (retried by the pipeline)
    sink.reject.add(uuid)            # a batch holding it is refused for good (dead letter)
    sink.stuck.add(uuid)             # a batch holding it fails transiently, for ever
    ...
    assert sink.got == [...uuids delivered, in order...]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anyio

from a2pd.errors import SinkError
from a2pd.events import Event
from a2pd.sinks import Sink, SinkContext

__all__ = ["CollectingSink"]


class CollectingSink(Sink):
    """A real sink (the pipeline drives it like any other) that keeps the uuids of what it
    was sent, in order, and fails when told to."""

    type_name = "collecting"

    def __init__(self, name: str, context: SinkContext | None = None) -> None:
        super().__init__(name, None, context or SinkContext(Path(".")))
        #: uuids delivered, in order
        self.got: list[str] = []
        #: the events delivered, in order
        self.events: list[Event] = []
        #: this many sends fail transiently from now on (``recovered`` is set after)
        self.fail_transient = 0
        self.recovered = anyio.Event()
        #: a batch holding one of these is refused for good
        self.reject: set[str] = set()
        #: a batch holding one of these fails transiently (after the permanent check)
        self.stuck: set[str] = set()

    async def send(self, batch: Sequence[Event]) -> None:
        if self.fail_transient > 0:
            self.fail_transient -= 1
            if self.fail_transient == 0:
                self.recovered.set()
            raise SinkError("temporarily down")
        bad = [e.uuid for e in batch if e.uuid in self.reject]
        if bad:
            raise SinkError(f"refused {bad[0]}", permanent=True)
        if any(e.uuid in self.stuck for e in batch):
            raise SinkError("stuck")
        self.got.extend(e.uuid for e in batch)
        self.events.extend(batch)
