"""The PostgreSQL sink against a real PostgreSQL server on loopback (a throwaway cluster run
as an unprivileged user): migrations, one row per uuid, state that only moves forward, text
storage off, error classes and dead letters, outages, TLS, config and secrets."""

from __future__ import annotations

import io
import json
import secrets
from pathlib import Path
from typing import Any

import anyio
import pytest
import trustme

from a2pd import config, events
from a2pd.errors import ConfigError, SinkError
from a2pd.logging import configure
from a2pd.pipeline import Pipeline
from a2pd.sinks import SinkContext, sink_class
from a2pd.sinks.postgres import PostgresOptions, PostgresSink, batch_rows, is_permanent
from a2pd.sinks.postgres_rows import MESSAGE_COLUMNS
from a2pd.sinks.postgres_schema import MIGRATIONS
from tests.harness import (
    TIMEOUT,
    open_test_journal,
    router_all,
    sample_event,
    sample_events,
    sink_config,
)
from tests.postgres_server import PostgresServer, make_sink, postgres_server


async def rows(server: PostgresServer, query: str, *args: Any) -> list[tuple[Any, ...]]:
    async with await server.connect() as conn:
        cursor = await conn.execute(query, args or None)
        return await cursor.fetchall()


def message(uuid: str, status: str, modified: str, msg_id: str = "m1",
            **body: Any) -> events.Event:
    return sample_event("outbound.json", uuid=uuid, id=msg_id, messageStatus=status,
                        lastModifiedTime=modified, **body)


def batch(uuid: str, status: str, modified: str, processed: int,
          batch_id: str = "b1") -> events.Event:
    return sample_event("batch.json", uuid=uuid, id=batch_id, status=status,
                        lastModifiedTime=modified, processedCount=processed)


def opt(uuid: str, active: bool, stamp: str, **extra: Any) -> events.Event:
    return sample_event("optout.json", uuid=uuid, envelope={"timestamp": stamp},
                        active=active, **extra)


async def test_every_uuid_is_stored_once_however_often_a_batch_is_resent(
        tmp_path: Path) -> None:
    """Resent and overlapping batches add no row: one per uuid, the record as jsonb."""
    stream = sample_events(50)
    async with postgres_server(tmp_path) as server:
        sink = make_sink(server)
        try:
            await sink.send(stream[:30])
            await sink.send(stream[:30])
            await sink.send(stream[20:])
        finally:
            await sink.aclose()
        got = await rows(server, "SELECT uuid, kind, event_time, backfilled, record "
                                 "FROM a2pd.events ORDER BY uuid")
        versions = await rows(server, "SELECT version FROM a2pd.schema_migrations")
    assert [r[0] for r in got] == [e.uuid for e in stream]
    assert (sink.written, sink.duplicates) == (50, 40)
    _uuid, kind, when, backfilled, record = got[0]
    assert (kind, backfilled) == ("outbound", False)
    assert when == stream[0].time
    assert record == json.loads(events.record_json(stream[0]))
    assert versions == [(m[0],) for m in MIGRATIONS]


async def test_two_sinks_migrating_at_once_apply_each_version_once(tmp_path: Path) -> None:
    """Two a2pd starting together on an empty database (the advisory lock serialises
    them): the schema is created once, and both write."""
    async with postgres_server(tmp_path) as server:
        first, second = make_sink(server, "one"), make_sink(server, "two")
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(first.send, sample_events(20, uuid="a{:03d}".format))
                tg.start_soon(second.send, sample_events(20, uuid="b{:03d}".format))
        finally:
            await first.aclose()
            await second.aclose()
        versions = await rows(server, "SELECT version FROM a2pd.schema_migrations")
        count = await rows(server, "SELECT count(*) FROM a2pd.events")
    assert versions == [(m[0],) for m in MIGRATIONS]
    assert count == [(40,)]


