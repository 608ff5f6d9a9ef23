"""The PostgreSQL sink: a queryable mirror of the A2P message store, exactly once per
notification uuid.

Each delivered batch is one transaction running one statement (``postgres_schema``): the
events are inserted into ``{schema}.events`` unless their uuid is there already, and the
state they carry moves the state tables (messages, batches, opt-outs) forward only. A
failure rolls the whole batch back and the pipeline sends it again; a batch delivered twice
(a crash between the commit and the journal's cursor, a retry after a connection dropped
during COMMIT, a dead letter replayed, two daemons writing to one database) finds its uuids
stored and its states no newer than the stored ones, and changes nothing.

The tables are created by a2pd itself, on the first batch: versioned migrations applied in
one transaction under an advisory lock on the schema's name, so two a2pd starting at once
apply each migration once. A schema at a version newer than this a2pd knows is never
written (the batch waits, retried, until a2pd is upgraded).

Failures map to ``SinkError`` by SQLSTATE: data exceptions (class 22: a value out of range,
a NUL in a text) and integrity violations (class 23) are permanent, for the one event they
come from (the pipeline narrows a refused batch down to it), and that event goes to the dead
letters. Everything else is transient and retried with the pipeline's backoff: the
connection lost (class 08), the server starting or shutting down (57P01-57P03), a read-only
server after a failover (25006), a statement timeout (57014), serialization failures and
deadlocks (class 40), no room (class 53), refused credentials or privileges (class 28,
42501: an operator can fix them), and any other server error.

The password never appears in a log line, an error or a repr: it is registered as a
secret, the connection is made from parts (never from the URL the operator wrote), and
every URL this module prints has its credentials stripped.
"""

from __future__ import annotations

import logging as std_logging
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from a2pd.errors import SinkError
from a2pd.events import (
    Event,
)
from a2pd.logging import get_logger, scrub
from a2pd.sinks import Sink, SinkContext
from a2pd.sinks.postgres_options import PostgresOptions
from a2pd.sinks.postgres_rows import BatchRows, batch_rows
from a2pd.sinks.postgres_schema import (
    APPLIED,
    CREATE_LEDGER,
    CREATE_SCHEMA,
    CURRENT_VERSION,
    MIGRATIONS,
    SCHEMA_EXISTS,
    lock_key,
    statements,
)

__all__ = ["BatchRows", "PostgresOptions", "PostgresSink", "batch_rows", "is_permanent"]

log = get_logger("sinks.postgres")
# the pool logs each failed connection attempt through the standard library (plain lines
# on stderr); the sink reports the same failure itself, as the reason of its retries
_pool_log = std_logging.getLogger("psycopg.pool")
_pool_log.addHandler(std_logging.NullHandler())
_pool_log.propagate = False

#: SQLSTATE classes that come from one event's values: retrying cannot help
PERMANENT_CLASSES = frozenset({"22", "23"})


def is_permanent(exc: BaseException) -> bool:
    """Whether a failure came from the data (retrying the same events cannot help)."""
    state = getattr(exc, "sqlstate", None)
    if isinstance(state, str) and state:
        return state[:2] in PERMANENT_CLASSES
    # no SQLSTATE: psycopg refused a value before sending it, or the connection failed
    return isinstance(exc, psycopg.DataError)


