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
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import anyio
from pydantic import BeforeValidator, Field, field_validator

from a2pd import counts
from a2pd.errors import SinkError
from a2pd.events import RECORD_START, Event, record_json
from a2pd.logging import get_logger
from a2pd.sinks import Sink, SinkContext, SinkOptions
from a2pd.sinks.templates import check_template, fit_name, template_fields, template_values
from a2pd.vocab import Duration, LocalPath

__all__ = ["FileOptions", "FileSink"]

log = get_logger("sink.file")


def _private_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents, each 0700 whatever the umask."""
    if path.is_dir():
        return
    _private_dirs(path.parent)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        return
    path.chmod(0o700)  # the umask may have taken bits off; never adds any


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


_TAIL_CHUNK = 64 * 1024

def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (a filling disk can take part of it, then refuse)."""
    view = memoryview(data)
    while view:
        done = os.write(fd, view)
        if done == 0:
            raise OSError(errno.EIO, "the write took nothing")
        view = view[done:]


@dataclass(slots=True)
class _OpenFile:
    """One output file held open: its raw descriptor (no buffer that could keep a failed
    batch's bytes and write them later) and the identity of its inode, to notice the path
    being deleted or replaced."""

    fd: int
    dev: int
    ino: int
    #: a failed batch's bytes that could not be cut off yet: the size to cut back to first
    cut_to: int | None = None

    def is_at(self, found: os.stat_result | None) -> bool:
        """True if the path, as ``found`` by a stat, is still this file."""
        return found is not None and (found.st_dev, found.st_ino) == (self.dev, self.ino)


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
        self._files: OrderedDict[Path, _OpenFile] = OrderedDict()
        self._dirty: set[Path] = set()
        self._last_fsync = time.monotonic()
        # reopen/aclose and "always" writes run in worker threads: a SIGHUP reopen must not
        # close a file a write is using. Held for writes and bookkeeping only, never across
        # a reopen's fsyncs (a send on the event loop's thread may be waiting for it).
        self._io_lock = threading.Lock()
        #: the running "interval" fsync round, and the error of the last one
        self._syncing: threading.Thread | None = None
        self._background_error: OSError | None = None
        #: counters to add back on the event loop's thread (a write may run in a worker
        #: thread, and counters wake their waiters through the loop)
        self._counts: list[str] = []

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
            counts, self._counts = self._counts, []
            for key in counts:
                self.counters.inc(key)

    def _write(self, grouped: dict[Path, list[bytes]]) -> None:
        with self._io_lock:
            self._write_locked(grouped)

    def _write_locked(self, grouped: dict[Path, list[bytes]]) -> None:
        """Write one batch: all of it, or nothing. On any failure every file the batch
        touched is cut back to its size before the batch (part of a write may have landed),
        so the retry writes each line once."""
        written: list[tuple[Path, _OpenFile, int]] = []
        try:
            self._write_batch(grouped, written)
        except BaseException as exc:
            self._cut_back(written)
            if not isinstance(exc, OSError):
                raise
            # ENOSPC, EACCES, EIO: the operator can fix these, so they are retried, loudly
            raise SinkError(f"cannot write {exc.filename or 'file'}: {exc.strerror}") from exc

    def _write_batch(self, grouped: dict[Path, list[bytes]],
                     written: list[tuple[Path, _OpenFile, int]]) -> None:
        """Write the lines of each file, noting in ``written`` each file opened for it (with
        its size before), then fsync as the policy says."""
        failed, self._background_error = self._background_error, None
        if failed is not None:
            raise failed
        self._make_room(grouped)
        for path, lines in grouped.items():
            file, size = self._open(path)
            written.append((path, file, size))
            lines.append(b"")  # the last line's newline
            try:
                _write_all(file.fd, b"\n".join(lines))
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, str(path)) from exc
            self._dirty.add(path)
        policy = self.options.fsync
        now = time.monotonic()
        if policy == "always":
            self._fsync_dirty()
            self._last_fsync = now
        elif policy == "interval" and now - self._last_fsync >= self.options.fsync_interval:
            self._fsync_in_background()
            self._last_fsync = now

    def _cut_back(self, written: Sequence[tuple[Path, _OpenFile, int]]) -> None:
        """Remove a failed batch's bytes: each file back to its size before the batch. A cut
        that fails too (EIO) is retried before anything else is written to that file."""
        for path, file, size in written:
            try:
                os.ftruncate(file.fd, size)
            except OSError as exc:
                file.cut_to = size
                log.error("file_cut_back_failed", sink=self.name, path=str(path),
                          error=exc.strerror, note="retried before the next write to it")

    def _make_room(self, wanted: Mapping[Path, object]) -> None:
        """Close the least recently used files a batch will not write, so it can open its own
        within ``max_open_files``. Never one the batch writes: a failed batch must still hold
        every file it touched to cut it back (a batch naming more files than the limit keeps
        them open until a later batch makes room)."""
        needed = sum(1 for path in wanted if path not in self._files)
        for path in list(self._files):  # least recently used first
            if len(self._files) + needed <= self.options.max_open_files:
                break
            if path not in wanted:
                self._close_one(path, self._files.pop(path))

    def _open(self, path: Path) -> tuple[_OpenFile, int]:
        """The open file for ``path`` and its size before this batch (what a failed batch is
        cut back to). A held file is first checked to still be the one at ``path``, one stat
        per batch: if the path was deleted or replaced (``rm -rf``, a rotation without a
        SIGHUP) the file is closed and the path opened afresh, so a batch never goes to a
        file nobody will read. The batches already in the old file were acknowledged before
        it went; nothing can be done about those."""
        file = self._files.get(path)
        if file is not None:
            try:
                found: os.stat_result | None = os.stat(path, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                found = None
            if found is not None and file.is_at(found):
                self._files.move_to_end(path)
                if file.cut_to is None:
                    return file, found.st_size
                os.ftruncate(file.fd, file.cut_to)  # the cut a failed batch still owes
                size, file.cut_to = file.cut_to, None
                return file, size
            reason = "deleted" if found is None else "replaced"
            del self._files[path]
            self._counts.append(f"{counts.FILE_REOPENED}.{self.name}")
            log.warning("file_reopened", sink=self.name, path=str(path), reason=reason,
                        note="the open file was no longer at its path; batches written "
                        "to it before this are wherever it went")
            # a deleted file's data has nowhere to go: no fsync for it
            self._close_one(path, file, sync=reason == "replaced")
        # the resolved parent must be inside the base (a symlinked directory could escape);
        # checked before creating anything, resolve() follows the parts that exist
        if not path.parent.resolve().is_relative_to(self.base.resolve()):
            raise SinkError(f"{path.parent} resolves outside the base directory", permanent=True)
        _private_dirs(path.parent)
        # read-write (appends still go to the end): the tail is checked first; 0600: the
        # records hold message text and phone numbers
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            self._mend_torn_tail(fd, path)
            opened = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise
        file = _OpenFile(fd, opened.st_dev, opened.st_ino)
        self._files[path] = file
        return file, opened.st_size

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
        self._counts.append(f"{counts.FILE_TORN_TAILS}.{self.name}")
        log.warning("file_torn_tail", sink=self.name, path=str(path), bytes=size - cut,
                    action=action, note="left by a crash mid-write; that batch is written "
                    "again in full")

    def _fsync_in_background(self) -> None:
        """The "interval" fsync, in a thread of its own: a batch is acknowledged once its
        lines are with the OS (as every batch between two fsyncs always was), so it need not
        wait while the OS writes a second's worth of data to disk. The files are fsynced
        through duplicated descriptors (a reopen may close the originals meanwhile); one
        fsync round at a time; a failure is raised by the next write, as a SinkError."""
        if self._syncing is not None and self._syncing.is_alive():
            return  # the previous round is still running: the next interval retries
        fds: list[int] = []
        try:
            for path in self._dirty:
                file = self._files.get(path)
                if file is not None:
                    fds.append(os.dup(file.fd))
        except OSError:
            for fd in fds:
                os.close(fd)
            raise
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
            file = self._files.get(path)
            if file is not None:
                os.fsync(file.fd)
        self._dirty.clear()

    def _close_one(self, path: Path, file: _OpenFile, *, sync: bool = True) -> None:
        """Close a file taken out of ``_files``: the cut a failed batch still owes it first,
        then an fsync if it has unsynced lines (unless the policy is "never")."""
        try:
            self._close_file(file, sync=sync and path in self._dirty)
        finally:
            self._dirty.discard(path)

    def _close_file(self, file: _OpenFile, *, sync: bool) -> None:
        try:
            if file.cut_to is not None:
                os.ftruncate(file.fd, file.cut_to)
            if sync and self.options.fsync != "never":
                os.fsync(file.fd)
        finally:
            os.close(file.fd)

    def _close_all(self) -> None:
        """Close every file; the next write opens its path afresh. The files are taken out
        under the lock, then fsynced and closed outside it: a reload's reopen runs beside
        delivery, and a send on the event loop's thread must not wait for these fsyncs."""
        with self._io_lock:
            files, self._files = self._files, OrderedDict()
            dirty, self._dirty = self._dirty, set()
            syncing, self._syncing = self._syncing, None
        if syncing is not None:
            syncing.join()
        first: OSError | None = None
        for path, file in files.items():
            try:
                self._close_file(file, sync=path in dirty)
            except OSError as exc:
                first = first or exc
        with self._io_lock:
            failed, self._background_error = self._background_error, None
        error = first or failed
        if error is not None:
            raise error

    async def reopen(self) -> None:
        await anyio.to_thread.run_sync(self._close_all)

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self._close_all)

    def __repr__(self) -> str:
        return f"FileSink({self.name!r}, base={str(self.base)!r})"