async def test_message_and_batch_states_only_move_forward(tmp_path: Path) -> None:
    """Late, replayed and backfilled events older than the stored state never move it back;
    a tie in time goes to the later status; fields a later event lacks are kept."""
    t1, t2, t3 = (f"2026-03-01T10:00:0{i}.000Z" for i in (1, 2, 3))
    async with postgres_server(tmp_path) as server:
        sink = make_sink(server)
        try:
            # in one batch, out of order: the newest wins
            await sink.send([message("e1", "Sent", t2, cost=0.01),
                             message("e2", "Delivered", t3, cost=None),
                             message("e3", "Queued", t1)])
            # a late Sent, a backfilled Queued, a replay of the Delivered: nothing moves
            await sink.send([message("e4", "Sent", t1),
                             sample_event("outbound.json", uuid="e5", id="m1",
                                          messageStatus="Queued", lastModifiedTime=t2,
                                          envelope={"backfilled": True}),
                             message("e2", "Delivered", t3)])
            # a tie in time: Queued then Sent at t1 for m2, then Sent then Queued for m3
            await sink.send([message("f1", "Queued", t1, "m2")])
            await sink.send([message("f2", "Sent", t1, "m2")])
            await sink.send([message("g1", "Sent", t1, "m3")])
            await sink.send([message("g2", "Queued", t1, "m3")])
            await sink.send([message("h1", "SendingFailed", t1, "m3",
                                     errorCode="SMS-CAR-411")])
            # batches: Processing 1/3, Completed, then a late Processing 2/3
            await sink.send([batch("b1", "Processing", t1, 1), batch("b2", "Completed", t3, 3)])
            await sink.send([batch("b3", "Processing", t2, 2)])
        finally:
            await sink.aclose()
        messages = await rows(server, "SELECT id, status, last_modified_time, cost, "
                                      "event_uuid, error_code FROM a2pd.messages ORDER BY id")
        batches = await rows(server, "SELECT id, status, processed_count, event_uuid "
                                     "FROM a2pd.batches")
        backfilled = await rows(server, "SELECT backfilled FROM a2pd.events WHERE uuid='e5'")
    by_id = {m[0]: m for m in messages}
    assert by_id["m1"][1:3] == ("Delivered", events.parse_time(t3))
    assert by_id["m1"][3] is not None
    assert float(by_id["m1"][3]) == 0.01  # kept from e1: e2 has no cost
    assert by_id["m1"][4] == "e2"
    assert by_id["m2"][1] == "Sent"
    assert by_id["m3"][1] == "SendingFailed"
    assert by_id["m3"][5] == "SMS-CAR-411"
    assert batches == [("b1", "Completed", 3, "b2")]
    assert backfilled == [(True,)]
    assert (sink.written, sink.duplicates) == (13, 1)


def _sequences() -> list[list[events.Event]]:
    """Events for one message or batch in orders that once came out differently in one
    batch than one by one (a batch's states for a key were merged into one row)."""
    t1, t2, t3 = (f"2026-03-01T10:00:0{i}.000Z" for i in (1, 2, 3))
    return [
        # a tie in time: the first state of the highest rank stays
        [message("a1", "Delivered", t1), message("a2", "DeliveryFailed", t1,
                                                 errorCode="E1")],
        # a stale state's fields never fill in a newer one's
        [message("b1", "Sent", t2, msg_id="m2", cost=5.0),
         message("b2", "Queued", t1, msg_id="m2", cost=1.0, errorCode="STALE"),
         message("b3", "Delivered", t3, msg_id="m2", cost=None)],
        [message("c1", "Delivered", t3, msg_id="m3", cost=None, text=None),
         message("c2", "Sent", t1, msg_id="m3", cost=0.5, errorCode="OLD")],
        # one key twice with the same state: the first one stays
        [message("d1", "Sent", t1, msg_id="m4", text="first", cost=0.1),
         message("d2", "Sent", t1, msg_id="m4", text="second", cost=0.2)],
        # a late state whose time is written "z" (read now) or names no real day
        [message("e1", "Delivered", t3, msg_id="m5"),
         sample_event(uuid="e2", id="m5", messageStatus="Sent",
                      lastModifiedTime="2026-03-01T10:00:01.000z",
                      envelope={"timestamp": "2026-03-01T10:05:00.000Z"}),
         sample_event(uuid="e3", id="m5", messageStatus="Queued",
                      lastModifiedTime="2026-02-30T10:00:01.000Z",
                      envelope={"timestamp": "2026-03-01T10:06:00.000Z"})],
        [batch("f1", "Completed", t2, 3, "b9"),
         sample_event("batch.json", uuid="f2", id="b9", status="Queued",
                      lastModifiedTime=t1, batchSize=999, cost=9.99),
         batch("f3", "Completed", t3, 3, "b9")],
    ]


