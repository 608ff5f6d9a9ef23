"""Pipeline over a real journal: per-sink cursors, retries, dead letters, restart resume."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import anyio
import pytest

from a2pd import events
from a2pd.config import SinkSpec
from a2pd.delivery import Decoded, decode_row
from a2pd.journal import Row
from a2pd.pipeline import Pipeline
from a2pd.reload import settle_reloaded_sinks
from a2pd.router import Route, Router
from a2pd.sinks import SinkOptions
from a2pd.testing import CollectingSink
from tests.harness import DATA, TIMEOUT, open_test_journal, router_all, sample_events, seed


async def test_failing_sink_catches_up_in_order_while_another_flows(tmp_path: Path) -> None:
    """A sink that fails for a while gets every event in order; the other is not held back."""
    journal = await open_test_journal(tmp_path)
    healthy, flaky = CollectingSink("healthy"), CollectingSink("flaky")
    flaky.fail_transient = 20
    pipeline = Pipeline(router_all("healthy", "flaky"), {"healthy": healthy, "flaky": flaky},
                        journal, batch_max=100, retry_initial=0.001, retry_max=0.01)
    stream = sample_events(2000)
    async with anyio.create_task_group() as tg:
        await tg.start(pipeline.run)
        for event in stream:
            await pipeline.ingest_event(event)
        with anyio.fail_after(TIMEOUT):
            await pipeline.counters.wait_for("delivered.healthy", 2000)
        # the healthy sink finished while the flaky one was still failing or just back
        assert len(flaky.got) < 2000
        with anyio.fail_after(TIMEOUT):
            await pipeline.counters.wait_for("delivered.flaky", 2000)
        await pipeline.close()
    expected = [e.uuid for e in stream]
    assert healthy.got == expected
    assert flaky.got == expected
    assert pipeline.counters["retries.flaky"] == 20
    await journal.aclose()


async def test_permanent_rejection_goes_to_dead_letters_then_replays(tmp_path: Path) -> None:
    """Only the rejected event is dead-lettered; a replay delivers it once the sink accepts."""
    journal = await open_test_journal(tmp_path)
    sink = CollectingSink("s")
    stream = sample_events(10)
    sink.reject = {stream[4].uuid}
    pipeline = Pipeline(router_all("s"), {"s": sink}, journal, retry_initial=0.001)
    async with anyio.create_task_group() as tg:
        await tg.start(pipeline.run)
        for event in stream:
            await pipeline.ingest_event(event)
        with anyio.fail_after(TIMEOUT):
            await pipeline.counters.wait_for("delivered.s", 9)
            await pipeline.counters.wait_for("dead_letters", 1)
        assert sink.got == [e.uuid for i, e in enumerate(stream) if i != 4]
        [letter] = await journal.letters.entries("s")
        assert letter.uuid == stream[4].uuid
        assert "refused" in letter.reason
        sink.reject = set()
        assert await journal.letters.replay(None, "s") == 1
        with anyio.fail_after(TIMEOUT):
            await pipeline.counters.wait_for("delivered.s", 10)
        await pipeline.close()
    assert sink.got[-1] == stream[4].uuid
    await journal.aclose()


async def test_a_reader_retired_mid_narrowing_does_not_handle_events_twice(
        tmp_path: Path) -> None:
    """A batch refused for good is narrowed down event by event; a reload that replaces the
    sink while one of those events waits to be retried keeps what the narrowing did: the
    refused event is dead-lettered once, the delivered ones are not sent again (regression:
    the new reader started over from the batch's first event)."""
    journal = await open_test_journal(tmp_path)
    old, new = CollectingSink("s"), CollectingSink("s")
    stream = sample_events(10)
    old.reject = new.reject = {stream[2].uuid}
    old.stuck = {stream[5].uuid}
    pipeline = Pipeline(router_all("s"), {"s": old}, journal, retry_initial=60.0,
                        retry_max=60.0)
    async with anyio.create_task_group() as tg:
        await tg.start(pipeline.run)
        for event in stream:
            await pipeline.ingest_event(event)
        await journal.commit()
        with anyio.fail_after(TIMEOUT):
            await pipeline.counters.wait_for("retries.s", 1)  # stuck at event 5
            assert await pipeline.reconfigure(router_all("s"), {"s": new}) == [old]
            await pipeline.counters.wait_for("delivered.s", 9)
        await pipeline.close()
    assert old.got == [e.uuid for e in stream[:5] if e is not stream[2]]
    assert new.got == [e.uuid for e in stream[5:]]
    assert [letter.uuid for letter in await journal.letters.entries("s")] == [stream[2].uuid]
    await journal.aclose()


async def test_retries_exhausted_go_to_dead_letters_when_configured(tmp_path: Path) -> None:
    """With max_attempts, a sink that keeps failing dead-letters the events and moves on."""
    journal = await open_test_journal(tmp_path)
    sink = CollectingSink("s")
    sink.fail_transient = 3
    pipeline = Pipeline(router_all("s"), {"s": sink}, journal, retry_initial=0.001,
                        max_attempts=3)
    stream = sample_events(2)
    async with anyio.create_task_group() as tg:
        await tg.start(pipeline.run)
        await pipeline.ingest_event(stream[0])
        with anyio.fail_after(TIMEOUT):
            await pipeline.counters.wait_for("dead_letters", 1)
        await pipeline.ingest_event(stream[1])
        with anyio.fail_after(TIMEOUT):
            await pipeline.counters.wait_for("delivered.s", 1)
        await pipeline.close()
    [letter] = await journal.letters.entries("s")
    assert (letter.uuid, letter.attempts) == (stream[0].uuid, 3)
    assert letter.reason.startswith("gave up after 3 attempts")
    assert sink.got == [stream[1].uuid]
    await journal.aclose()


async def test_restart_resumes_each_sink_from_its_cursor(tmp_path: Path) -> None:
    """Events journaled but not delivered before a stop are delivered after a restart."""
    journal = await open_test_journal(tmp_path)
    down = CollectingSink("s")
    down.fail_transient = 10**9
    pipeline = Pipeline(router_all("s"), {"s": down}, journal, retry_initial=0.001,
                        retry_max=0.002)
    stream = sample_events(50)
    async with anyio.create_task_group() as tg:
        await tg.start(pipeline.run)
        for event in stream:
            await pipeline.ingest_event(event)
        await journal.commit()
        tg.cancel_scope.cancel()
    await journal.aclose()

    journal = await open_test_journal(tmp_path)
    up = CollectingSink("s")
    pipeline = Pipeline(router_all("s"), {"s": up}, journal)
    async with anyio.create_task_group() as tg:
        await tg.start(pipeline.run)
        with anyio.fail_after(TIMEOUT):
            await pipeline.counters.wait_for("delivered.s", 50)
        await pipeline.close()
    assert up.got == [e.uuid for e in stream]
    await journal.aclose()


async def test_routing_is_per_sink(tmp_path: Path) -> None:
    """A sink only receives the events routed to it, and its cursor still passes the rest."""
    journal = await open_test_journal(tmp_path)
    a, b = CollectingSink("a"), CollectingSink("b")
    stream = sample_events(6)
    odd = frozenset(e.uuid for i, e in enumerate(stream) if i % 2)
    router = Router((Route("all", ("a",)), Route("odd", ("b",), {"uuid": odd})), ())
    pipeline = Pipeline(router, {"a": a, "b": b}, journal)
    async with anyio.create_task_group() as tg:
        await tg.start(pipeline.run)
        for event in stream:
            await pipeline.ingest_event(event)
        with anyio.fail_after(TIMEOUT):
            await pipeline.counters.wait_for("delivered.a", 6)
            await pipeline.counters.wait_for("delivered.b", 3)
        await pipeline.close()
    assert b.got == [e.uuid for i, e in enumerate(stream) if i % 2]
    assert pipeline.backlog() == {"a": 0, "b": 0}
    await journal.aclose()


@pytest.mark.parametrize("linger", [0.0, 0.3])
async def test_a_sink_renamed_under_traffic_hands_over_every_event_once(
        tmp_path: Path, linger: float) -> None:
    """``a`` is renamed ``b`` (``takes_over = ["a"]``) while 3,000 events stream in: every
    event reaches ``a`` or ``b`` exactly once. Was: the events appended before the new
    routes applied were committed after the hand-over, still for ``a`` alone (36-39 lost);
    and ``a`` lingering for a fuller batch read past events routed to ``b``, which then
    started after them (45-51 lost)."""
    # commits 0.2 s apart: at the reload, events appended under the old routes wait
    journal = await open_test_journal(tmp_path, commit_interval=0.2)
    a, b, keep = CollectingSink("a"), CollectingSink("b"), CollectingSink("keep")
    a.linger = linger
    pipeline = Pipeline(router_all("a", "keep"), {"a": a, "keep": keep}, journal,
                        batch_max=1000)
    stream = sample_events(3000)
    specs = {"b": SinkSpec("b", "collecting", SinkOptions(), ("a",)),
             "keep": SinkSpec("keep", "collecting", SinkOptions())}

    async def feed() -> None:
        for n, event in enumerate(stream):
            await pipeline.ingest_event(event)
            if n % 10 == 0:
                await anyio.sleep(0.005)  # ~2,000 events/s

    async with anyio.create_task_group() as tg:
        await tg.start(pipeline.run)
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as traffic:
                traffic.start_soon(feed)
                await pipeline.counters.wait_for("delivered.keep", 500)
                while journal.waiting < 20:  # events appended under the old routes wait
                    await anyio.lowlevel.checkpoint()
                await pipeline.reconfigure(
                    router_all("b", "keep"), {"b": b, "keep": keep},
                    before_start=partial(settle_reloaded_sinks, pipeline, specs,
                                         ["b", "keep"], []))
            await pipeline.close()
    await journal.aclose()
    assert a.got
    assert b.got
    assert sorted(a.got + b.got) == [e.uuid for e in stream]
    assert keep.got == [e.uuid for e in stream]


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.json")))
def test_a_kept_decoded_event_is_the_event_its_row_decodes_to(name: str) -> None:
    """The fast path (``Decoded``: the event the receive side decoded) and the slow path
    (``decode_row``: the journal's record decoded again) give the same event, and the kept
    one stands in only for a row holding that very record."""
    envelope = seed(name)
    event = events.decode_notification(envelope, json.dumps(envelope).encode())
    assert not isinstance(event, events.EventError)
    record = events.record_json(event)
    decoded = Decoded()
    decoded.add(event, record)
    row = Row(1, event.uuid, event.kind, ",a,", bytes(record))  # as read from the database
    assert decoded.get(row) is event
    assert decode_row(row) == event
    # a different record under the same uuid (a replayed dead letter edited by hand, a
    # duplicate that differs): decoded from the row
    other = Row(2, event.uuid, event.kind, ",a,", record.replace(b'"kind"', b' "kind"', 1))
    assert decoded.get(other) is None
    assert decode_row(other) == event
