"""The file sink: JSON lines appended to files under one base directory.

The file name comes from a template (``{kind}/{date}.jsonl``). Values substituted from event
fields are reduced to a safe character set first, and every final path is checked to lie
inside the base directory, so a hostile field (``../../etc``, an absolute path, NUL, a very
long string) can never write elsewhere.

fsync policy: ``never`` (flush to the OS after each batch), ``interval`` (also fsync when at
least ``fsync_interval`` has passed since the last fsync, checked on each write, in a
background thread so no batch waits for it, and at close), ``always`` (fsync after every
batch, before it is acknowledged). With ``never`` and ``interval`` a batch is handed to the
OS from the event loop's thread (page cache: microseconds); with ``always`` the write and
its fsync run in a worker thread. ``reopen()`` closes every file so the next
write opens the path afresh (logrotate's create/move).
"""

from __future__ import annotations

import hashlib
import os
import re
import string
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Annotated, Literal

import anyio
from pydantic import BeforeValidator, Field, field_validator

from daemon.config import Duration, LocalPath
from daemon.errors import SinkError
from daemon.events import RECORD_START, Event, field_values, record_json
from daemon.logging import get_logger
from daemon.sinks import Sink, SinkContext, SinkOptions

log = get_logger("sink.file")

TEMPLATE_FIELDS = ("kind", "date", "hour", "month", "year", "from", "to", "batchId",
                   "direction", "status", "subscriptionId", "ownerId")
_SAFE = re.compile(r"[^A-Za-z0-9+._-]")
_MAX_COMPONENT = 100
#: NAME_MAX on Linux filesystems; a longer name is ENAMETOOLONG, which a retry cannot fix
_MAX_NAME_BYTES = 255


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


def check_template(value: str) -> None:
    """A ``{field}`` template (file paths, stream names) names only known fields, plainly;
    ``ValueError`` otherwise."""
    try:
        parsed = list(string.Formatter().parse(value))
    except ValueError as exc:
        raise ValueError(f"bad template: {exc}") from None
    for _literal, name, spec, conv in parsed:
        if name is None:
            continue
        if name not in TEMPLATE_FIELDS:
            raise ValueError(f"unknown field {{{name}}} (known: {', '.join(TEMPLATE_FIELDS)})")
        if spec or conv:
            raise ValueError(f"{{{name}}} takes no format spec or conversion")


def safe_component(value: str) -> str:
    """Make one substituted value safe as (part of) a single path component."""
    cleaned = _SAFE.sub("_", value)[:_MAX_COMPONENT]
    if cleaned in ("", ".", ".."):
        return "_" * max(1, len(cleaned))
    return cleaned


def fit_name(name: str) -> str:
    """``name`` if it fits in NAME_MAX bytes, else its start, ``~`` and a hash of the whole,
    keeping a short extension (distinct long names stay distinct)."""
    encoded = name.encode("utf-8")
    if len(encoded) <= _MAX_NAME_BYTES:
        return name
    digest = hashlib.blake2b(encoded, digest_size=8).hexdigest()
    stem, ext = os.path.splitext(name)
    if len(ext.encode("utf-8")) > 16:
        stem, ext = name, ""
    room = _MAX_NAME_BYTES - len(ext.encode("utf-8")) - len(digest) - 1
    head = stem.encode("utf-8")[:room].decode("utf-8", "ignore")
    return f"{head}~{digest}{ext}"


_TAIL_CHUNK = 64 * 1024

_TIME_FIELDS = {"date": "%Y-%m-%d", "hour": "%H", "month": "%Y-%m", "year": "%Y"}


def template_fields(template: str) -> tuple[str, ...]:
    """The field names a (validated) path template uses, each once."""
    return tuple(dict.fromkeys(name for _, name, _, _ in string.Formatter().parse(template)
                               if name))