async def test_a_batch_writes_the_states_its_events_would_one_by_one(
        tmp_path: Path) -> None:
    """However the journal cuts the events into batches (and the pipeline narrows a refused
    batch down to single events), the state rows end the same: each state is weighed
    against the one before it, as if the events came one by one."""
    query_messages = ("SELECT id, status, error_code, cost, text, event_uuid, "
                      "last_modified_time FROM {}.messages ORDER BY id")
    query_batches = ("SELECT id, status, batch_size, cost, event_uuid FROM {}.batches "
                     "ORDER BY id")
    async with postgres_server(tmp_path) as server:
        together = make_sink(server, "together", schema="together")
        alone = make_sink(server, "alone", schema="alone")
        try:
            for sequence in _sequences():
                await together.send(sequence)
                for event in sequence:
                    await alone.send([event])
        finally:
            await together.aclose()
            await alone.aclose()
        found = {schema: (await rows(server, query_messages.format(schema)),
                          await rows(server, query_batches.format(schema)))
                 for schema in ("together", "alone")}
    assert found["together"] == found["alone"]
    messages, batches = found["alone"]
    by_id = {m[0]: m[1:] for m in messages}
    assert by_id["m1"][:2] == ("Delivered", None)
    assert by_id["m2"][:2] == ("Delivered", None)
    assert float(by_id["m2"][2]) == 5.0
    assert by_id["m5"][4] == "e1"
    assert batches[0][1:3] == ("Completed", 3)


async def test_opt_out_pairs_keep_their_latest_state(tmp_path: Path) -> None:
    """A pair moves to a later state only; at one instant an opt-out beats an opt-in."""
    async with postgres_server(tmp_path) as server:
        sink = make_sink(server)
        try:
            await sink.send([opt("o1", True, "2026-03-01T10:00:02.000Z")])
            await sink.send([opt("o2", False, "2026-03-01T10:00:01.000Z")])  # late opt-in
            after_late = await rows(server, "SELECT opted_out FROM a2pd.opt_outs")
            await sink.send([opt("o3", False, "2026-03-01T10:00:03.000Z"),
                             opt("o4", True, "2026-03-01T10:00:03.000Z")])
            tie = await rows(server, "SELECT opted_out, event_uuid FROM a2pd.opt_outs")
            # a backfilled record orders by its own lastModifiedTime
            await sink.send([opt("o5", False, "2026-03-01T10:00:09.000Z",
                                 lastModifiedTime="2026-03-01T10:00:04.000Z")])
            final = await rows(server, "SELECT from_number, to_number, opted_out, changed_at "
                                       "FROM a2pd.opt_outs")
        finally:
            await sink.aclose()
    assert after_late == [(True,)]
    assert tie == [(True, "o4")]
    assert final == [("+16505550100", "+12125550100", False,
                      events.parse_time("2026-03-01T10:00:04.000Z"))]


async def test_text_is_not_stored_when_turned_off(tmp_path: Path) -> None:
    """store_text = false: no message text in the messages table or in the records."""
    async with postgres_server(tmp_path) as server:
        sink = make_sink(server, store_text=False)
        try:
            await sink.send(sample_events(3, text="my PIN is 1234"))
        finally:
            await sink.aclose()
        texts = await rows(server, "SELECT text FROM a2pd.messages")
        records = await rows(server, "SELECT record::text FROM a2pd.events")
    assert texts == [(None,)]
    assert len(records) == 3
    assert all("1234" not in r[0] and '"text"' not in r[0] for r in records)


