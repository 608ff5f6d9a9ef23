"""The state directory: created private, held by one daemon at a time (a lock file with
its pid), and the file that says where its ops endpoint listens (for `a2pd status`)."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from a2pd.errors import ConfigError, ConfigProblem, StateDirInUse

__all__ = ["LOCK_FILE", "OPS_FILE", "lock_state_dir", "prepare_state_dir", "write_ops_file"]

#: where a running daemon says where its ops endpoint listens (for `a2pd status`)
OPS_FILE = "ops.json"
#: held (flock) by the daemon using the state directory; holds its pid
LOCK_FILE = "a2pd.lock"


def prepare_state_dir(path: Path) -> Path:
    """Create the state directory (0700) or fail with a config error naming the key."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError([ConfigProblem("state.directory",
                                         f"{path} is not a writable directory: {exc.strerror}")]) \
            from exc
    return path


def lock_state_dir(path: Path) -> int:
    """Take the state directory's lock for this process (released when it exits); the
    lock file's descriptor. ``StateDirInUse`` naming the other process if it is held.
    `a2pd journal` and `a2pd dead-letters` do not take it: they work beside the daemon."""
    lock = path / LOCK_FILE
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StateDirInUse(f"another a2pd (pid {other}) is running with the state directory "
                            f"{path}; stop it first, or give this one a state.directory of "
                            f"its own") from None
    except OSError:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def write_ops_file(path: Path, host: str, port: int) -> None:
    """Say where the ops endpoint listens (0600, like everything a2pd writes)."""
    fd = os.open(path / OPS_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"host": host, "port": port, "pid": os.getpid()}, handle)