class PostgresSink(Sink):
    """Writes each event once per uuid, and the state it carries, to PostgreSQL."""

    type_name = "postgres"
    Options = PostgresOptions

    def __init__(self, name: str, options: PostgresOptions, context: SinkContext) -> None:
        super().__init__(name, options, context)
        options.register_secrets()
        self.url = options.safe_url
        self.schema = options.schema_name
        self._sql, self._upserts = statements(self.schema, keep_text=options.store_text)
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        #: why the pool's last attempt to connect failed (None once one succeeded)
        self.connect_error: psycopg.Error | None = None
        self._migrated = False
        #: events stored, uuids found already stored, state rows moved (tests, benches)
        self.written = 0
        self.duplicates = 0
        self.states_moved = 0

    def _connection_kwargs(self) -> dict[str, Any]:
        opts = self.options
        assert isinstance(opts, PostgresOptions)
        parts = urlsplit(opts.url)
        password = opts.resolved_password
        kwargs: dict[str, Any] = {
            "host": parts.hostname or "127.0.0.1",
            "port": parts.port or 5432,
            "dbname": unquote(opts.database),
            "user": opts.resolved_username,
            "password": password.get_secret_value() if password is not None else None,
            "sslmode": opts.sslmode,
            "sslrootcert": str(opts.tls_ca_file) if opts.tls_ca_file else _system_cas(opts),
            "sslcert": str(opts.tls_cert_file) if opts.tls_cert_file else None,
            "sslkey": str(opts.tls_key_file) if opts.tls_key_file else None,
            # libpq takes whole seconds and treats 1 as 2
            "connect_timeout": max(2, round(opts.connect_timeout)),
            "application_name": f"a2pd/{self.name}",
            # what the parameters are written in, whatever the database's encoding
            "client_encoding": "UTF8",
            "options": f"-c statement_timeout={int(opts.timeout * 1000)}",
        }
        return {k: v for k, v in kwargs.items() if v is not None}

    async def _connect(self, batch: Sequence[Event]
                       ) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        if self._pool is not None and self.connect_error is not None:
            # The pool's last attempt to connect failed, and the pool would only say so
            # after waiting its whole timeout, then retry on a backoff of its own: try once
            # here (a refusal fails at once, with its reason) and, once the server answers,
            # start a new pool, which connects at once.
            try:
                probe = await _recording(self).connect(**self._connection_kwargs())
            except psycopg.Error as exc:
                raise self._failed(exc, batch, connecting=True) from exc
            await probe.close()
            stale, self._pool = self._pool, None
            await stale.close(timeout=0)
        if self._pool is None:
            opts = self.options
            assert isinstance(opts, PostgresOptions)
            pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
                "", kwargs=self._connection_kwargs(), min_size=1, max_size=opts.pool_size,
                connection_class=_recording(self),
                open=False, timeout=opts.connect_timeout, name=f"a2pd-{self.name}",
                # a connection a restarted server dropped is found out before it is used
                check=AsyncConnectionPool.check_connection)
            await pool.open(wait=False)
            self._pool = pool
        return self._pool

    async def send(self, batch: Sequence[Event]) -> None:
        if not batch:
            return
        opts = self.options
        assert isinstance(opts, PostgresOptions)
        rows = batch_rows(batch, keep_text=opts.store_text)
        pool = await self._connect(batch)
        try:
            async with pool.connection() as conn:
                if not self._migrated:
                    await self._migrate(conn)
                async with conn.transaction():
                    cursor = await conn.execute(self._sql, rows.first)
                    counts = await cursor.fetchone()
                    moved = 0
                    for table, later in rows.later:
                        cursor = await conn.execute(self._upserts[table], {"rows": later})
                        moved += max(cursor.rowcount, 0)
        except PoolTimeout as exc:
            cause = self.connect_error
            if cause is not None:
                # the pool waited for a connection it could not make: say why
                raise self._failed(cause, batch, connecting=True) from exc
            raise SinkError(self._say(
                f"postgres at {self.url}: no connection within {opts.connect_timeout:g}s "
                f"({exc})")) from exc
        except psycopg.Error as exc:
            raise self._failed(exc, batch) from exc
        except UnicodeError as exc:
            # a character the connection's encoding cannot carry (the client encoding is
            # UTF8, so this should not happen): that event's text, never the text itself
            raise SinkError(self._say(f"postgres at {self.url}: a value could not be "
                                      f"encoded ({type(exc).__name__})"), permanent=True) from exc
        except OSError as exc:
            raise SinkError(self._say(f"postgres at {self.url}: {exc.strerror or exc}")) \
                from exc
        new, messages, batches, opt_outs = counts if counts is not None else (0, 0, 0, 0)
        self.written += new
        self.duplicates += len(batch) - new
        self.states_moved += messages + batches + opt_outs + moved
        if new < len(batch):
            log.info("postgres_duplicates_skipped", sink=self.name, events=len(batch) - new)

    async def _migrate(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Bring the schema to the newest version this a2pd knows, once per sink."""
        schema = self.schema
        known = MIGRATIONS[-1][0]
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(schema),))
                found = await (await conn.execute(SCHEMA_EXISTS, (schema,))).fetchone()
                if found is None:
                    await conn.execute(CREATE_SCHEMA.format(schema=schema))
                await conn.execute(CREATE_LEDGER.format(schema=schema))
                cursor = await conn.execute(CURRENT_VERSION.format(schema=schema))
                found = await cursor.fetchone()
                current = int(found[0]) if found else 0
                if current > known:
                    raise SinkError(self._say(
                        f"postgres at {self.url}: schema {schema} is at version {current}, "
                        f"newer than this a2pd knows ({known}): upgrade a2pd"))
                for version, description, sql in MIGRATIONS:
                    if version <= current:
                        continue
                    await conn.execute(sql.format(schema=schema))
                    await conn.execute(APPLIED.format(schema=schema), (version, description))
        except psycopg.Error as exc:
            # whatever went wrong, migrating again later can succeed: never permanent
            raise SinkError(self._say(
                f"postgres at {self.url}: migrating schema {schema} failed "
                f"({exc.sqlstate or type(exc).__name__}): {_first_line(exc)}")) from exc
        if current < known:
            log.info("postgres_migrated", sink=self.name, schema=schema,
                     from_version=current, to_version=known)
        self._migrated = True

    def _failed(self, exc: psycopg.Error, batch: Sequence[Event], *,
                connecting: bool = False) -> SinkError:
        state = exc.sqlstate or type(exc).__name__
        # nothing a server says while refusing a connection is about one event
        permanent = is_permanent(exc) and not connecting
        if exc.sqlstate in ("42P01", "3F000"):
            # the schema dropped under a running a2pd (to start over): create it again
            # before the retry
            self._migrated = False
        where = f" (batch of {len(batch)})" if permanent and len(batch) > 1 else ""
        verb = "refused" if exc.sqlstate else "failed"
        if connecting:
            verb = "could not connect"
        return SinkError(self._say(f"postgres at {self.url} {verb}{where} ({state}): "
                                   f"{_first_line(exc)}"), permanent=permanent)

    @staticmethod
    def _say(text: str) -> str:
        # the second line of defence: a message that carries a registered secret anyway
        return scrub(text.encode("utf-8", "replace")).decode("utf-8", "replace")

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def __repr__(self) -> str:
        return f"PostgresSink({self.name!r}, url={self.url!r}, schema={self.schema!r})"


def _system_cas(opts: PostgresOptions) -> str | None:
    """The CAs to verify the server with when the operator named none: the system's (libpq
    would look for ~/.postgresql/root.crt, a file a service user does not have)."""
    if not opts.sslmode.startswith("verify"):
        return None
    cafile = ssl.get_default_verify_paths().cafile
    if cafile and Path(cafile).is_file():
        return cafile
    # libpq 16 and newer know the system's store by this name (verify-full only)
    return "system" if psycopg.pq.version() >= 160000 else None


def _recording(sink: PostgresSink) -> type[psycopg.AsyncConnection[Any]]:
    """A connection class that tells ``sink`` why its pool could not connect (the pool
    itself only times out)."""

    class Connection(psycopg.AsyncConnection[Any]):
        @classmethod
        async def connect(cls, *args: Any, **kwargs: Any) -> Connection:
            try:
                conn = await super().connect(*args, **kwargs)
            except psycopg.Error as exc:
                sink.connect_error = exc
                raise
            sink.connect_error = None
            return conn

    return Connection


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