async def test_an_opt_out_without_a_readable_time_still_suppresses(tmp_path: Path) -> None:
    """An opt-out whose notification has no usable time is dated when it is stored: it
    reaches the suppression list (it was kept in the events table only)."""
    async with postgres_server(tmp_path) as server:
        sink = make_sink(server)
        try:
            await sink.send([opt("p1", True, "2026-02-30T10:00:00.000Z")])
        finally:
            await sink.aclose()
        found = await rows(server, "SELECT opted_out, changed_at > now() - interval '1 hour'"
                                   " FROM a2pd.opt_outs")
    assert found == [(True, True)]


async def test_turning_text_storage_off_clears_the_text_and_takes_any_text(
        tmp_path: Path) -> None:
    """store_text = false after text was stored: the message's next state clears it; a text
    with a NUL (which PostgreSQL refuses) is dropped before it reaches the server."""
    async with postgres_server(tmp_path) as server:
        sink = make_sink(server)
        try:
            await sink.send([message("t1", "Sent", "2026-03-01T10:00:01.000Z",
                                     text="my PIN is 1234")])
        finally:
            await sink.aclose()
        sink = make_sink(server, store_text=False)
        try:
            await sink.send([message("t2", "Delivered", "2026-03-01T10:00:02.000Z",
                                     text="my PIN is 1234"),
                             message("t3", "Sent", "2026-03-01T10:00:01.000Z", "m2",
                                     text="a NUL \x00 here")])
        finally:
            await sink.aclose()
        texts = await rows(server, "SELECT id, text FROM a2pd.messages ORDER BY id")
        stored = await rows(server, "SELECT uuid FROM a2pd.events WHERE record::text "
                                    "LIKE '%%PIN%%' OR record::text LIKE '%%NUL%%'")
    assert texts == [("m1", None), ("m2", None)]
    assert stored == [("t1",)]


async def test_a_database_in_another_encoding_dead_letters_what_it_cannot_hold(
        tmp_path: Path) -> None:
    """A LATIN1 database: an emoji cannot be stored there (SQLSTATE 22P05, permanent for
    that event); it was a UnicodeEncodeError that escaped the sink, and with it the text."""
    async with postgres_server(tmp_path) as server:
        async with await server.connect() as conn:
            await conn.execute("CREATE DATABASE latin ENCODING 'LATIN1' LC_COLLATE 'C' "
                               "LC_CTYPE 'C' TEMPLATE template0")
        sink = make_sink(server, url=server.url_for("latin"))
        try:
            await sink.send([message("l1", "Sent", "2026-03-01T10:00:01.000Z",
                                     text="caf\u00e9")])
            with pytest.raises(SinkError) as caught:
                await sink.send([message("l2", "Sent", "2026-03-01T10:00:01.000Z", "m2",
                                         text="thumbs \U0001f44d")])
        finally:
            await sink.aclose()
        async with await server.connect("latin") as conn:
            cursor = await conn.execute("SELECT text FROM a2pd.messages")
            texts = await cursor.fetchall()
    assert caught.value.permanent
    assert "22P05" in caught.value.reason
    assert "thumbs" not in caught.value.reason
    assert texts == [("caf\u00e9",)]


async def test_a_schema_created_for_a2pd_needs_no_privilege_on_the_database(
        tmp_path: Path) -> None:
    """The operator creates the schema and gives it to a2pd's user, who may not create
    anything in the database: a2pd migrates and writes (it asked for CREATE on the
    database, and was refused, even with the schema there). A database name in the URL is
    percent-decoded."""
    async with postgres_server(tmp_path) as server:
        url = await server.create_database("sms events")
        async with await server.connect("sms events") as conn:
            await conn.execute("CREATE ROLE writer LOGIN PASSWORD 'writer-pw-123'")
            await conn.execute("REVOKE ALL ON DATABASE \"sms events\" FROM PUBLIC")
            await conn.execute("GRANT CONNECT ON DATABASE \"sms events\" TO writer")
            await conn.execute("CREATE SCHEMA sms AUTHORIZATION writer")
        assert "sms%20events" in url
        sink = make_sink(server, url=url.replace("a2pd@", "writer@"),
                         password="writer-pw-123", schema="sms")
        try:
            await sink.send(sample_events(3))
        finally:
            await sink.aclose()
        async with await server.connect("sms events") as conn:
            cursor = await conn.execute("SELECT count(*) FROM sms.events")
            count = await cursor.fetchone()
    assert count == (3,)