def template_values(event: Event, now: datetime | None = None,
                    names: Sequence[str] = TEMPLATE_FIELDS) -> dict[str, str]:
    """The values a path template can use for ``event`` (only ``names``), already safe."""
    values: dict[str, str] = {}
    stamp: datetime | None = None
    for name in names:
        time_format = _TIME_FIELDS.get(name)
        if time_format is not None:
            if stamp is None:
                stamp = (event.time or now or datetime.now(UTC)).astimezone(UTC)
            values[name] = stamp.strftime(time_format)
            continue
        found = field_values(event, name)
        values[name] = safe_component(found[0]) if found else "unknown"
    return values


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
        self._files: OrderedDict[Path, IO[bytes]] = OrderedDict()
        self._dirty: set[Path] = set()
        self._last_fsync = time.monotonic()
        # writes and closes run in worker threads: a SIGHUP reopen must not close a handle
        # a write is using
        self._io_lock = threading.Lock()
        #: the running "interval" fsync round, and the error of the last one
        self._syncing: threading.Thread | None = None
        self._background_error: OSError | None = None

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
        if self.options.fsync == "always":
            await anyio.to_thread.run_sync(self._write, grouped)  # waits for the disk
        else:
            # Handing a batch to the OS costs microseconds; a worker thread costs a GIL
            # hand-off per system call while the loop is busy (up to the 5 ms switch
            # interval each), which made delivery fall behind a burst.
            self._write(grouped)

    def _open(self, path: Path) -> IO[bytes]:
        handle = self._files.get(path)
        if handle is not None:
            self._files.move_to_end(path)
            return handle
        while len(self._files) >= self.options.max_open_files:
            old_path, old = self._files.popitem(last=False)
            self._close_one(old_path, old)
        # the resolved parent must be inside the base (a symlinked directory could escape);
        # checked before creating anything, resolve() follows the parts that exist
        if not path.parent.resolve().is_relative_to(self.base.resolve()):
            raise SinkError(f"{path.parent} resolves outside the base directory", permanent=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        # read-write (appends still go to the end): the tail is checked first
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o640)
        try:
            self._mend_torn_tail(fd, path)
        except OSError:
            os.close(fd)
            raise
        handle = os.fdopen(fd, "ab")
        self._files[path] = handle
        return handle

    def _mend_torn_tail(self, fd: int, path: Path) -> None:
        """A crash in the middle of a batch's write (SIGKILL, power loss: the kernel may have
        written part of it) can leave the file ending in part of a record. That batch was
        never acknowledged, so the pipeline writes it again, in full, after it: without this
        the fragment and the next record would share one line, and both be unreadable. A
        fragment of one of our records (``{"kind":…``) is cut off; anything else is kept,
        ended with a newline."""
        size = os.fstat(fd).st_size
        end, cut = size, 0
        while end > 0:
            start = max(0, end - _TAIL_CHUNK)
            at = os.pread(fd, end - start, start).rfind(b"\n")
            if at >= 0:
                cut = start + at + 1
                break
            end = start
        if cut == size:
            return  # empty, or ends with a complete line
        # the fragment is ours if it starts like a record (or is a shorter piece of a start)
        if RECORD_START.startswith(os.pread(fd, len(RECORD_START), cut)):
            os.ftruncate(fd, cut)
            action = "removed"
        else:
            os.write(fd, b"\n")
            action = "ended with a newline"
        self.counters.inc(f"file_torn_tails.{self.name}")
        log.warning("file_torn_tail", sink=self.name, path=str(path), bytes=size - cut,
                    action=action, note="left by a crash mid-write; that batch is written "
                    "again in full")

    def _write(self, grouped: dict[Path, list[bytes]]) -> None:
        with self._io_lock:
            self._write_locked(grouped)

    def _write_locked(self, grouped: dict[Path, list[bytes]]) -> None:
        try:
            failed, self._background_error = self._background_error, None
            if failed is not None:
                raise failed
            for path, lines in grouped.items():
                handle = self._open(path)
                lines.append(b"")  # the last line's newline
                handle.write(b"\n".join(lines))
                handle.flush()
                self._dirty.add(path)
            policy = self.options.fsync
            now = time.monotonic()
            if policy == "always":
                self._fsync_dirty()
                self._last_fsync = now
            elif policy == "interval" and now - self._last_fsync >= self.options.fsync_interval:
                self._fsync_in_background()
                self._last_fsync = now
        except OSError as exc:
            # ENOSPC, EACCES, EIO: the operator can fix these, so they are retried, loudly
            raise SinkError(f"cannot write {exc.filename or 'file'}: {exc.strerror}") from exc

    def _fsync_in_background(self) -> None:
        """The "interval" fsync, in a thread of its own: a batch is acknowledged once its
        lines are with the OS (as every batch between two fsyncs always was), so it need not
        wait while the OS writes a second's worth of data to disk. The files are fsynced
        through duplicated descriptors (a reopen may close the originals meanwhile); one
        fsync round at a time; a failure is raised by the next write, as a SinkError."""
        if self._syncing is not None and self._syncing.is_alive():
            return  # the previous round is still running: the next interval retries
        fds = []
        for path in self._dirty:
            handle = self._files.get(path)
            if handle is not None:
                fds.append(os.dup(handle.fileno()))
        self._dirty.clear()
        if not fds:
            return

        def sync() -> None:
            try:
                for fd in fds:
                    os.fsync(fd)
            except OSError as exc:
                self._background_error = exc
            finally:
                for fd in fds:
                    os.close(fd)

        self._syncing = threading.Thread(target=sync, name=f"fsync-{self.name}", daemon=True)
        self._syncing.start()

    def _join_background(self) -> None:
        if self._syncing is not None:
            self._syncing.join()
            self._syncing = None

    def _fsync_dirty(self) -> None:
        for path in list(self._dirty):
            handle = self._files.get(path)
            if handle is not None:
                os.fsync(handle.fileno())
        self._dirty.clear()

    def _close_one(self, path: Path, handle: IO[bytes]) -> None:
        try:
            if path in self._dirty and self.options.fsync != "never":
                handle.flush()
                os.fsync(handle.fileno())
        finally:
            self._dirty.discard(path)
            handle.close()

    def _close_all(self) -> None:
        with self._io_lock:
            self._close_all_locked()

    def _close_all_locked(self) -> None:
        self._join_background()
        while self._files:
            path, handle = self._files.popitem(last=False)
            self._close_one(path, handle)
        failed, self._background_error = self._background_error, None
        if failed is not None:
            raise failed

    async def reopen(self) -> None:
        await anyio.to_thread.run_sync(self._close_all)

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self._close_all)

    def __repr__(self) -> str:
        return f"FileSink({self.name!r}, base={str(self.base)!r})"

