"""The stdout sink: one JSON line per event, or one readable line per event on a terminal."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Literal, TextIO

from a2pd.errors import SinkError, one_line
from a2pd.events import BatchEvent, Event, MessageEvent, OptOutEvent, to_json
from a2pd.sinks import Sink, SinkContext, SinkOptions

__all__ = [
    "StdoutOptions",
    "StdoutSink",
    "describe",
]


class StdoutOptions(SinkOptions):
    """``format``: json (JSON lines), text (one readable line), auto (text on a terminal)."""

    format: Literal["auto", "json", "text"] = "auto"


def describe(event: Event) -> str:
    """A one-line, human-readable summary of an event. Sender-controlled text (statuses,
    ids, the event path) is shown with control characters escaped: a notification cannot
    break the line or send escape sequences to the operator's terminal."""
    return one_line(_describe(event))


def _describe(event: Event) -> str:
    when = event.time
    stamp = when.isoformat(timespec="seconds") if when else "-"
    head = f"{stamp} {event.kind:<8}"
    if isinstance(event, MessageEvent):
        m = event.body
        to = ",".join(m.to)
        extra = f" error={m.error_code}" if m.error_code else ""
        batch = f" batch={m.batch_id}" if m.batch_id else ""
        return f"{head} {m.message_status:<14} {m.from_} -> {to} id={m.id}{batch}{extra}"
    if isinstance(event, BatchEvent):
        b = event.body
        progress = f"{b.processed_count}/{b.batch_size}" if b.batch_size is not None else "?"
        cost = f" cost={b.cost}" if b.cost is not None else ""
        return f"{head} {b.status:<14} batch={b.id} from={b.from_} processed={progress}{cost}"
    if isinstance(event, OptOutEvent):
        o = event.body
        return f"{head} {'opted out' if o.active else 'opted in':<14} {o.to} from {o.from_}"
    return f"{head} {event.event} uuid={event.uuid}"


class StdoutSink(Sink):
    """Writes each event to standard output and flushes after every batch."""

    type_name = "stdout"
    Options = StdoutOptions

    def __init__(self, name: str, options: StdoutOptions, context: SinkContext,
                 stream: TextIO | None = None) -> None:
        super().__init__(name, options, context)
        self._stream = stream
        self._text: bool | None = None

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stdout

    async def send(self, batch: Sequence[Event]) -> None:
        stream = self.stream
        if self._text is None:
            fmt = self.options.format
            self._text = fmt == "text" or (fmt == "auto" and stream.isatty())
        render = describe if self._text else to_json
        try:
            stream.write("".join(render(event) + "\n" for event in batch))
            stream.flush()
        except BrokenPipeError as exc:
            raise SinkError("stdout is closed (broken pipe)", permanent=False) from exc
        except OSError as exc:
            raise SinkError(f"cannot write to stdout: {exc.strerror}") from exc