def test_verifying_the_server_without_a_ca_file_uses_the_systems_cas() -> None:
    """sslmode verify-full or verify-ca without tls_ca_file: the system's CAs, as the
    example config says (libpq would read ~/.postgresql/root.crt)."""
    for mode in ("verify-full", "verify-ca"):
        sink = PostgresSink("pg", PostgresOptions.model_validate(
            {"url": "postgresql://db.example:5432/sms", "sslmode": mode}, context={"env": {}}),
            SinkContext(state_dir=Path(".")))
        root = sink._connection_kwargs()["sslrootcert"]
        assert root == "system" or Path(root).is_file(), root
    plain = PostgresSink("pg", PostgresOptions.model_validate(
        {"url": "postgresql://db.example:5432/sms"}, context={"env": {}}),
        SinkContext(state_dir=Path(".")))
    assert "sslrootcert" not in plain._connection_kwargs()


async def test_a_value_postgres_refuses_dead_letters_that_event_only(tmp_path: Path) -> None:
    """A NUL in a message text (jsonb refuses it, SQLSTATE 22P05) and a batch size beyond
    an integer (22003) are permanent for those events: through the pipeline they go to the
    dead letters, and every other event lands once, in order."""
    good = sample_events(30, uuid="g{:03d}".format)
    nul = sample_event(uuid="bad-nul", id="mx", text="zero \x00 byte")
    huge = sample_event("batch.json", uuid="bad-int", batchSize=2**40)
    stream = [*good[:10], nul, *good[10:20], huge, *good[20:]]
    journal = await open_test_journal(tmp_path / "journal.db")
    async with postgres_server(tmp_path / "pg") as server:
        sink = make_sink(server)
        pipeline = Pipeline(router_all("pg"), {"pg": sink}, journal,
                            batch_max=64, retry_initial=0.001, retry_max=0.01)
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(pipeline.run)
                for event in stream:
                    await pipeline.ingest_event(event)
                with anyio.fail_after(TIMEOUT):
                    await pipeline.counters.wait_for("delivered.pg", 30)
                    await pipeline.counters.wait_for("dead_letters", 2)
                await pipeline.close()
            letters = await journal.letters.entries("pg")
        finally:
            await sink.aclose()
            await journal.aclose()
        stored = await rows(server, "SELECT uuid FROM a2pd.events ORDER BY uuid")
    assert [r[0] for r in stored] == [e.uuid for e in good]
    reasons = {letter.uuid: letter.reason for letter in letters}
    assert set(reasons) == {"bad-nul", "bad-int"}
    assert "22P05" in reasons["bad-nul"]
    assert "22003" in reasons["bad-int"]


async def test_outages_and_a_read_only_server_are_transient(tmp_path: Path) -> None:
    """A stopped server, a read-only server (as after a failover) and a schema dropped to
    start over are retried, never dead-lettered; the schema is created again, and once the
    server is back the batch lands once."""
    stream = sample_events(10)
    async with postgres_server(tmp_path) as server:
        sink = make_sink(server, connect_timeout=2, timeout=5)
        try:
            await sink.send(stream[:2])
            async with await server.connect() as conn:
                await conn.execute("ALTER DATABASE postgres SET default_transaction_read_only"
                                   " = on")
            await sink.aclose()  # new connections take the setting
            sink = make_sink(server, connect_timeout=2, timeout=5)
            with pytest.raises(SinkError) as readonly:
                await sink.send(stream)
            async with await server.connect("template1") as conn:
                await conn.execute("ALTER DATABASE postgres RESET default_transaction_read_only")
            await sink.aclose()
            sink = make_sink(server, connect_timeout=2, timeout=5)
            await sink.send(stream[:2])
            server.kill()
            with pytest.raises(SinkError) as down:
                await sink.send(stream)
            await server.restart()
            async with await server.connect() as conn:
                await conn.execute("DROP SCHEMA a2pd CASCADE")
            with pytest.raises(SinkError) as dropped:
                await sink.send([opt("o1", True, "2026-03-01T10:00:02.000Z")])
            await sink.send([opt("o1", True, "2026-03-01T10:00:02.000Z")])
            await sink.send(stream)
        finally:
            await sink.aclose()
        got = await rows(server, "SELECT uuid FROM a2pd.events WHERE kind = 'outbound' "
                                 "ORDER BY uuid")
    for failure, word in ((readonly, "25006"), (down, "postgres at"), (dropped, "42P01")):
        assert not failure.value.permanent, failure.value.reason
        assert word in failure.value.reason
    assert [r[0] for r in got] == [e.uuid for e in stream]


