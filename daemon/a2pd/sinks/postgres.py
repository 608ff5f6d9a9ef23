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

import json
import logging as std_logging
import math
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, NamedTuple
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from a2pd.errors import SinkError
from a2pd.events import (
    BatchBody,
    Event,
    MessageBody,
    OptOutBody,
    is_backfilled,
    pair_time,
    parse_time,
    record_json,
)
from a2pd.logging import get_logger, register_secret, scrub
from a2pd.sinks import Sink, SinkContext
from a2pd.sinks.postgres_options import PostgresOptions
from a2pd.sinks.postgres_schema import (
    APPLIED,
    BATCH_RANK,
    CREATE_LEDGER,
    CREATE_SCHEMA,
    CURRENT_VERSION,
    MESSAGE_RANK,
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


#: the columns of each JSON row of the statement's parameters (``postgres_schema``)
EVENT_COLUMNS: Final = ("uuid", "kind", "event_time", "backfilled", "subscription_id")
MESSAGE_COLUMNS: Final = ("id", "batch_id", "direction", "from_number", "to_numbers",
                          "status", "status_rank", "error_code", "cost", "segment_count",
                          "text", "creation_time", "last_modified_time", "event_uuid")
BATCH_COLUMNS: Final = ("id", "from_number", "status", "status_rank", "batch_size",
                        "processed_count", "rejected_count", "cost", "creation_time",
                        "last_modified_time", "event_uuid")
OPT_OUT_COLUMNS: Final = ("from_number", "to_number", "opted_out", "changed_at",
                          "event_uuid")
STATE_TABLES: Final = ("messages", "batches", "opt_outs")


def _epoch(text: str | None, absent: float | None = None) -> float | None:
    """A time field as seconds since the epoch (what the statement's ``to_timestamp``
    takes: a float is far cheaper to write than an ISO text); ``absent`` when the field is
    absent, None when it names no real time (a state of unknown time is older than any)."""
    if text is None:
        return absent
    when = parse_time(text)
    return None if when is None else when.timestamp()


def _finite(value: float | None) -> float | None:
    # JSON has no NaN or infinity (the record writes them as null; so does this)
    return value if value is None or math.isfinite(value) else None


def _without_text(record: bytes) -> str:
    """A message's record with its text removed (``store_text = false``)."""
    doc = json.loads(record)
    body = doc.get("body")
    if isinstance(body, dict):
        body.pop("text", None)
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


class BatchRows(NamedTuple):
    """The parameters of the statements that write one batch: ``first`` for the batch's
    statement (``postgres_schema.WRITE_BATCH``), and ``later``: each state table's rows
    for keys that occur again in the batch, one list of rows per further occurrence."""

    first: dict[str, str]
    later: list[tuple[str, str]]


def _rounds(states: dict[Any, list[list[Any]]]) -> list[str]:
    """A key's states in the order the batch holds them, as rounds: round k holds every
    key's k-th state (so no statement touches a row twice, and each state is weighed
    against the one before it, as if the events had come one by one); each round in key
    order (two writers lock rows in the same order)."""
    rounds: list[list[list[Any]]] = []
    for key in sorted(states):
        for k, row in enumerate(states[key]):
            if k == len(rounds):
                rounds.append([])
            rounds[k].append(row)
    return [json.dumps(rows, separators=(",", ":")) for rows in rounds]


def batch_rows(batch: Sequence[Event], *, keep_text: bool = True) -> BatchRows:
    """The parameters that write ``batch``: the events' records as the text the journal
    keeps (never parsed and serialised again, unless the text must go), one per line
    (compact JSON has no raw newline); JSON arrays of rows (``*_COLUMNS``, times as seconds
    since the epoch) for the events' other columns and the state rows; the events in uuid
    order (two writers insert in the same order)."""
    events: list[tuple[str, list[Any], str]] = []
    states: dict[str, dict[Any, list[list[Any]]]] = {table: {} for table in STATE_TABLES}
    for event in batch:
        stamp = _epoch(event.timestamp)
        body = event.body
        record = record_json(event)
        if isinstance(body, MessageBody):
            if not keep_text and body.text is not None:
                text = _without_text(record)
            else:
                text = record.decode()
            rank = MESSAGE_RANK.get(body.message_status, 0)
            states["messages"].setdefault(body.id, []).append([
                body.id, body.batch_id, body.direction, body.from_, ",".join(body.to),
                body.message_status, rank, body.error_code, _finite(body.cost),
                body.segment_count, body.text if keep_text else None,
                _epoch(body.creation_time),
                # a state without its own time is as old as the notification that carried it
                _epoch(body.last_modified_time, stamp), event.uuid])
        else:
            text = record.decode()
            if isinstance(body, BatchBody):
                states["batches"].setdefault(body.id, []).append([
                    body.id, body.from_, body.status, BATCH_RANK.get(body.status, 0),
                    body.batch_size, body.processed_count,
                    None if body.rejected is None else len(body.rejected), _finite(body.cost),
                    _epoch(body.creation_time), _epoch(body.last_modified_time, stamp),
                    event.uuid])
            elif isinstance(body, OptOutBody):
                pair = pair_time(event)
                states["opt_outs"].setdefault((body.from_, body.to), []).append([
                    body.from_, body.to, body.active, pair[1] if pair else None, event.uuid])
        events.append((event.uuid, [event.uuid, event.kind, stamp, is_backfilled(event),
                                    event.subscription_id], text))
    events.sort(key=lambda item: item[0])
    first = {"events": json.dumps([head for _, head, _ in events], separators=(",", ":")),
             "records": "\n".join(text for _, _, text in events)}
    later: list[tuple[str, str]] = []
    for table in STATE_TABLES:
        rounds = _rounds(states[table]) or ["[]"]
        first[table] = rounds[0]
        later.extend((table, rows) for rows in rounds[1:])
    return BatchRows(first, later)


class PostgresSink(Sink):
    """Writes each event once per uuid, and the state it carries, to PostgreSQL."""

    type_name = "postgres"
    Options = PostgresOptions

    def __init__(self, name: str, options: PostgresOptions, context: SinkContext) -> None:
        super().__init__(name, options, context)
        password = options.resolved_password
        if password is not None:
            register_secret(password.get_secret_value(), permanent=True)
        parts = urlsplit(options.url)
        if parts.password:
            register_secret(unquote(parts.password), permanent=True)
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
