"""The PostgreSQL sink's tables, their versioned migrations, and the one statement that
writes a delivered batch.

Every name is put into SQL by ``str.format`` from a schema name validated against
``SCHEMA_PATTERN`` (lower-case letters, digits, underscores): never from an event.

Tables (``{schema}``, default ``a2pd``):

    events              every notification once per uuid: kind, time, backfilled, record
    messages            each message's current state, by message id
    batches             each batch's current state, by batch id
    opt_outs            each (from, to) pair's current opt-out state
    schema_migrations   the versions applied, one row each

A state row only moves forward. A message or batch is replaced only by an event whose
``(last_modified_time, status_rank)`` is greater than the row's: a replayed, late or
backfilled event older than the stored state changes nothing, and a tie in time is broken
by the status order (messages: Queued < Sent < Delivered, DeliveryFailed, SendingFailed,
Received; batches: Queued < Processing < Sent < Completed). An opt-out pair moves to a
later ``changed_at`` only; at the same time an opt-out wins over an opt-in (a suppression
list errs on the side of not sending). Fields a later event does not carry (a status update
without the text or the cost) keep their stored values.
"""

from __future__ import annotations

import hashlib
from typing import Final

__all__ = [
    "APPLIED",
    "BATCH_RANK",
    "CREATE_LEDGER",
    "CREATE_SCHEMA",
    "CURRENT_VERSION",
    "MESSAGE_RANK",
    "MIGRATIONS",
    "SCHEMA_EXISTS",
    "TEXT_CLEARED",
    "TEXT_KEPT",
    "UPSERTS",
    "WRITE_BATCH",
    "Migration",
    "lock_key",
    "statements",
]

#: status → its place in a message's life (documented statuses; anything else is 0)
MESSAGE_RANK: Final = {"Queued": 1, "Sent": 2, "Delivered": 3, "DeliveryFailed": 3,
                       "SendingFailed": 3, "Received": 3}
BATCH_RANK: Final = {"Queued": 1, "Processing": 2, "Sent": 3, "Completed": 4}

Migration = tuple[int, str, str]

#: (version, description, SQL). Applied in order, each in the transaction that holds the
#: schema's advisory lock; never edited once released (a change is a new version).
MIGRATIONS: Final[tuple[Migration, ...]] = (
    (1, "events, messages, batches, opt_outs", """
CREATE TABLE {schema}.events (
    uuid text PRIMARY KEY,
    kind text NOT NULL,
    event_time timestamptz,
    backfilled boolean NOT NULL DEFAULT false,
    subscription_id text,
    record jsonb NOT NULL,
    stored_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_kind_time ON {schema}.events (kind, event_time);
CREATE INDEX events_stored_at ON {schema}.events (stored_at);

CREATE TABLE {schema}.messages (
    id text PRIMARY KEY,
    batch_id text,
    direction text NOT NULL,
    from_number text NOT NULL,
    to_numbers text[] NOT NULL,
    status text NOT NULL,
    status_rank smallint NOT NULL,
    error_code text,
    cost numeric,
    segment_count integer,
    text text,
    creation_time timestamptz,
    last_modified_time timestamptz,
    event_uuid text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_batch_id ON {schema}.messages (batch_id) WHERE batch_id IS NOT NULL;
CREATE INDEX messages_creation_time ON {schema}.messages (creation_time);
CREATE INDEX messages_status ON {schema}.messages (status, last_modified_time);

CREATE TABLE {schema}.batches (
    id text PRIMARY KEY,
    from_number text,
    status text NOT NULL,
    status_rank smallint NOT NULL,
    batch_size integer,
    processed_count integer,
    rejected_count integer,
    cost numeric,
    creation_time timestamptz,
    last_modified_time timestamptz,
    event_uuid text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX batches_creation_time ON {schema}.batches (creation_time);

CREATE TABLE {schema}.opt_outs (
    from_number text NOT NULL,
    to_number text NOT NULL,
    opted_out boolean NOT NULL,
    changed_at timestamptz NOT NULL,
    event_uuid text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (from_number, to_number)
);
CREATE INDEX opt_outs_to_number ON {schema}.opt_outs (to_number);
"""),
)

