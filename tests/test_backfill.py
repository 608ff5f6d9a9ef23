"""Gap backfill end to end: the daemon rebuilds an unrecovered gap from the emulator's A2P
REST lists (real loopback HTTP and WebSockets), plus the pure helpers."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from a2pd import config, events
from a2pd.app import Daemon
from a2pd.backfill import OpenObjects, parse_filters, synthetic, window_query
from a2pd.errors import ConfigError
from a2pd.parts import open_journal
from tests.harness import (
    FAST_BACKFILL,
    TIMEOUT,
    batch,
    delivered,
    emulator,
    failed_recovery_gap,
    now_iso,
    plain,
    publish_live,
    publish_while_away,
    read_records,
    running_daemon,
    seed,
    session_count,
    settings_for,
    settings_text,
)


async def counted(daemon: Daemon, name: str, count: int) -> None:
    """Wait until the daemon's counter ``name`` reaches ``count``."""
    assert daemon.pipeline is not None
    with anyio.fail_after(TIMEOUT):
        await daemon.pipeline.counters.wait_for(name, count)


async def backfilled(daemon: Daemon, gaps: int = 1) -> None:
    """Wait until ``gaps`` gaps were backfilled."""
    await counted(daemon, "gaps_backfilled", gaps)


def check_once(tmp_path: Path, live: int, lost: int) -> list[dict[str, Any]]:
    """Every event is in the sink exactly once; the lost ones marked backfilled."""
    records = read_records(tmp_path / "events")
    keys = [events.content_key(e) for e in map(events.from_record, records)
            if not isinstance(e, events.EventError)]
    assert len(keys) == len(records) == live + lost
    assert len(set(keys)) == len(keys), "an event was delivered twice"
    marked = [r for r in records if r.get("backfilled") is True]
    assert len(marked) == lost
    for record in marked:
        assert record["uuid"].startswith("backfill:")
        body = record["body"]
        assert str(body.get("id", "")).startswith("lost") or record["kind"] == "optout"
    for record in records:
        if "id" in record["body"] and str(record["body"]["id"]).startswith("live"):
            assert "backfilled" not in record
    return records


