"""Real small disks for fault tests: a tmpfs mounted in the test, and a way to fill it.

Mounting needs root (CI runs as root); without it the test is skipped, which CI's
``A2PD_NO_SKIPS=1`` turns into a failure (tests/conftest.py).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

FILLER = ".filler"
MOUNT = shutil.which("mount") or "/bin/mount"
UMOUNT = shutil.which("umount") or "/bin/umount"


@contextmanager
def tmpfs(path: Path, size: str = "4m") -> Iterator[Path]:
    """Mount a tmpfs of ``size`` at ``path`` (created) for the block."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([MOUNT, "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                           str(path)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run([UMOUNT, "-l", str(path)], check=False)


def fill(disk: Path) -> int:
    """Fill ``disk`` up with a filler file until the kernel says ENOSPC; bytes written."""
    written = 0
    chunk = b"\0" * (64 * 1024)
    fd = os.open(disk / FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            try:
                n = os.write(fd, chunk if len(chunk) > 1 else b"\0")
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    return written
                chunk = chunk[: len(chunk) // 2]  # the last pages, smaller and smaller
                continue
            written += n
    finally:
        os.close(fd)


def free(disk: Path) -> None:
    """Remove the filler: the disk has room again."""
    (disk / FILLER).unlink(missing_ok=True)