async def test_a_schema_newer_than_this_a2pd_is_never_written(tmp_path: Path) -> None:
    """A database migrated by a newer a2pd: the batch is refused (transient, the operator
    upgrades), and nothing is written into tables this version does not know."""
    async with postgres_server(tmp_path) as server:
        sink = make_sink(server)
        try:
            await sink.send(sample_events(1))
            async with await server.connect() as conn:
                await conn.execute("INSERT INTO a2pd.schema_migrations (version, description)"
                                   " VALUES (999, 'from the future')")
            await sink.aclose()
            sink = make_sink(server)
            with pytest.raises(SinkError) as caught:
                await sink.send(sample_events(3, uuid="n{:02d}".format))
        finally:
            await sink.aclose()
        count = await rows(server, "SELECT count(*) FROM a2pd.events")
    assert not caught.value.permanent
    assert "version 999" in caught.value.reason
    assert "upgrade a2pd" in caught.value.reason
    assert count == [(1,)]


async def test_schema_is_configurable(tmp_path: Path) -> None:
    """Two sinks with two schemas in one database keep apart."""
    async with postgres_server(tmp_path) as server:
        first = make_sink(server, "one", schema="sms_one")
        second = make_sink(server, "two", schema="sms_two")
        try:
            await first.send(sample_events(2))
            await second.send(sample_events(5))
        finally:
            await first.aclose()
            await second.aclose()
        counts = await rows(server, "SELECT (SELECT count(*) FROM sms_one.events), "
                                    "(SELECT count(*) FROM sms_two.events)")
    assert counts == [(2, 5)]


