"""A real PostgreSQL server on a free loopback port, for the PostgreSQL sink's tests, and the
sink pointed at it (``make_sink``).

Started inside the test (``async with postgres_server(tmp_path) as server``), never in a yield
fixture, and always killed when the block ends. Readiness is a bounded ``SELECT 1`` poll, never
a fixed sleep. Missing PostgreSQL binaries fail the test (CI installs Debian's ``postgresql``;
nothing is skipped).

``initdb`` runs once per test process (a template cluster, removed at exit); each server runs
on a copy of it in a fresh ``a2pd-pg-*`` directory in the temporary directory, removed when the
block ends. The superuser is ``a2pd`` with a random password (``PASSWORD``), over TCP on
127.0.0.1 only (no Unix socket). PostgreSQL refuses to run as root: as root, the server runs
as the ``postgres`` user (Debian's package creates it) or else ``nobody``, which is why its
files live there (or in /tmp) and not in pytest's root-only tmp directories (``directory``
holds only its log, ``postgres.log``).

``kill`` (SIGKILL) is a crash of the whole server, children included, and ``restart`` makes
postgres recover from its WAL on the same port; ``fsync`` is off, which a killed server (not
a killed machine) does not notice.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import anyio
import psycopg
from psycopg import sql

if TYPE_CHECKING:
    from a2pd.sinks.postgres import PostgresSink

#: bound on a server's start (and restart) in seconds
START_TIMEOUT = 30.0
#: bound on initdb (the template cluster) in seconds
INITDB_TIMEOUT = 120.0
#: the superuser's password, the same for every server of this test process
PASSWORD = secrets.token_urlsafe(16)
#: where the binaries of Debian's postgresql packages live, one directory per major version
DEBIAN_BINARIES = Path("/usr/lib/postgresql")


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Binaries:
    """``initdb`` and ``postgres`` of one PostgreSQL installation."""

    initdb: str
    postgres: str


def find_binaries() -> Binaries:
    """The newest /usr/lib/postgresql/<version>/bin with both programs, else the PATH's."""

    def version(directory: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", directory.parent.name))

    candidates = [d for d in DEBIAN_BINARIES.glob("*/bin")
                  if (d / "initdb").is_file() and (d / "postgres").is_file()]
    if candidates:
        newest = max(candidates, key=version)
        return Binaries(str(newest / "initdb"), str(newest / "postgres"))
    initdb, postgres = shutil.which("initdb"), shutil.which("postgres")
    if initdb is None or postgres is None:
        raise AssertionError("PostgreSQL is not installed (apt-get install postgresql;"
                             " .ci/setup does it)")
    return Binaries(initdb, postgres)


@dataclass(frozen=True)
class RunAs:
    """Who the server runs as: root may not, so root hands it to an unprivileged user."""

    uid: int
    gid: int

    @classmethod
    def choose(cls) -> RunAs:
        if os.geteuid() != 0:
            return cls(os.geteuid(), os.getegid())
        for name in ("postgres", "nobody"):
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                continue
            return cls(entry.pw_uid, entry.pw_gid)
        raise AssertionError("running as root and neither a postgres nor a nobody user exists")

    def popen_args(self) -> dict[str, Any]:
        """Arguments of ``subprocess`` that run the program as this user (none if it is us)."""
        if self.uid == os.geteuid():
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def own(self, path: Path) -> None:
        """Hand ``path`` and everything under it to this user."""
        if self.uid == os.geteuid():
            return
        os.chown(path, self.uid, self.gid, follow_symlinks=False)
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chown(Path(root, name), self.uid, self.gid, follow_symlinks=False)


def make_workdir(owner: RunAs, prefix: str = "a2pd-pg-") -> Path:
    """A fresh directory the server's user owns, where that user can reach it: in the
    temporary directory (``TMPDIR``), or in /tmp if root runs us and another user could not
    get into ``TMPDIR``."""
    parent = Path(tempfile.gettempdir())
    if owner.uid != os.geteuid() and not all(p.stat().st_mode & 0o001
                                             for p in (parent, *parent.parents)):
        parent = Path("/tmp")
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    owner.own(path)
    return path


_template: Path | None = None


def template_cluster(binaries: Binaries, owner: RunAs) -> Path:
    """The data directory of this process's initdb'd cluster, made on the first call."""
    global _template
    if _template is not None:
        return _template
    workdir = make_workdir(owner, prefix="a2pd-pg-template-")
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    pwfile = workdir / "pwfile"
    pwfile.write_text(PASSWORD + "\n")
    owner.own(pwfile)
    data = workdir / "data"
    base = [binaries.initdb, "-D", str(data), "-U", "a2pd", "--auth-local=trust",
            "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync",
            "--no-instructions",
            "--wal-segsize=1"]  # 1 MB WAL segments: a smaller copy for each server
    errors = []
    for locale in (["--locale=C.UTF-8"], ["--no-locale"]):
        result = subprocess.run([*base, *locale], cwd=workdir, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=INITDB_TIMEOUT,
                                check=False, **owner.popen_args())
        if result.returncode == 0:
            break
        errors.append(f"{' '.join(locale)}: {result.stdout}{result.stderr}")
        shutil.rmtree(data, ignore_errors=True)
    else:
        raise AssertionError("initdb failed:\n" + "\n".join(errors))
    pwfile.unlink()
    _template = data
    return data


class PostgresServer:
    """One postgres server; ``restart`` keeps its port and data directory."""

    user = "a2pd"
    database = "postgres"
    password = PASSWORD

    def __init__(self, directory: Path, *, tls: Mapping[str, Path] | None = None) -> None:
        self.binaries = find_binaries()
        self.owner = RunAs.choose()
        #: where the log goes (the data directory is elsewhere: see the module's docstring)
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log = self.directory / "postgres.log"
        #: ca, cert, key: accept TLS connections only (``hostssl``; plain TCP is refused)
        self.tls = dict(tls) if tls else None
        self.workdir: Path | None = None
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        #: the dynamic shared memory files of a crashed postmaster (its successor removes them)
        self.orphaned_shm: list[Path] = []

    @property
    def url(self) -> str:
        """The server's URL for the default database, without the password."""
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        """The server's URL for ``database``, without the password."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{quote(database, safe='')}"

    @property
    def data(self) -> Path:
        assert self.workdir is not None, "the server was not started"
        return self.workdir / "data"

    async def connect(self, database: str | None = None,
                      **kwargs: Any) -> psycopg.AsyncConnection[Any]:
        """An autocommit connection for the test's own checks (the caller closes it)."""
        params: dict[str, Any] = {"host": "127.0.0.1", "port": self.port, "user": self.user,
                                  "password": self.password,
                                  "dbname": database or self.database, "autocommit": True}
        if self.tls:
            params.update(sslmode="verify-full", sslrootcert=str(self.tls["ca"]))
        else:
            params.update(sslmode="disable")
        params.update(kwargs)
        conn: psycopg.AsyncConnection[Any] = await psycopg.AsyncConnection.connect(**params)
        return conn

    async def create_database(self, name: str) -> str:
        """Create database ``name`` and return its URL."""
        conn = await self.connect()
        async with conn:
            await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)

    def _prepare(self) -> None:
        """A copy of the template cluster (with the TLS files and rules) in a fresh directory."""
        template = template_cluster(self.binaries, self.owner)
        self.workdir = make_workdir(self.owner)
        shutil.copytree(template, self.data, symlinks=True)
        if self.tls:
            # postgres wants its key owned by itself and private (cert and key copied in)
            shutil.copyfile(self.tls["cert"], self.data / "server.crt")
            shutil.copyfile(self.tls["key"], self.data / "server.key")
            (self.data / "server.key").chmod(0o600)
            hba = ("local all all trust\n"
                   "hostssl all all 127.0.0.1/32 scram-sha-256\n")
        else:
            hba = ("local all all trust\n"
                   "host all all 127.0.0.1/32 scram-sha-256\n")
        (self.data / "pg_hba.conf").write_text(hba)
        self.owner.own(self.workdir)

    def _argv(self) -> list[str]:
        settings = {
            "listen_addresses": "127.0.0.1", "port": str(self.port),
            "unix_socket_directories": "",  # TCP only
            "fsync": "off",  # a SIGKILL of the server loses nothing the OS has
            "logging_collector": "off", "max_connections": "50",
        }
        if self.tls:
            settings.update(ssl="on", ssl_cert_file=str(self.data / "server.crt"),
                            ssl_key_file=str(self.data / "server.key"))
        argv = [self.binaries.postgres, "-D", str(self.data)]
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        return argv

    async def start(self) -> None:
        """Start on a free port and return once it answers ``SELECT 1``."""
        if self.workdir is None:
            self._prepare()
        for _attempt in range(3):
            self.port = free_port()
            if await self._spawn():
                return
            # lost the port to someone else between choosing and binding: try another
        raise AssertionError(f"postgres did not start; see {self.log}")

    async def _spawn(self) -> bool:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self._argv(), stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=log, cwd=self.data,
                                            start_new_session=True, **self.owner.popen_args())
        if await self._wait_ready():
            self.orphaned_shm = []  # the new postmaster removed what the old one left
            return True
        self.kill()
        return False

    async def _wait_ready(self) -> bool:
        with anyio.fail_after(START_TIMEOUT):
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    return False
                try:
                    conn = await self.connect(connect_timeout=1)
                except psycopg.OperationalError:
                    pass  # not listening yet, or still starting up or recovering
                else:
                    async with conn:
                        await conn.execute("SELECT 1")
                    return True
                await anyio.sleep(0.02)  # a poll interval, bounded by fail_after

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop the server now and reap it; returns once none of its processes is left.

        SIGKILL is a crash: the postmaster and all its children die at once (each child is in
        a process group of its own, so they are killed one by one). Another signal goes to
        the postmaster, which stops its children itself (SIGTERM waits for the clients to
        leave, SIGINT does not), and a crash follows if that takes over ``START_TIMEOUT``."""
        process, self.process = self.process, None
        if process is None:
            return
        victims: list[int] = []
        if process.poll() is None:
            if sig == signal.SIGKILL:
                victims = self._crash(process.pid)
            else:
                process.send_signal(sig)
        try:
            process.wait(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            victims = self._crash(process.pid)
            process.wait()
        deadline = time.monotonic() + START_TIMEOUT
        while any(_alive(pid) for pid in victims):
            if time.monotonic() > deadline:
                raise AssertionError(f"postgres processes {victims} outlived SIGKILL")
            time.sleep(0.01)

    async def restart(self, sig: int = signal.SIGKILL) -> None:
        """Kill the server and start it again on the same port with the same data (after a
        SIGKILL, postgres recovers from its WAL)."""
        self.kill(sig)
        if not await self._spawn():
            raise AssertionError(f"postgres did not restart on port {self.port}; see {self.log}")

    def _crash(self, postmaster: int) -> list[int]:
        """SIGKILL the postmaster and its children at once; the processes killed.

        The postmaster's children call setsid(), so a signal to its process group reaches only
        the postmaster, and a child left behind keeps the shared memory attached (the next
        postmaster refuses to start) until it notices its parent's death. The postmaster is
        stopped first so that it forks nothing while its children are listed."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(postmaster, signal.SIGSTOP)
            deadline = time.monotonic() + 1.0
            while _state(postmaster) not in ("T", "Z", "X", None) and time.monotonic() < deadline:
                time.sleep(0.001)
        self.orphaned_shm += _shm_files(postmaster)
        victims = [postmaster, *_children(postmaster)]
        for pid in victims:
            # a child's own children (none in this set-up, but an archive_command would be one)
            # share its process group
            for kill in (os.killpg, os.kill):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    kill(pid, signal.SIGKILL)
        return victims

    def remove(self) -> None:
        """Stop the server and delete its data. An immediate shutdown (SIGQUIT): the
        postmaster reaps its own children, where a SIGKILL leaves them to PID 1 (which in
        a container may not reap them)."""
        self.kill(signal.SIGQUIT)
        workdir, self.workdir = self.workdir, None
        if workdir is not None:
            self._release_shared_memory(workdir / "data")
            shutil.rmtree(workdir, ignore_errors=True)

    def _release_shared_memory(self, data: Path) -> None:
        """Remove the shared memory a crashed server left (a restart would have): the System V
        segment in its postmaster.pid (gone after a clean stop) and its /dev/shm files."""
        for path in self.orphaned_shm:
            path.unlink(missing_ok=True)
        self.orphaned_shm = []
        try:
            lines = (data / "postmaster.pid").read_text().splitlines()
        except OSError:
            return  # stopped cleanly: nothing left
        ipcrm = shutil.which("ipcrm")
        # line 7: "<key> <shmid>"
        if ipcrm is not None and len(lines) >= 7 and len(lines[6].split()) == 2:
            subprocess.run([ipcrm, "-m", lines[6].split()[1]], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=START_TIMEOUT, check=False)


