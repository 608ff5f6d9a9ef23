"""Exactly once per uuid in PostgreSQL, with every message in its final state, end to end:
the daemon SIGKILLed under traffic and restarted, PostgreSQL itself SIGKILLed and restarted
mid-stream, two daemons writing the same events into one database, and an old event
dead-lettered and replayed after newer ones.

The journal delivers at least once (a batch written before a kill is sent again after the
restart); the uuid key turns that into one row per notification, and the state tables move
forward only, whatever order the events arrive in.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio

from a2pd.emulator.burst import Burst
from a2pd.events import parse_time
from a2pd.journal import Journal
from a2pd.sinks.postgres import PostgresSink
from tests.harness import TIMEOUT, delivered, emulator, running_daemon, seed, settings_for
from tests.postgres_server import PostgresServer, postgres_server
from tests.processes import crash_config, run_then_kill

STATUSES = ("Queued", "Sent", "Delivered")
START = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


def postgres_sink_toml(server: PostgresServer, schema: str = "a2pd") -> str:
    return f"""
[sinks.pg]
type = "postgres"
url = "{server.url}"
password = "{server.password}"
schema = "{schema}"
connect_timeout = 2
timeout = 10
"""


ROUTES = '[default_route]\nsinks = ["pg"]\n'


def lifecycle(n: int) -> dict[str, Any]:
    """The n-th message notification: message ``m{n // 3}`` Queued, Sent, then Delivered,
    each a millisecond after the one before."""
    body = seed("outbound.json")["body"]
    stamp = START + timedelta(milliseconds=n)
    return {**body, "id": f"m{n // 3}", "messageStatus": STATUSES[n % 3],
            "lastModifiedTime": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")}


async def table(server: PostgresServer, query: str) -> list[tuple[Any, ...]]:
    async with await server.connect() as conn:
        cursor = await conn.execute(query)
        return await cursor.fetchall()


async def committed_uuids(state: Path) -> set[str]:
    journal = await Journal.open_for_admin(state / "journal.db")
    try:
        return {row[0] for row in journal.database.conn.execute(
            "SELECT uuid FROM seen UNION SELECT uuid FROM events")}
    finally:
        await journal.aclose()


def lifecycle_key(n: int) -> tuple[str, str, str]:
    """The content (id, status, lastModifiedTime) of the n-th message notification."""
    body = lifecycle(n)
    return body["id"], body["messageStatus"], body["lastModifiedTime"]


def assert_once_and_nothing_lost(stored: Sequence[tuple[Any, ...]], committed: set[str],
                                 sent: set[str], total: int) -> None:
    """One row per uuid; every committed notification stored, nothing invented. The backfill
    (after the gaps the kills made) journals a state under ``backfill:<content key>``, or
    drops it when that content arrived live: such a uuid counts as stored when its content
    is, and a stored one must be a state the emulator published."""
    uuids = [row[0] for row in stored]
    assert len(uuids) == len(set(uuids)), "a uuid has more than one row"
    contents = {tuple(row[1:]) for row in stored}
    published = {lifecycle_key(n) for n in range(total)}
    for uuid in committed:
        if uuid.startswith("backfill:message:"):
            _, _, msg_id, status, modified = uuid.split(":", 4)
            assert (msg_id, status, modified) in contents, uuid
        else:
            assert uuid in uuids, f"committed {uuid} never reached PostgreSQL"
    for row in stored:
        if row[0].startswith("backfill:"):
            assert tuple(row[1:]) in published, row
        else:
            assert row[0] in sent, f"PostgreSQL holds {row[0]}, which was never sent"


STORED = ("SELECT uuid, record->'body'->>'id', record->'body'->>'messageStatus', "
          "record->'body'->>'lastModifiedTime' FROM a2pd.events")


def assert_final_states(messages: Sequence[tuple[Any, ...]], count: int) -> None:
    """Every message ``m0`` … ``m{count-1}`` is Delivered, at its Delivered event's time."""
    by_id = {row[0]: row[1:] for row in messages}
    assert len(by_id) == count
    for k in range(count):
        status, modified = by_id[f"m{k}"]
        assert status == "Delivered", (k, status)
        assert modified == START + timedelta(milliseconds=3 * k + 2)


async def test_daemon_sigkills_under_traffic_leave_one_row_per_uuid_and_final_states(
        tmp_path: Path) -> None:
    """Four SIGKILLs of the daemon while it delivers batches to PostgreSQL, then a clean
    run: every committed notification is in the events table once, nothing invented, and
    every message's row holds its final state."""
    rng = random.Random(20261130)
    total, kills = 3000, 4
    emu = emulator()
    state = tmp_path / "state"
    async with postgres_server(tmp_path / "pg") as server, emu.running():
        config = crash_config(tmp_path, emu, sinks=postgres_sink_toml(server), routes=ROUTES)
        published = 0
        for _ in range(kills):
            published = await run_then_kill(config, emu, rng, {}, published, make=lifecycle)
        settings = settings_for(emu, tmp_path, sinks=postgres_sink_toml(server),
                                routes=ROUTES)
        async with running_daemon(settings) as daemon:
            assert daemon.journal is not None
            before = daemon.journal.counters["committed"]
            final = total - published
            published_before_last = published
            for n in range(published, total):
                await emu.publish("message", lifecycle(n))
            published = total
            with anyio.fail_after(TIMEOUT):
                await daemon.journal.counters.wait_for("committed", before + final)
            sink = daemon.sinks["pg"]
            assert isinstance(sink, PostgresSink)
        # leaving the block stops the daemon gracefully: every committed event is delivered
        stored = await table(server, STORED)
        messages = await table(server, "SELECT id, status, last_modified_time "
                                       "FROM a2pd.messages")
    committed = await committed_uuids(state)
    sent = {s.uuid for s in emu.sent}
    print(f"\npublished {published}, committed {len(committed)}, rows {len(stored)}, "
          f"kills {kills}, redeliveries skipped in the last run {sink.duplicates}")
    assert len(sent) == total
    assert_once_and_nothing_lost(stored, committed, sent, total)
    # notifications sent to a daemon that was killed before it committed them, and not
    # recovered, are not the daemon's to store; of those it committed, each message's row
    # holds the newest state
    newest: dict[str, tuple[str, str]] = {}
    for row in stored:
        _uuid, msg_id, status, modified = row
        if msg_id not in newest or modified > newest[msg_id][1]:
            newest[msg_id] = (status, modified)
    assert {m[0]: (m[1], m[2]) for m in messages} == {
        msg_id: (status, parse_time(modified)) for msg_id, (status, modified) in newest.items()}
    # the last run's messages were all committed: they end Delivered
    tail = [m for m in messages if int(m[0][1:]) >= published_before_last // 3 + 1]
    assert tail
    assert {m[1] for m in tail} == {"Delivered"}


async def test_postgres_killed_and_restarted_mid_stream_loses_nothing(tmp_path: Path) -> None:
    """PostgreSQL SIGKILLed while batches are in flight and restarted (crash recovery): the
    sink retries through the outage, and every event is stored once, every message final."""
    emu = emulator()
    total = 1500
    async with postgres_server(tmp_path / "pg") as server, emu.running():
        settings = settings_for(emu, tmp_path, sinks=postgres_sink_toml(server),
                                routes=ROUTES, log_level="info")
        async with running_daemon(settings) as daemon:
            assert daemon.pipeline is not None
            for n in range(600):
                await emu.publish("message", lifecycle(n))
            await delivered(daemon, "pg", 150)
            server.kill()  # SIGKILL, while batches are still being sent
            for n in range(600, 1200):
                await emu.publish("message", lifecycle(n))
            with anyio.fail_after(TIMEOUT):
                await daemon.pipeline.counters.wait_for("retries.pg", 1)
            await server.restart()
            for n in range(1200, total):
                await emu.publish("message", lifecycle(n))
            await delivered(daemon, "pg", total)
            retries = daemon.pipeline.counters["retries.pg"]
        stored = await table(server, "SELECT uuid FROM a2pd.events")
        messages = await table(server, "SELECT id, status, last_modified_time "
                                       "FROM a2pd.messages")
    uuids = [row[0] for row in stored]
    print(f"\nrows {len(uuids)}, retries {retries}")
    assert retries >= 1
    assert len(uuids) == len(set(uuids)) == total
    assert set(uuids) == {s.uuid for s in emu.sent}
    assert_final_states(messages, total // 3)


async def test_two_daemons_writing_the_same_events_store_one_row_per_uuid(
        tmp_path: Path) -> None:
    """Two a2pd, each with its own journal and platform session, receive the same
    notifications (the same uuids) and write them into one database at once: one row per
    uuid, and each message in its final state."""
    pool = [("message", lifecycle(n)) for n in range(30)]
    count = 3000
    emus = [emulator(), emulator()]
    async with postgres_server(tmp_path / "pg") as server, \
            emus[0].running(), emus[1].running():
        settings = [settings_for(emu, tmp_path / f"d{i}", sinks=postgres_sink_toml(server),
                                 routes=ROUTES) for i, emu in enumerate(emus)]
        async with running_daemon(settings[0]) as first, \
                running_daemon(settings[1]) as second:
            bursts = [Burst(emu, pool, prefix="4242424") for emu in emus]
            assert [burst.prepare() for burst in bursts] == [1, 1]
            async with anyio.create_task_group() as tg:
                for burst in bursts:
                    tg.start_soon(burst.send, count)
            await delivered(first, "pg", count)
            await delivered(second, "pg", count)
            sinks = [d.sinks["pg"] for d in (first, second)]
        stored = await table(server, "SELECT uuid FROM a2pd.events")
        messages = await table(server, "SELECT id, status, last_modified_time "
                                       "FROM a2pd.messages")
    assert all(isinstance(s, PostgresSink) for s in sinks)
    written = [s.written for s in sinks if isinstance(s, PostgresSink)]
    uuids = [row[0] for row in stored]
    print(f"\nrows {len(uuids)}, written by each daemon {written}")
    assert len(uuids) == len(set(uuids)) == count
    assert set(uuids) == {bursts[0].uuid(i) for i in range(count)}
    assert sum(written) == count
    assert_final_states(messages, 10)


async def test_an_old_event_replayed_from_the_dead_letters_never_moves_a_state_back(
        tmp_path: Path) -> None:
    """Queued and Sent notifications given up on while PostgreSQL was down (dead letters),
    then the Delivered ones stored, then the dead letters replayed: the old events are
    stored once each, and every message stays Delivered."""
    emu = emulator()
    messages_count = 40
    state = tmp_path / "state"
    async with postgres_server(tmp_path / "pg") as server, emu.running():
        settings = settings_for(emu, tmp_path, sinks=postgres_sink_toml(server),
                                routes=ROUTES,
                                delivery={"max_attempts": 2, "retry_initial": 0.01})
        async with running_daemon(settings) as daemon:
            assert daemon.pipeline is not None
            await emu.publish("message", lifecycle(3 * messages_count))  # migrates the schema
            await delivered(daemon, "pg", 1)
            server.kill()
            for k in range(messages_count):
                for n in (3 * k, 3 * k + 1):
                    await emu.publish("message", lifecycle(n))
            with anyio.fail_after(TIMEOUT):
                await daemon.pipeline.counters.wait_for("dead_letters", 2 * messages_count)
            await server.restart()
            for k in range(messages_count):
                await emu.publish("message", lifecycle(3 * k + 2))
            await delivered(daemon, "pg", 1 + messages_count)
        journal = await Journal.open_for_admin(state / "journal.db")
        try:
            replayed = await journal.letters.replay(None, "pg")
        finally:
            await journal.aclose()
        async with running_daemon(settings) as daemon:
            await delivered(daemon, "pg", replayed)
        stored = await table(server, "SELECT uuid FROM a2pd.events")
        messages = await table(server, "SELECT id, status, last_modified_time "
                                       "FROM a2pd.messages WHERE id <> 'm40'")
    uuids = [row[0] for row in stored]
    assert replayed == 2 * messages_count
    assert len(uuids) == len(set(uuids)) == 3 * messages_count + 1
    assert set(uuids) == {s.uuid for s in emu.sent}
    assert_final_states(messages, messages_count)
