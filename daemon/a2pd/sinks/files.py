"""The files a file sink holds open: raw descriptors (no buffer that could keep a failed
batch's bytes and write them later), at most ``max_open`` (the least recently used closed
first), each checked at every batch to still be at its path (a file deleted or replaced
behind the sink's back is closed and the path opened afresh, ``file_reopened``), mended
when opened if a crash left a torn last line, cut back when a batch fails, and fsynced as
the sink's policy says ("interval": in a thread of its own).

``lock``: reopen/aclose and "always" writes run in worker threads, and a SIGHUP reopen must
not close a file a write is using. It is held for writes and bookkeeping only, never across
a reopen's fsyncs (a send on the event loop's thread may be waiting for it).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from a2pd import counts
from a2pd.errors import SinkError
from a2pd.events import RECORD_START
from a2pd.logging import get_logger

__all__ = ["OpenFile", "OpenFiles", "private_dirs"]

log = get_logger("sink.file")

_TAIL_CHUNK = 64 * 1024


def private_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents, each 0700 whatever the umask."""
    if path.is_dir():
        return
    private_dirs(path.parent)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        return
    path.chmod(0o700)  # the umask may have taken bits off; never adds any


@dataclass(slots=True)
class OpenFile:
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


class OpenFiles:
    """The open files of sink ``name`` (see the module docstring)."""

    def __init__(self, name: str, *, fsync: Literal["never", "interval", "always"],
                 max_open: int, base: Path) -> None:
        self.name = name
        self.policy = fsync
        self.max_open = max_open
        self.base = base
        self.lock = threading.Lock()
        self._files: OrderedDict[Path, OpenFile] = OrderedDict()
        self._dirty: set[Path] = set()
        #: the running "interval" fsync round, and the error of the last one
        self._syncing: threading.Thread | None = None
        self._background_error: OSError | None = None
        #: counters to add back on the event loop's thread (a write may run in a worker
        #: thread, and counters wake their waiters through the loop)
        self.counts: list[str] = []

    @property
    def paths(self) -> list[Path]:
        """The paths held open, least recently used first."""
        return list(self._files)

    def check_background(self) -> None:
        """Raise the error of the last background fsync round, once."""
        failed, self._background_error = self._background_error, None
        if failed is not None:
            raise failed

    def written(self, path: Path) -> None:
        """``path`` has lines not yet fsynced."""
        self._dirty.add(path)

    def cut_back(self, written: Sequence[tuple[Path, OpenFile, int]]) -> None:
        """Remove a failed batch's bytes: each file back to its size before the batch. A cut
        that fails too (EIO) is retried before anything else is written to that file."""
        for path, file, size in written:
            try:
                os.ftruncate(file.fd, size)
            except OSError as exc:
                file.cut_to = size
                log.error("file_cut_back_failed", sink=self.name, path=str(path),
                          error=exc.strerror, note="retried before the next write to it")

    def make_room(self, wanted: Mapping[Path, object]) -> None:
        """Close the least recently used files a batch will not write, so it can open its own
        within ``max_open_files``. Never one the batch writes: a failed batch must still hold
        every file it touched to cut it back (a batch naming more files than the limit keeps
        them open until a later batch makes room)."""
        needed = sum(1 for path in wanted if path not in self._files)
        for path in list(self._files):  # least recently used first
            if len(self._files) + needed <= self.max_open:
                break
            if path not in wanted:
                self._close_one(path, self._files.pop(path))

    def open(self, path: Path) -> tuple[OpenFile, int]:
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
            self.counts.append(f"{counts.FILE_REOPENED}.{self.name}")
            log.warning("file_reopened", sink=self.name, path=str(path), reason=reason,
                        note="the open file was no longer at its path; batches written "
                        "to it before this are wherever it went")
            # a deleted file's data has nowhere to go: no fsync for it
            self._close_one(path, file, sync=reason == "replaced")
        # the resolved parent must be inside the base (a symlinked directory could escape);
        # checked before creating anything, resolve() follows the parts that exist
        if not path.parent.resolve().is_relative_to(self.base.resolve()):
            raise SinkError(f"{path.parent} resolves outside the base directory", permanent=True)
        private_dirs(path.parent)
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
        file = OpenFile(fd, opened.st_dev, opened.st_ino)
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
        self.counts.append(f"{counts.FILE_TORN_TAILS}.{self.name}")
        log.warning("file_torn_tail", sink=self.name, path=str(path), bytes=size - cut,
                    action=action, note="left by a crash mid-write; that batch is written "
                    "again in full")

    def fsync_in_background(self) -> None:
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

    def join_background(self) -> None:
        """Wait for the running background fsync round, if any, to end."""
        syncing = self._syncing
        if syncing is not None:
            syncing.join()

    def fsync_dirty(self) -> None:
        for path in list(self._dirty):
            file = self._files.get(path)
            if file is not None:
                os.fsync(file.fd)
        self._dirty.clear()

    def _close_one(self, path: Path, file: OpenFile, *, sync: bool = True) -> None:
        """Close a file taken out of ``_files``: the cut a failed batch still owes it first,
        then an fsync if it has unsynced lines (unless the policy is "never")."""
        try:
            self._close_file(file, sync=sync and path in self._dirty)
        finally:
            self._dirty.discard(path)

    def _close_file(self, file: OpenFile, *, sync: bool) -> None:
        try:
            if file.cut_to is not None:
                os.ftruncate(file.fd, file.cut_to)
            if sync and self.policy != "never":
                os.fsync(file.fd)
        finally:
            os.close(file.fd)

    def close_all(self) -> None:
        """Close every file; the next write opens its path afresh. The files are taken out
        under the lock, then fsynced and closed outside it: a reload's reopen runs beside
        delivery, and a send on the event loop's thread must not wait for these fsyncs."""
        with self.lock:
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
        with self.lock:
            failed, self._background_error = self._background_error, None
        error = first or failed
        if error is not None:
            raise error