async def test_tls_verify_full(tmp_path: Path) -> None:
    """sslmode = verify-full with the CA: events land over TLS; a server whose certificate
    the CA did not sign is refused (transient: the operator fixes it)."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    tls = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "server.pem",
           "key": tmp_path / "server.key"}
    ca.cert_pem.write_to_path(tls["ca"])
    cert.cert_chain_pems[0].write_to_path(tls["cert"])
    cert.private_key_pem.write_to_path(tls["key"])
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(other)
    async with postgres_server(tmp_path / "pg", tls=tls) as server:
        sink = make_sink(server, sslmode="verify-full", tls_ca_file=str(tls["ca"]))
        wrong = make_sink(server, "wrong", sslmode="verify-full", tls_ca_file=str(other),
                          connect_timeout=2)
        try:
            await sink.send(sample_events(3))
            with pytest.raises(SinkError) as refused:
                await wrong.send(sample_events(1))
        finally:
            await sink.aclose()
            await wrong.aclose()
        ssl_used = await rows(server, "SELECT count(*) FROM a2pd.events")
    assert ssl_used == [(3,)]
    assert not refused.value.permanent


async def test_credentials_never_appear_in_logs_errors_or_reprs(tmp_path: Path) -> None:
    """The password from the environment, a wrong password, and one in the URL: refusals
    are transient and name the server without credentials; nothing prints a password."""
    logs = io.StringIO()
    configure(level="info", fmt="json", stream=logs)
    wrong = "wrong-" + secrets.token_hex(8)
    url_password = "urlpw-" + secrets.token_hex(8)
    try:
        async with postgres_server(tmp_path) as server:
            good = PostgresSink("pg", PostgresOptions.model_validate(
                {"url": server.url}, context={"env": {"A2PD_POSTGRES_PASSWORD":
                                                      server.password}}),
                SinkContext(state_dir=Path(".")))
            bad = make_sink(server, "bad", password=wrong, connect_timeout=2)
            try:
                await good.send(sample_events(2))
                with pytest.raises(SinkError) as refused:
                    await bad.send(sample_events(1))
            finally:
                await good.aclose()
                await bad.aclose()
            with pytest.raises(ConfigError) as bad_config:
                config.loads(config_text(
                    f"url = 'postgresql://a2pd:{url_password}@127.0.0.1:x/postgres'"), env={})
    finally:
        configure(level="info", fmt="json")
    assert not refused.value.permanent
    assert "could not connect" in refused.value.reason
    assert "password authentication failed" in refused.value.reason
    written = [logs.getvalue(), repr(good), repr(good.options), repr(bad.options),
               str(bad_config.value), refused.value.reason]
    for blob in written:
        for secret in (wrong, url_password, server.password):
            assert secret not in blob, blob


def test_rows_carry_each_records_bytes_and_the_state_fields() -> None:
    """The statements' parameters: the records as journaled, one per line, in uuid order;
    the events' other columns; a key's states in rounds, in the batch's order."""
    event = sample_event(uuid="x1", text="two\nlines")
    older = sample_event(uuid="x0", messageStatus="Sent", cost=0.5, text="first",
                         lastModifiedTime="2021-05-26T04:16:07.000Z")
    other = sample_event(uuid="x2", id="other", cost=float("nan"))
    rows = batch_rows([event, other, older])
    assert rows.first["records"].split("\n") == [events.record_json(e).decode()
                                                 for e in (older, event, other)]
    heads = json.loads(rows.first["events"])
    assert [h[:2] for h in heads] == [["x0", "outbound"], ["x1", "outbound"],
                                      ["x2", "outbound"]]
    assert event.time is not None
    assert heads[1][2] == event.time.timestamp()
    first = [dict(zip(MESSAGE_COLUMNS, row, strict=True))
             for row in json.loads(rows.first["messages"])]
    assert [(r["id"], r["event_uuid"]) for r in first] == [("7086", "x1"), ("other", "x2")]
    assert first[0] | {"creation_time": None} == {
        "id": "7086", "batch_id": None, "direction": "Outbound",
        "from_number": "+13102375087", "to_numbers": "+14842910071",
        "status": "Delivered", "status_rank": 3, "error_code": None, "cost": 0.007,
        "segment_count": 1, "text": "two\nlines", "creation_time": None,
        "last_modified_time": events.parse_time("2021-05-26T04:16:08.107007Z")
        .timestamp(),  # type: ignore[union-attr]
        "event_uuid": "x1"}
    assert first[1]["cost"] is None  # NaN: JSON has none
    [(table, later)] = rows.later
    assert table == "messages"
    assert [r[-1] for r in json.loads(later)] == ["x0"]
    assert json.loads(rows.first["batches"]) == json.loads(rows.first["opt_outs"]) == []
    hidden = batch_rows([event], keep_text=False).first
    assert json.loads(hidden["messages"])[0][MESSAGE_COLUMNS.index("text")] is None
    assert "text" not in json.loads(hidden["records"])["body"]


def test_error_classes() -> None:
    """Data and constraint errors are permanent; everything else is retried."""
    import psycopg
    from psycopg import errors

    assert is_permanent(errors.lookup("22P05")("x"))
    assert is_permanent(errors.lookup("23505")("x"))
    assert is_permanent(psycopg.DataError("a value psycopg could not adapt"))
    for state in ("08006", "57P01", "57P03", "25006", "40001", "53100", "28P01", "42501",
                  "XX000"):
        assert not is_permanent(errors.lookup(state)("x")), state
    assert not is_permanent(psycopg.OperationalError("connection failed"))


def config_text(sink_lines: str) -> str:
    """A config (only parsed) whose one sink ``db`` is a PostgreSQL sink with these lines."""
    return sink_config("db", f'type = "postgres"\n{sink_lines}')