def _shm_files(pid: int) -> list[Path]:
    """The /dev/shm files ``pid`` has mapped (a postmaster's dynamic shared memory)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return []
    files = {line.split(maxsplit=5)[5] for line in maps.splitlines()
             if len(line.split(maxsplit=5)) == 6}
    return [Path(name) for name in sorted(files) if name.startswith("/dev/shm/")]


def _stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, pgrp, ...), or
    None once the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses
    return stat[stat.rfind(")") + 2:].split()


def _state(pid: int) -> str | None:
    fields = _stat(pid)
    return fields[0] if fields else None


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie does not: it holds no port and no shared memory,
    and PID 1 of a container may never reap it)."""
    if not Path("/proc").is_dir():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return _state(pid) not in ("Z", "X", None)


def _children(parent: int) -> list[int]:
    """The running children of ``parent`` (none known without /proc)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    children = []
    for entry in proc.iterdir():
        if entry.name.isdigit():
            fields = _stat(entry.name)
            if fields and int(fields[1]) == parent and fields[0] not in ("Z", "X"):
                children.append(int(entry.name))
    return children


@asynccontextmanager
async def postgres_server(directory: Path, *,
                          tls: Mapping[str, Path] | None = None) -> AsyncIterator[PostgresServer]:
    """A running postgres for the block; killed and deleted when the block ends, whatever
    happens."""
    server = PostgresServer(directory, tls=tls)
    try:
        await server.start()
        yield server
    finally:
        server.remove()


def make_sink(server: PostgresServer, name: str = "pg", env: dict[str, str] | None = None,
              **options: Any) -> PostgresSink:
    """A PostgreSQL sink ``name`` writing to ``server`` (``options``: its table, ``env``: the
    environment its secrets are read from)."""
    # imported here: the server runs without the sink's module
    from a2pd.sinks import SinkContext
    from a2pd.sinks.postgres import PostgresOptions, PostgresSink

    opts = PostgresOptions.model_validate(
        {"url": server.url, "password": server.password, **options},
        context={"env": env or {}})
    return PostgresSink(name, opts, SinkContext(state_dir=Path(".")))
