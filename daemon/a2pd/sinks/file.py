"""The file sink: JSON lines appended to files under one base directory.

The file name comes from a template (``{kind}/{date}.jsonl``). Values substituted from event
fields are reduced to a safe character set first, and every final path is checked to lie
inside the base directory, so a hostile field (``../../etc``, an absolute path, NUL, a very
long string) can never write elsewhere.

fsync policy: ``never`` (hand the lines to the OS after each batch), ``interval`` (also
fsync when at least ``fsync_interval`` has passed since the last fsync, checked on each
write, in a background thread so no batch waits for it, and at close), ``always`` (fsync
after every batch, before it is acknowledged). With ``never`` and ``interval`` a batch is
handed to the OS from the event loop's thread (page cache: microseconds); with ``always``
the write and its fsync run in a worker thread. ``reopen()`` closes every file so the next
write opens the path afresh (logrotate's create/move).

A batch is written whole or not at all: writes are unbuffered, and when any part fails
(ENOSPC, EIO) every file the batch touched is cut back to its size before it, so the
pipeline's retry never writes a line twice. Before each batch a held file is checked (one
stat per file) to still be at its path: a file deleted or replaced behind the sink's back
is closed and the path opened afresh (``file_reopened``), never written unseen. A file that
ends in part of a record (a crash mid-write) is mended when opened.
"""

from __future__ import annotations

import errno
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

import anyio
from pydantic import BeforeValidator, Field, field_validator

from a2pd.errors import SinkError
from a2pd.events import Event, record_json
from a2pd.logging import get_logger
from a2pd.sinks import Sink, SinkContext, SinkOptions
from a2pd.sinks.files import OpenFile, OpenFiles
from a2pd.sinks.templates import check_template, fit_name, template_fields, template_values
from a2pd.vocab import Duration, LocalPath

__all__ = ["FileOptions", "FileSink"]

log = get_logger("sink.file")


def _template(value: object) -> object:
    return value.strip() if isinstance(value, str) else value


class FileOptions(SinkOptions):
    """Options of ``type = "file"``."""

    directory: LocalPath
    path: Annotated[str, BeforeValidator(_template)] = "{kind}/{date}.jsonl"
    fsync: Literal["never", "interval", "always"] = "interval"
    fsync_interval: Duration = 1.0
    max_open_files: int = Field(default=32, ge=1, le=4096)

    @field_validator("path")
    @classmethod
    def _check_template(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty")
        if value.startswith(("/", "\\")) or "\x00" in value:
            raise ValueError("must be a relative path inside 'directory'")
        check_template(value)
        if any(part in ("..", ".") for part in re.split(r"[/\\]", value)):
            raise ValueError("must not contain '.' or '..' segments")
        return value


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (a filling disk can take part of it, then refuse)."""
    view = memoryview(data)
    while view:
        done = os.write(fd, view)
        if done == 0:
            raise OSError(errno.EIO, "the write took nothing")
        view = view[done:]


class FileSink(Sink):
    """Appends each event as one JSON line to the file its template names."""

    type_name = "file"
    Options = FileOptions

    def __init__(self, name: str, options: FileOptions, context: SinkContext) -> None:
        super().__init__(name, options, context)
        self.base = Path(os.path.abspath(options.directory))
        self._fields = template_fields(options.path)
        #: relative path → checked absolute path (a handful per day; cleared when large)
        self._paths: dict[str, Path] = {}
        self._last_fsync = time.monotonic()
        self._held = OpenFiles(name, fsync=options.fsync, max_open=options.max_open_files,
                               base=self.base)

    @property
    def held(self) -> list[Path]:
        """The files it holds open, least recently used first."""
        return self._held.paths

    def wait_fsync(self) -> None:
        """Wait for the running "interval" fsync round, if any, to end."""
        self._held.join_background()

    def path_for(self, event: Event) -> Path:
        """Where ``event`` goes; raises ``SinkError`` (permanent) if it would leave the base."""
        key = self.options.path.format_map(
            template_values(event, names=self._fields)) if self._fields else self.options.path
        known = self._paths.get(key)
        if known is not None:
            return known
        # several values in one name can exceed NAME_MAX: ENAMETOOLONG would be retried for
        # ever and hold up every later event of this sink
        relative = "/".join(fit_name(part) for part in key.split("/"))
        candidate = Path(os.path.normpath(self.base / relative))
        if candidate == self.base or not candidate.is_relative_to(self.base):
            raise SinkError(f"path template gives {relative!r}, outside the base directory",
                            permanent=True)
        if len(self._paths) >= 4 * self.options.max_open_files:
            self._paths.clear()
        self._paths[key] = candidate
        return candidate

    async def send(self, batch: Sequence[Event]) -> None:
        grouped: dict[Path, list[bytes]] = {}
        for event in batch:
            lines = grouped.get(path := self.path_for(event))
            if lines is None:
                lines = grouped[path] = []
            lines.append(record_json(event))
        try:
            if self.options.fsync == "always":
                await anyio.to_thread.run_sync(self._write, grouped)  # waits for the disk
            else:
                # Handing a batch to the OS costs microseconds; a worker thread costs a GIL
                # hand-off per system call while the loop is busy (up to the 5 ms switch
                # interval each), which made delivery fall behind a burst.
                self._write(grouped)
        finally:
            counted, self._held.counts = self._held.counts, []
            for key in counted:
                self.counters.inc(key)

    def _write(self, grouped: dict[Path, list[bytes]]) -> None:
        with self._held.lock:
            self._write_locked(grouped)

    def _write_locked(self, grouped: dict[Path, list[bytes]]) -> None:
        """Write one batch: all of it, or nothing. On any failure every file the batch
        touched is cut back to its size before the batch (part of a write may have landed),
        so the retry writes each line once."""
        written: list[tuple[Path, OpenFile, int]] = []
        try:
            self._write_batch(grouped, written)
        except BaseException as exc:
            self._held.cut_back(written)
            if not isinstance(exc, OSError):
                raise
            # ENOSPC, EACCES, EIO: the operator can fix these, so they are retried, loudly
            raise SinkError(f"cannot write {exc.filename or 'file'}: {exc.strerror}") from exc

    def _write_batch(self, grouped: dict[Path, list[bytes]],
                     written: list[tuple[Path, OpenFile, int]]) -> None:
        """Write the lines of each file, noting in ``written`` each file opened for it (with
        its size before), then fsync as the policy says."""
        held = self._held
        held.check_background()
        held.make_room(grouped)
        for path, lines in grouped.items():
            file, size = held.open(path)
            written.append((path, file, size))
            lines.append(b"")  # the last line's newline
            try:
                _write_all(file.fd, b"\n".join(lines))
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, str(path)) from exc
            held.written(path)
        policy = self.options.fsync
        now = time.monotonic()
        if policy == "always":
            held.fsync_dirty()
            self._last_fsync = now
        elif policy == "interval" and now - self._last_fsync >= self.options.fsync_interval:
            held.fsync_in_background()
            self._last_fsync = now

    async def reopen(self) -> None:
        await anyio.to_thread.run_sync(self._held.close_all)

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self._held.close_all)

    def __repr__(self) -> str:
        return f"FileSink({self.name!r}, base={str(self.base)!r})"