@pytest.mark.parametrize(("lines", "key", "words"), [
    ("bogus = 1", "sinks.db.bogus", "unknown key"),
    ("url = 'redis://127.0.0.1:6379'", "sinks.db.url", "postgresql://"),
    ("url = 'postgresql://127.0.0.1:5432/db?sslmode=require'", "sinks.db.url", "no query"),
    ("url = 'postgresql://127.0.0.1:5432'", "sinks.db.url", "one database"),
    ("schema = 'A2P; DROP'", "sinks.db.schema", "lower-case name"),
    ("schema = '1st'", "sinks.db.schema", "not starting with a digit"),
    ("pool_size = 0", "sinks.db.pool_size", "greater than or equal"),
    ("timeout = '30d'", "sinks.db.timeout", "at most 1d"),
    ("sslmode = 'sometimes'", "sinks.db.sslmode", "'disable'"),
    ("sslmode = 'disable'\ntls_ca_file = '/etc/ca.pem'", "sinks.db", "sslmode"),
    ("tls_cert_file = '/etc/c.pem'", "sinks.db", "tls_key_file"),
    ("password_file = '/nonexistent/pw'", "sinks.db", "cannot read"),
    ("password = 'x1234567'\npassword_file = '/x'", "sinks.db", "not both"),
])
def test_bad_options_are_config_errors_with_their_key(lines: str, key: str,
                                                      words: str) -> None:
    """Every bad option is a ConfigError naming its key path (exit 78)."""
    with pytest.raises(ConfigError) as caught:
        config.loads(config_text(lines), env={})
    assert caught.value.exit_code == 78
    [problem] = caught.value.problems
    assert problem.key == key
    assert words in problem.reason


def test_defaults_and_registry() -> None:
    """type = "postgres" is a built-in; the defaults are the documented ones."""
    settings = config.loads(config_text(""), env={"A2PD_POSTGRES_PASSWORD": "from-env-123"})
    options = settings.sinks["db"].options
    assert isinstance(options, PostgresOptions)
    assert sink_class("postgres") is PostgresSink
    assert (options.schema_name, options.store_text, options.pool_size, options.sslmode) == \
        ("a2pd", True, 2, "prefer")
    assert options.resolved_password is not None
    assert options.resolved_password.get_secret_value() == "from-env-123"


def test_example_config_postgres_block_is_valid(tmp_path: Path) -> None:
    """The commented postgres sink in config/example.toml validates once uncommented (with
    its files in place), so the documentation cannot drift from the code."""
    text = (Path(__file__).parent.parent / "config" / "example.toml").read_text()
    begin, end = "# --- postgres sink example begin\n", "# --- postgres sink example end\n"
    block = text[text.index(begin) + len(begin):text.index(end)]
    uncommented = "\n".join(line.removeprefix("# ") for line in block.splitlines())
    documented = {line.split("=")[0].strip() for line in uncommented.splitlines()
                  if " = " in line and not line.startswith(("#", "type"))}
    options = {field.alias or name for name, field in PostgresOptions.model_fields.items()}
    assert documented == options - {"username_file", "password"}
    for original in ("/etc/a2pd/postgres_password", "/etc/a2pd/postgres-ca.pem",
                     "/etc/a2pd/postgres-client.pem", "/etc/a2pd/postgres-client.key"):
        target = tmp_path / Path(original).name
        target.write_text("from-a-file-123\n")
        uncommented = uncommented.replace(original, str(target))
    text = text.replace(block, uncommented).replace('sinks = ["failures"]',
                                                    'sinks = ["failures", "db"]')
    settings = config.loads(text, env={"A2PD_CLIENT_SECRET": "s", "A2PD_JWT": "j"})
    options = settings.sinks["db"].options
    assert isinstance(options, PostgresOptions)
    assert (options.sslmode, options.database, options.schema_name) == \
        ("verify-full", "sms", "a2pd")
    assert options.resolved_password is not None
    assert options.resolved_password.get_secret_value() == "from-a-file-123"
