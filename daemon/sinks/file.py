"""The file sink: JSON lines appended to files under one base directory.

The file name comes from a template (``{kind}/{date}.jsonl``). Values substituted from event
fields are reduced to a safe character set first, and every final path is checked to lie
inside the base directory, so a hostile field (``../../etc``, an absolute path, NUL, a very
long string) can never write elsewhere.

fsync policy: ``never`` (flush to the OS after each batch), ``interval`` (also fsync when at
least ``fsync_interval`` has passed since the last fsync, checked on each write and at
close), ``always`` (fsync after every batch). ``reopen()`` closes every file so the next
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
from daemon.events import Event, field_values, to_json
from daemon.sinks import Sink, SinkContext, SinkOptions

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


def template_values(event: Event, now: datetime | None = None) -> dict[str, str]:
    """The values a path template can use for ``event``, already made safe."""
    stamp = event.time or now or datetime.now(UTC)
    stamp = stamp.astimezone(UTC)
    values = {
        "date": stamp.strftime("%Y-%m-%d"),
        "hour": stamp.strftime("%H"),
        "month": stamp.strftime("%Y-%m"),
        "year": stamp.strftime("%Y"),
    }
    for name in ("kind", "from", "to", "batchId", "direction", "status", "subscriptionId",
                 "ownerId"):
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
        self._files: OrderedDict[Path, IO[bytes]] = OrderedDict()
        self._dirty: set[Path] = set()
        self._last_fsync = time.monotonic()
        # writes and closes run in worker threads: a SIGHUP reopen must not close a handle
        # a write is using
        self._io_lock = threading.Lock()

    def path_for(self, event: Event) -> Path:
        """Where ``event`` goes; raises ``SinkError`` (permanent) if it would leave the base."""
        relative = self.options.path.format_map(template_values(event))
        # several values in one name can exceed NAME_MAX: ENAMETOOLONG would be retried for
        # ever and hold up every later event of this sink
        relative = "/".join(fit_name(part) for part in relative.split("/"))
        candidate = Path(os.path.normpath(self.base / relative))
        if candidate == self.base or not candidate.is_relative_to(self.base):
            raise SinkError(f"path template gives {relative!r}, outside the base directory",
                            permanent=True)
        return candidate

    async def send(self, batch: Sequence[Event]) -> None:
        grouped: dict[Path, list[str]] = {}
        for event in batch:
            grouped.setdefault(self.path_for(event), []).append(to_json(event) + "\n")
        await anyio.to_thread.run_sync(self._write, grouped)

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
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o640)
        handle = os.fdopen(fd, "ab")
        self._files[path] = handle
        return handle

    def _write(self, grouped: dict[Path, list[str]]) -> None:
        with self._io_lock:
            self._write_locked(grouped)

    def _write_locked(self, grouped: dict[Path, list[str]]) -> None:
        try:
            for path, lines in grouped.items():
                handle = self._open(path)
                handle.write("".join(lines).encode("utf-8"))
                handle.flush()
                self._dirty.add(path)
            policy = self.options.fsync
            now = time.monotonic()
            if policy == "always" or (
                policy == "interval" and now - self._last_fsync >= self.options.fsync_interval
            ):
                self._fsync_dirty()
                self._last_fsync = now
        except OSError as exc:
            # ENOSPC, EACCES, EIO: the operator can fix these, so they are retried, loudly
            raise SinkError(f"cannot write {exc.filename or 'file'}: {exc.strerror}") from exc

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
        while self._files:
            path, handle = self._files.popitem(last=False)
            self._close_one(path, handle)

    async def reopen(self) -> None:
        await anyio.to_thread.run_sync(self._close_all)

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self._close_all)

    def __repr__(self) -> str:
        return f"FileSink({self.name!r}, base={str(self.base)!r})"

