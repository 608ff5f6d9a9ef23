"""Session state that survives a restart: OAuth tokens and the newest ``wsc``.

A daemon restarted inside the gateway's ``recoveryTimeout`` presents the saved ``wsc`` (with
the same OAuth session, kept by the saved refresh token) and gets the notifications sent
while it was down replayed, instead of losing them (PROTOCOL.md §4, §7).

    state_dir/session.json   {"version": 1, "nonce": b64, "data": b64}   mode 0600

The document is encrypted (AES-256-GCM) with a key derived (HKDF-SHA256) from the client
secret and the JWT, which never touch the state directory: the file holds no token in the
clear, and a copy of it is useless without the credentials. New credentials cannot read an
old file; it is then ignored (a fresh session starts). Writes are atomic (a temp file of a
name no other write uses, fsync, rename, fsync of the directory) and one at a time: a save
that starts while another runs waits for it (the periodic save and the final one at a stop
used the same temp name, and one rename failed).

Only a ``wsc`` whose notifications are all committed to the journal is saved (the caller
waits for a commit after taking the snapshot), so a recovery from it never skips an event
the journal had not yet made durable.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from a2pd.logging import get_logger

__all__ = [
    "FILE_NAME",
    "VERSION",
    "SessionStore",
]

log = get_logger("persist")

VERSION = 1
FILE_NAME = "session.json"


class SessionStore:
    """Reads and writes the encrypted session document of one state directory."""

    def __init__(self, directory: Path, client_secret: str, jwt: str) -> None:
        self.path = directory / FILE_NAME
        material = f"{client_secret}\0{jwt}".encode()
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"a2pd session state v1",
                   info=b"session.json").derive(material)
        self._aead = AESGCM(key)
        #: one save at a time (they run in worker threads)
        self._saving = threading.Lock()
        # temp files a killed save left behind (one daemon per state directory: none of
        # them is being written)
        for stale in directory.glob(f".{FILE_NAME}.*.tmp"):
            stale.unlink(missing_ok=True)

    def load(self) -> dict[str, Any] | None:
        """The saved document, or None (missing, unreadable, other credentials, corrupt)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("session_state_unreadable", path=str(self.path),
                        error=exc.strerror or repr(exc))
            return None
        try:
            outer = json.loads(raw)
            if outer.get("version") != VERSION:
                log.warning("session_state_ignored", reason="unknown version")
                return None
            nonce = base64.b64decode(outer["nonce"])
            plain = self._aead.decrypt(nonce, base64.b64decode(outer["data"]), b"a2pd")
            doc: dict[str, Any] = json.loads(plain)
        except InvalidTag:
            log.info("session_state_ignored", reason="written with other credentials")
            return None
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("session_state_ignored", reason="not a session state file")
            return None
        return doc

    def save(self, doc: dict[str, Any]) -> None:
        """Write ``doc`` atomically (blocking: call from a worker thread)."""
        nonce = secrets.token_bytes(12)
        data = self._aead.encrypt(nonce, json.dumps(doc).encode(), b"a2pd")
        outer = {"version": VERSION, "saved_at": time.time(),
                 "nonce": base64.b64encode(nonce).decode(),
                 "data": base64.b64encode(data).decode()}
        with self._saving:
            # mkstemp: a name of its own, mode 0600
            fd, name = tempfile.mkstemp(prefix=f".{FILE_NAME}.", suffix=".tmp",
                                        dir=self.path.parent)
            tmp = Path(name)
            try:
                with os.fdopen(fd, "w") as handle:
                    json.dump(outer, handle)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            directory = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