#: the schema is created only when missing: CREATE SCHEMA IF NOT EXISTS needs the CREATE
#: privilege on the database even when the schema is there (an operator may create it and
#: give it to a2pd's user instead)
SCHEMA_EXISTS: Final = "SELECT 1 FROM pg_namespace WHERE nspname = %s"
CREATE_SCHEMA: Final = "CREATE SCHEMA {schema}"
CREATE_LEDGER: Final = """
CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
    version integer PRIMARY KEY,
    description text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""

CURRENT_VERSION: Final = "SELECT coalesce(max(version), 0) FROM {schema}.schema_migrations"
APPLIED: Final = ("INSERT INTO {schema}.schema_migrations (version, description) "
                  "VALUES (%s, %s)")


def lock_key(schema: str) -> int:
    """The advisory lock (a signed 64-bit key) every a2pd migrating ``schema`` takes."""
    digest = hashlib.blake2b(f"a2pd migrations {schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


#: Each state table's upsert: rows from a JSON array of rows (``%(<param>)s``; a row is an
#: array in the order of the columns it names, times as seconds since the epoch), each
#: applied only if it is newer than the stored row, so applying one twice changes nothing.
#: ``{text}`` is how an update treats the message text.
UPSERTS: Final = {
    "messages": """
    INSERT INTO {schema}.messages AS m (id, batch_id, direction, from_number, to_numbers,
        status, status_rank, error_code, cost, segment_count, text, creation_time,
        last_modified_time, event_uuid)
    SELECT r->>0, r->>1, r->>2, r->>3, string_to_array(r->>4, ','), r->>5,
        (r->>6)::smallint, r->>7, (r->>8)::numeric, (r->>9)::integer, r->>10,
        to_timestamp((r->>11)::float8), to_timestamp((r->>12)::float8), r->>13
    FROM jsonb_array_elements(%({param})s::jsonb) AS rows(r)
    ON CONFLICT (id) DO UPDATE SET
        batch_id = COALESCE(EXCLUDED.batch_id, m.batch_id),
        direction = EXCLUDED.direction,
        from_number = EXCLUDED.from_number,
        to_numbers = EXCLUDED.to_numbers,
        status = EXCLUDED.status,
        status_rank = EXCLUDED.status_rank,
        error_code = COALESCE(EXCLUDED.error_code, m.error_code),
        cost = COALESCE(EXCLUDED.cost, m.cost),
        segment_count = COALESCE(EXCLUDED.segment_count, m.segment_count),
        text = {text},
        creation_time = COALESCE(EXCLUDED.creation_time, m.creation_time),
        last_modified_time = COALESCE(EXCLUDED.last_modified_time, m.last_modified_time),
        event_uuid = EXCLUDED.event_uuid,
        updated_at = now()
    WHERE (COALESCE(EXCLUDED.last_modified_time, '-infinity'), EXCLUDED.status_rank)
        > (COALESCE(m.last_modified_time, '-infinity'), m.status_rank)
    RETURNING 1""",
    "batches": """
    INSERT INTO {schema}.batches AS b (id, from_number, status, status_rank, batch_size,
        processed_count, rejected_count, cost, creation_time, last_modified_time,
        event_uuid)
    SELECT r->>0, r->>1, r->>2, (r->>3)::smallint, (r->>4)::integer, (r->>5)::integer,
        (r->>6)::integer, (r->>7)::numeric, to_timestamp((r->>8)::float8),
        to_timestamp((r->>9)::float8), r->>10
    FROM jsonb_array_elements(%({param})s::jsonb) AS rows(r)
    ON CONFLICT (id) DO UPDATE SET
        from_number = COALESCE(EXCLUDED.from_number, b.from_number),
        status = EXCLUDED.status,
        status_rank = EXCLUDED.status_rank,
        batch_size = COALESCE(EXCLUDED.batch_size, b.batch_size),
        processed_count = COALESCE(EXCLUDED.processed_count, b.processed_count),
        rejected_count = COALESCE(EXCLUDED.rejected_count, b.rejected_count),
        cost = COALESCE(EXCLUDED.cost, b.cost),
        creation_time = COALESCE(EXCLUDED.creation_time, b.creation_time),
        last_modified_time = COALESCE(EXCLUDED.last_modified_time, b.last_modified_time),
        event_uuid = EXCLUDED.event_uuid,
        updated_at = now()
    WHERE (COALESCE(EXCLUDED.last_modified_time, '-infinity'), EXCLUDED.status_rank,
           COALESCE(EXCLUDED.processed_count, -1))
        > (COALESCE(b.last_modified_time, '-infinity'), b.status_rank,
           COALESCE(b.processed_count, -1))
    RETURNING 1""",
    # an opt-out without a readable time is dated when it is stored
    "opt_outs": """
    INSERT INTO {schema}.opt_outs AS o (from_number, to_number, opted_out, changed_at,
                                        event_uuid)
    SELECT r->>0, r->>1, (r->>2)::boolean, COALESCE(to_timestamp((r->>3)::float8), now()),
        r->>4
    FROM jsonb_array_elements(%({param})s::jsonb) AS rows(r)
    ON CONFLICT (from_number, to_number) DO UPDATE SET
        opted_out = EXCLUDED.opted_out,
        changed_at = EXCLUDED.changed_at,
        event_uuid = EXCLUDED.event_uuid,
        updated_at = now()
    WHERE (EXCLUDED.changed_at, EXCLUDED.opted_out) > (o.changed_at, o.opted_out)
    RETURNING 1""",
}
#: an update keeps the stored text when the event has none, or (``store_text = false``)
#: clears it
TEXT_KEPT: Final = "COALESCE(EXCLUDED.text, m.text)"
TEXT_CLEARED: Final = "NULL"

#: One statement per delivered batch. Its parameters (``postgres.batch_rows``):
#: ``records``, the events' records one per line; ``events``, a JSON array of the events'
#: other columns (uuid, kind, time, backfilled, subscription); ``messages``, ``batches``,
#: ``opt_outs``, each key's first state in the batch (``UPSERTS``; later ones follow in
#: statements of their own, in order, in the same transaction). The events are inserted
#: unless their uuid is stored already. Returns how many events were new and how many state
#: rows moved.
WRITE_BATCH: Final = """
WITH inserted AS (
    INSERT INTO {schema}.events AS e (uuid, kind, event_time, backfilled, subscription_id,
                                      record)
    SELECT h->>0, h->>1, to_timestamp((h->>2)::float8), (h->>3)::boolean, h->>4,
        r.line::jsonb
    FROM jsonb_array_elements(%(events)s::jsonb) WITH ORDINALITY AS heads(h, n)
    JOIN unnest(string_to_array(%(records)s, E'\\n')) WITH ORDINALITY AS r(line, n)
        USING (n)
    ON CONFLICT (uuid) DO NOTHING
    RETURNING e.uuid
),
message_rows AS ({messages}),
batch_rows AS ({batches}),
opt_out_rows AS ({opt_outs})
SELECT (SELECT count(*) FROM inserted), (SELECT count(*) FROM message_rows),
       (SELECT count(*) FROM batch_rows), (SELECT count(*) FROM opt_out_rows)
"""


def statements(schema: str, *, keep_text: bool) -> tuple[str, dict[str, str]]:
    """The batch's statement, and each state table's upsert on its own (parameter
    ``rows``), for ``schema`` (a validated name)."""
    text = TEXT_KEPT if keep_text else TEXT_CLEARED
    first = {table: sql.format(schema=schema, param=table, text=text)
             for table, sql in UPSERTS.items()}
    alone = {table: sql.format(schema=schema, param="rows", text=text)
             for table, sql in UPSERTS.items()}
    return WRITE_BATCH.format(schema=schema, **first), alone