async def test_failed_recovery_gap_is_backfilled_once(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Events published while a recovery fails arrive once each, marked backfilled; events
    received live before the gap (inside the margin) are listed again and dropped; no
    token reaches the log."""
    emu = emulator()
    async with emu.running():
        settings = settings_for(emu, tmp_path, extra=FAST_BACKFILL)
        async with running_daemon(settings) as daemon:
            live, lost = await failed_recovery_gap(emu, daemon, 3)
            await backfilled(daemon)
            await delivered(daemon, "archive", live + lost)
            counters = daemon.pipeline.counters
            state = daemon.supervisor.state
            assert state.counters["recoveries_failed"] == 1
            assert counters["backfill_duplicates"] == live
            assert counters.snapshot("backfilled.") == {
                "outbound": 3, "batch": 1, "optout": 1}
            print(f"\nlost in the gap {lost}, received live {live}, backfilled "
                  f"{sum(counters.snapshot('backfilled.').values())}, duplicates dropped "
                  f"{counters['backfill_duplicates']}")
            # live traffic after the gap is not repeated by a later gap's backfill either
            await emu.publish("message", plain("after-0"))
            await delivered(daemon, "archive", live + lost + 1)
    check_once(tmp_path, live + 1, lost)
    out = capsys.readouterr().out
    assert "gap_backfilled" in out
    for secret in emu.issued_secrets():
        assert secret not in out


async def test_expired_recovery_window_gap_is_backfilled_once(tmp_path: Path) -> None:
    """With a recovery window too short to use, the daemon opens a fresh session; what was
    published meanwhile is rebuilt from the lists, once."""
    emu = emulator(recovery_timeout=1.0)
    async with emu.running():
        settings = settings_for(emu, tmp_path, extra=FAST_BACKFILL)
        async with running_daemon(settings) as daemon:
            live = await publish_live(emu, daemon)
            lost = await publish_while_away(emu, 4)
            await backfilled(daemon)
            await delivered(daemon, "archive", live + lost)
            assert daemon.supervisor is not None
            assert daemon.supervisor.gaps == 1
            assert daemon.supervisor.state.counters["recoveries_failed"] == 0
            counters = daemon.pipeline.counters
            assert counters["backfill_duplicates"] == live
    check_once(tmp_path, live, lost)


async def test_a_recovery_past_the_replay_buffer_is_backfilled(tmp_path: Path) -> None:
    """A Successful recovery replays at most recoveryBufferSize (the newest): with three times
    that published while the daemon is away, the replay is short and the rest comes from the
    lists, so every event is in the sink once."""
    emu = emulator(recovery_buffer_size=20)
    async with emu.running():
        settings = settings_for(emu, tmp_path, extra=FAST_BACKFILL)
        async with running_daemon(settings) as daemon:
            live = await publish_live(emu, daemon)
            lost = await publish_while_away(emu, 58)
            await backfilled(daemon)
            await delivered(daemon, "archive", live + lost)
            state = daemon.supervisor.state
            assert state.counters["recoveries_successful"] == 1
            assert state.counters["recoveries_failed"] == 0
            counters = daemon.pipeline.counters
            # 20 replayed live, the other 40 rebuilt from the lists
            assert sum(counters.snapshot("backfilled.").values()) == lost - 20
    records = read_records(tmp_path / "events")
    keys = [events.content_key(e) for e in map(events.from_record, records)
            if not isinstance(e, events.EventError)]
    assert len(keys) == len(set(keys)) == live + lost


async def test_state_changes_of_objects_created_before_the_gap_are_backfilled(
        tmp_path: Path) -> None:
    """The lists select by creationTime, so a delivery receipt or a batch completion inside a
    gap, for a message or batch created an hour before it, is not in the gap's window: the
    backfill asks for the batches the journal knows to be open (by id, and their messages by
    batchId from their creation on, those it never saw too) and rebuilds those states once."""
    emu = emulator()
    hour_ago = datetime.fromtimestamp(datetime.now(UTC).timestamp() - 3600, UTC)\
        .strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    old_batch = {**batch("old-batch", "Processing"), "creationTime": hour_ago}
    queued = [{**plain(f"old-{i}", "Queued"), "batchId": "old-batch",
               "creationTime": hour_ago} for i in range(3)]
    async with emu.running():
        settings = settings_for(emu, tmp_path, extra=FAST_BACKFILL)
        async with running_daemon(settings) as daemon:
            await emu.publish("batch", old_batch)
            for body in queued:
                await emu.publish("message", body)
            await emu.publish("message", plain("done-0"))  # final: nothing left open
            await delivered(daemon, "archive", 5)
            emu.fail_next_recovery()
            await emu.drop_connections(mode="abrupt")
            for body in queued[:2]:
                await emu.publish("message", {**body, "messageStatus": "Delivered",
                                              "lastModifiedTime": now_iso()})
            # a message of the open batch the daemon never heard of until now
            await emu.publish("message", {**queued[0], "id": "old-unseen",
                                          "messageStatus": "Delivered",
                                          "lastModifiedTime": now_iso()})
            await emu.publish("batch", {**old_batch, "status": "Completed",
                                        "lastModifiedTime": now_iso()})
            await backfilled(daemon)
            await delivered(daemon, "archive", 9)
            counters = daemon.pipeline.counters
            assert counters.snapshot("backfilled.") == {"outbound": 3, "batch": 1}
    records = read_records(tmp_path / "events")
    rebuilt = sorted((r["body"]["id"], r["body"].get("messageStatus") or r["body"]["status"])
                     for r in records if r.get("backfilled"))
    assert rebuilt == [("old-0", "Delivered"), ("old-1", "Delivered"),
                       ("old-batch", "Completed"), ("old-unseen", "Delivered")]
    by_id = [path for path, _, _ in emu.a2p.calls if path.endswith("/batches/old-batch")]
    assert len(by_id) == 1


async def test_backfill_follows_pages(tmp_path: Path) -> None:
    """With per_page = 2 the lists come in several pages; every lost event arrives once."""
    emu = emulator()
    async with emu.running():
        settings = settings_for(emu, tmp_path, extra=FAST_BACKFILL + "per_page = 2\n")
        async with running_daemon(settings) as daemon:
            live, lost = await failed_recovery_gap(emu, daemon, 7)
            await backfilled(daemon)
            await delivered(daemon, "archive", live + lost)
    messages = [c for c in emu.a2p.calls if c[0].endswith("/messages")]
    # 4 live + 7 lost messages in the window, 2 a page
    assert len(messages) == 6
    assert all(status == 200 for _, status, _ in messages)
    check_once(tmp_path, live, lost)


async def test_rate_limited_list_waits_for_retry_after(tmp_path: Path) -> None:
    """A 429 from a list is obeyed: the next call comes no sooner than Retry-After, and the
    gap is still rebuilt once."""
    emu = emulator()
    async with emu.running():
        settings = settings_for(emu, tmp_path, extra=FAST_BACKFILL)
        async with running_daemon(settings) as daemon:
            live = await publish_live(emu, daemon)
            emu.a2p.fail_lists(429, times=1, retry_after=0.5)
            emu.fail_next_recovery()
            lost = await publish_while_away(emu, 2)
            await backfilled(daemon)
            await delivered(daemon, "archive", live + lost)
            counters = daemon.pipeline.counters
            assert counters["backfill_rate_limited"] == 1
            assert counters["backfill_errors"] == 0
    first, second = emu.a2p.calls[0], emu.a2p.calls[1]
    assert first[1] == 429
    assert second[1] == 200
    assert second[2] - first[2] >= 0.5
    check_once(tmp_path, live, lost)


#: a Light group of 4 calls per 0.4 s (penalty 0.4 s) and pages of at most 5 records
SCALED_LIMITS = {"a2p_rate_limit": 4, "a2p_rate_window": 0.4, "a2p_rate_penalty": 0.4,
                 "a2p_page_limit": 5}


async def test_a_gap_larger_than_the_rate_limit_is_paced_page_by_page(tmp_path: Path) -> None:
    """A gap that needs three times the rate limit's calls is listed page after page, paced
    by X-Rate-Limit-Remaining/Window: it finishes, never calls inside a penalty (every call
    answered 200), and asks for each page once."""
    emu = emulator(**SCALED_LIMITS)
    async with emu.running():
        settings = settings_for(emu, tmp_path, extra=FAST_BACKFILL)
        async with running_daemon(settings) as daemon:
            live, lost = await failed_recovery_gap(emu, daemon, 60)
            await backfilled(daemon)
            await delivered(daemon, "archive", live + lost)
            counters = daemon.pipeline.counters
            assert counters["backfill_rate_limited"] == 0
            assert counters["backfill_paced"] >= 3
    assert [status for _, status, _ in emu.a2p.calls] == [200] * len(emu.a2p.calls)
    messages = [c for c in emu.a2p.calls if c[0].endswith("/messages")]
    assert len(messages) == 13  # 4 live + 60 lost messages, 5 a page
    check_once(tmp_path, live, lost)


async def test_a_listing_resumes_from_its_page_after_a_restart(tmp_path: Path) -> None:
    """A daemon stopped half-way through a paced listing leaves its step and page token in
    the journal; the next start goes on from that page (at most the page in flight is asked
    for again), not from the first."""
    emu = emulator(**SCALED_LIMITS)
    async with emu.running():
        settings = settings_for(emu, tmp_path, extra=FAST_BACKFILL)
        async with running_daemon(settings) as daemon:
            live, lost = await failed_recovery_gap(emu, daemon, 60)
            await counted(daemon, "backfill_pages", 7)
        stopped_at = len([c for c in emu.a2p.calls if c[0].endswith("/messages")])
        assert stopped_at < 13
        async with running_daemon(settings) as daemon:
            await backfilled(daemon, 2)  # the half-done gap, then the restart's own
    messages = [c for c in emu.a2p.calls if c[0].endswith("/messages") and c[1] == 200]
    # 13 pages for the first gap, at most one asked again, and the restart's small gap
    # (the window from its start - margin holds every message: 13 pages again)
    assert len(messages) <= 13 + 1 + 13
    check_once(tmp_path, live, lost)


async def test_a_permanent_refusal_is_reported_once_and_retried_after_a_reload(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A 403 (no A2P SMS permission) stops the backfill with one clear error, shown by the
    status; nothing is retried until a reload, which then rebuilds the kept gap once."""
    emu = emulator()
    async with emu.running():
        settings = settings_for(emu, tmp_path, extra=FAST_BACKFILL)
        async with running_daemon(settings) as daemon:
            live = await publish_live(emu, daemon)
            emu.a2p.fail_lists(403, times=None)
            emu.fail_next_recovery()
            lost = await publish_while_away(emu, 3)
            await counted(daemon, "backfill_refused", 1)
            calls = len(emu.a2p.calls)
            snapshot = daemon.report.snapshot()
            assert "CMN-408" in snapshot["backfill"]["refused"]
            await emu.publish("message", plain("after-0"))  # the daemon goes on meanwhile
            await delivered(daemon, "archive", live + 1)
            assert len(emu.a2p.calls) == calls, "a refused list was asked again"
            emu.a2p.clear_fault()
            assert await daemon.reload(settings)
            await backfilled(daemon)
            await delivered(daemon, "archive", live + 1 + lost)
            assert daemon.report.snapshot()["backfill"]["refused"] is None
            assert daemon.pipeline.counters["backfill_refused"] == 1
    check_once(tmp_path, live + 1, lost)
    out = capsys.readouterr().out
    assert out.count("backfill_refused") == 1


async def test_opt_outs_refused_alone_leave_messages_and_batches_rebuilt(
        tmp_path: Path) -> None:
    """The consents API needs the SMS permission: when only it refuses (403), the lost
    messages and batch are rebuilt all the same, the gap is closed, and the opt-outs'
    refusal is said once (counter and error) instead of holding the gap."""
    emu = emulator()
    async with emu.running():
        settings = settings_for(emu, tmp_path, extra=FAST_BACKFILL)
        async with running_daemon(settings) as daemon:
            live = await publish_live(emu, daemon)
            emu.a2p.fail_lists(403, times=None, only="/sms/consents")
            emu.fail_next_recovery()
            lost = await publish_while_away(emu, 2)
            await backfilled(daemon)
            await delivered(daemon, "archive", live + lost - 1)
            counters = daemon.pipeline.counters
            assert counters.snapshot("backfilled.") == {"outbound": 2, "batch": 1}
            assert counters["backfill_optouts_refused"] == 1
            assert counters["backfill_refused"] == 0


async def test_pending_gap_survives_a_restart(tmp_path: Path) -> None:
    """A gap whose backfill cannot run (the lists fail) is kept in the journal; the next
    start rebuilds it, once."""
    emu = emulator()
    async with emu.running():
        settings = settings_for(emu, tmp_path, extra=FAST_BACKFILL)
        async with running_daemon(settings) as daemon:
            live = await publish_live(emu, daemon)
            emu.a2p.fail_lists(503, times=None)
            emu.fail_next_recovery()
            lost = await publish_while_away(emu, 3)
            await counted(daemon, "backfill_errors", 2)
            assert daemon.pipeline.counters["gaps_backfilled"] == 0
        journal = await open_journal(settings, Path(settings.state.directory))
        try:
            assert len(await journal.gaps.pending()) == 1
        finally:
            await journal.aclose()
        emu.a2p.clear_fault()
        async with running_daemon(settings) as daemon:
            # the pending gap, and the restart's own (its recovery's replay is bounded)
            await backfilled(daemon, 2)
            await delivered(daemon, "archive", lost)
        journal = await open_journal(settings, Path(settings.state.directory))
        try:
            assert await journal.gaps.pending() == []
        finally:
            await journal.aclose()
    check_once(tmp_path, live, lost)


async def test_backfill_disabled_records_no_gap(tmp_path: Path) -> None:
    """``[backfill] enabled = false``: a failed recovery is only counted; no list is read."""
    emu = emulator()
    async with emu.running():
        settings = settings_for(emu, tmp_path, extra="[backfill]\nenabled = false\n")
        async with running_daemon(settings) as daemon:
            await publish_live(emu, daemon)
            emu.fail_next_recovery()
            await publish_while_away(emu, 1)
            await session_count(daemon, "subscriptions", 2)
            await emu.publish("message", plain("after-0"))
            await delivered(daemon, "archive", 6)
            assert daemon.backfill is None
    assert emu.a2p.calls == []


async def test_backfill_invents_nothing_outside_the_subscription(tmp_path: Path) -> None:
    """Only records a subscribed filter would have notified are rebuilt: with an inbound
    filter for one number, lost outbound messages, batches and opt-outs (never notified)
    stay out, and an inbound message to another number too."""
    emu = emulator()
    inbound = seed("inbound.json")["body"]
    subscription = ('[subscription]\nevent_filters = ["/restapi/v1.0/account/~/a2p-sms/'
                    f'messages?direction=Inbound&to={inbound["to"][0]}"]\n')

    def reply(msg_id: str, to: str = inbound["to"][0]) -> dict[str, Any]:
        stamp = now_iso()
        return {**inbound, "id": msg_id, "to": [to], "creationTime": stamp,
                "lastModifiedTime": stamp}

    async with emu.running():
        settings = settings_for(emu, tmp_path, extra=FAST_BACKFILL + subscription)
        async with running_daemon(settings) as daemon:
            await emu.publish("message", reply("live-in"))
            await delivered(daemon, "archive", 1)
            emu.fail_next_recovery()
            await emu.drop_connections(mode="abrupt")
            await emu.publish("message", reply("lost-in-0"))
            await emu.publish("message", reply("lost-in-1"))
            await emu.publish("message", reply("other-number", to="+12406680999"))
            await emu.publish("message", plain("outbound-0"))
            await emu.publish("batch", batch("b-0", "Completed"))
            await emu.publish("optout", seed("optout.json")["body"])
            await backfilled(daemon)
            await delivered(daemon, "archive", 3)
            counters = daemon.pipeline.counters
            assert counters.snapshot("backfilled.") == {"inbound": 2}
            assert counters["backfill_skipped"] == 2  # outbound-0, other-number
            assert counters["backfill_duplicates"] == 1  # live-in, inside the margin
    assert {path.rsplit("/", 1)[1] for path, _, _ in emu.a2p.calls} == {"messages"}
    records = read_records(tmp_path / "events")
    assert sorted(r["body"]["id"] for r in records) == ["live-in", "lost-in-0", "lost-in-1"]
    assert [r["kind"] for r in records] == ["inbound"] * 3


def test_filters_decide_what_a_record_may_become() -> None:
    """Only records a subscribed filter would have notified are rebuilt; ``+`` stays a plus."""
    filters = parse_filters([
        "/restapi/v1.0/account/~/a2p-sms/messages?direction=Inbound&to=+16505550111",
        "/restapi/v1.0/account/~/a2p-sms/batches",
        "/restapi/v1.0/account/~/extension/~/presence",
    ])
    assert [f.resource for f in filters] == ["messages", "batches"]
    inbound = {"direction": "Inbound", "to": ["+16505550111"], "from": "+14155550122"}
    assert filters[0].matches(inbound)
    assert not filters[0].matches({**inbound, "direction": "Outbound"})
    assert not filters[0].matches({**inbound, "to": ["+16505550999"]})


def test_synthetic_events_have_the_notification_model_and_content_key() -> None:
    """A list record becomes the same event model as its notification, with the same
    content key, marked backfilled; an opt-out list record maps status to ``active``."""
    body = seed("outbound.json")["body"]
    live = events.decode_notification(seed("outbound.json"), b"")
    envelope = synthetic("messages", body, "/restapi/v1.0/account/~/a2p-sms/messages", "1")
    rebuilt = events.decode_notification(envelope, b"")
    assert isinstance(live, events.MessageEvent)
    assert isinstance(rebuilt, events.MessageEvent)
    assert events.content_key(rebuilt) == events.content_key(live)
    assert events.is_backfilled(rebuilt)
    assert not events.is_backfilled(live)
    assert events.to_record(rebuilt)["backfilled"] is True
    optout = synthetic("opt-outs", {"from": "+16505550111", "to": "+14155550122",
                                    "status": "OptIn", "lastModifiedTime": now_iso()},
                       "/restapi/v1.0/account/~/a2p-sms/opt-outs", None)
    decoded = events.decode_notification(optout, b"")
    assert isinstance(decoded, events.OptOutEvent)
    assert decoded.kind == "optin"
    assert events.superseded_keys(decoded) == ("optout:+16505550111:+14155550122:true",)


async def test_bad_backfill_config_names_the_key(tmp_path: Path) -> None:
    """A bad [backfill] value is a config error naming its key path (exit 78 in the CLI)."""
    emu = emulator()
    async with emu.running():
        for line, key in (("per_page = 0", "backfill.per_page"),
                          ("max_window = \"soon\"", "backfill.max_window"),
                          ("colour = 1", "backfill.colour")):
            text = settings_text(emu, tmp_path, extra=f"[backfill]\n{line}\n")
            with pytest.raises(ConfigError) as info:
                config.loads(text, source="test", env={})
            assert [p.key for p in info.value.problems] == [key]


def test_open_objects_are_read_by_id_by_batch_or_by_one_wide_listing() -> None:
    """Open objects created before the window: batches by id, a batch's messages by
    batchId from the oldest creation among them, a batch-less message by id; how many
    calls that takes decides against one wide listing."""
    objects = OpenObjects.of([("batch:B1", "B1", 90.0), ("message:M1", "B1", 80.0),
                              ("message:M2", "B2", 95.0), ("message:M3", None, 70.0)],
                             start=100.0)
    assert objects.batches == ["B1"]
    assert objects.singles == ["M3"]
    assert objects.by_batch == {"B1": 80.0, "B2": 95.0}
    assert objects.oldest == 70.0
    assert objects.reads(batches=True, messages=True) == 1 + 2 + 1
    assert objects.reads(batches=False, messages=True) == 3
    assert objects.reads(batches=True, messages=False) == 1
    assert OpenObjects.of([], start=100.0).oldest == 100.0
    assert window_query("opt-outs", 0.0, 1.0) == {"optStatus": ["OptOut", "OptIn"]}
    assert window_query("messages", 0.0, 1.0)["view"] == "Detailed"
    assert "view" not in window_query("batches", 0.0, 1.0)
