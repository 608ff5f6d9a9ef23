"""Limits with clear errors, end to end: frame size, nesting depth, field sizes.

    frame over connection.max_frame_bytes  websockets closes with 1009; a2pd counts
                                           frames_oversized, logs frame_oversized, reconnects
                                           without recovery (a recovery would replay the same
                                           frame) and keeps delivering
    nesting deeper than protocol.MAX_DEPTH a frame error, dead-lettered
    large fields                           bounded only by the frame size; dead-letter raw
                                           bytes are cut to the journal's max_raw_bytes
"""

from __future__ import annotations

from pathlib import Path

import pytest

from a2pd import events, protocol
from a2pd.delivery import DECODED_BYTES, Decoded, decode_row
from a2pd.journal import Row
from a2pd.journal.recent import RECENT_BYTES
from a2pd.pipeline import Pipeline
from a2pd.router import Router
from tests.harness import (
    delivered,
    emulator,
    open_test_journal,
    read_dead_letters,
    read_records,
    running_daemon,
    sample_event,
    seed,
    session_count,
    settings_for,
)

MAX_FRAME = 64 * 1024


async def test_oversized_frame_is_counted_and_the_session_starts_afresh(tmp_path: Path) -> None:
    """A notification larger than max_frame_bytes is lost, counted and logged; the daemon
    reconnects with a fresh subscription (no recovery loop) and delivers what follows,
    including an event just under the limit."""
    emu = emulator(wsc_on_notifications=1)
    body = seed("outbound.json")["body"]
    async with emu.running():
        settings = settings_for(emu, tmp_path, connection={"max_frame_bytes": MAX_FRAME})
        async with running_daemon(settings) as daemon:
            assert daemon.supervisor is not None
            state = daemon.supervisor.state
            await emu.publish("message", {**body, "id": "before"})
            await delivered(daemon, "archive", 1)
            await emu.publish("message", {**body, "id": "huge", "text": "x" * (MAX_FRAME + 1)})
            await session_count(daemon, "frames_oversized", 1)
            await session_count(daemon, "subscriptions", 2)
            # just under the limit: the frame is the text plus ~700 bytes of envelope
            await emu.publish("message", {**body, "id": "large", "text": "y" * (MAX_FRAME - 2000)})
            await emu.publish("message", {**body, "id": "after"})
            await delivered(daemon, "archive", 3)
            assert state.counters["frames_oversized"] == 1
            assert state.counters["connections"] == 2
            assert state.counters["recoveries_successful"] == 0
            assert daemon.supervisor.gaps == 1
    ids = [r["body"]["id"] for r in read_records(tmp_path / "events")]
    assert ids == ["before", "large", "after"]
    closes = [c for c in emu.connections if c.close_reason]
    assert closes, "the emulator saw no close"


async def test_deep_and_huge_frames_are_dead_lettered_with_bounded_raw(tmp_path: Path) -> None:
    """A frame nested past the limit and a 1 MiB garbage frame are dead-lettered (the raw
    bytes cut to 64 KiB, the full size recorded); the session goes on."""
    emu = emulator()
    deep = '[{"type":"ServerNotification"},{"a":' + "[" * 100 + "]" * 100 + "}]"
    huge = "z" * (1024 * 1024)
    async with emu.running():
        settings = settings_for(emu, tmp_path)
        async with running_daemon(settings) as daemon:
            await emu.publish_raw_frame(deep)
            await emu.publish_raw_frame(huge)
            await emu.publish("optout", seed("optout.json")["body"])
            await delivered(daemon, "archive", 1)
            assert daemon.supervisor is not None
            assert daemon.supervisor.state.counters["frames_malformed"] == 2
            assert daemon.supervisor.state.counters["connections"] == 1
    letters = await read_dead_letters(settings)
    assert [d.sink for d in letters] == ["frame", "frame"]
    assert f"nested deeper than {protocol.MAX_DEPTH} levels" in letters[0].reason
    assert letters[0].raw == deep.encode()
    assert letters[1].size == len(huge)
    assert len(letters[1].raw) == 64 * 1024
    assert letters[1].truncated


async def test_rows_kept_in_memory_for_the_readers_are_bounded_by_bytes(
        tmp_path: Path) -> None:
    """Large events do not make the journal's in-memory rows grow past their byte bound
    (regression: the pipeline's decoded-event cache was bounded by count only, 8192 events
    of up to a frame each; the decoded events are bounded apart, below)."""
    journal = await open_test_journal(tmp_path / "j.db", commit_interval=0.05,
                                      commit_max=1000)
    try:
        pipeline = Pipeline(Router((), ("archive",)), {}, journal)
        for i in range(40):
            event = sample_event("inbound.json", uuid=f"u{i}", text="t" * (1024 * 1024))
            await pipeline.ingest_event(event)
            await journal.commit()
        kept = list(journal._recent)
        assert sum(len(row.record) for row in kept) <= RECENT_BYTES
        assert 0 < len(kept) < 40
        assert [row.uuid for row in kept] == [f"u{i}" for i in range(40 - len(kept), 40)]
        # a reader behind the kept rows reads the database
        rows = await journal.read(0, 100)
        assert [row.uuid for row in rows] == [f"u{i}" for i in range(40)]
    finally:
        await journal.aclose()


def test_decoded_events_kept_for_the_readers_are_bounded_by_bytes() -> None:
    """The pipeline's decoded events for readers that keep up are bounded by the bytes of
    their records too, the oldest forgotten first; a row is then decoded again."""
    decoded = Decoded()
    kept: list[Row] = []
    for i in range(40):
        event = sample_event("inbound.json", uuid=f"u{i}", text="t" * (1024 * 1024))
        record = events.record_json(event)
        decoded.add(event, record)
        kept.append(Row(i + 1, event.uuid, event.kind, ",archive,", record))
    found = [row.uuid for row in kept if decoded.get(row) is not None]
    assert 0 < len(found) <= DECODED_BYTES // (1024 * 1024)
    assert found == [f"u{i}" for i in range(40 - len(found), 40)]
    # a forgotten one: its row is decoded again, to the event that was appended
    assert decoded.get(kept[0]) is None
    again = decode_row(kept[0])
    assert not isinstance(again, events.EventError)
    assert events.record_json(again) == kept[0].record


async def test_queued_dead_letters_are_cut_after_masking_and_committed_in_order(
        tmp_path: Path) -> None:
    """Dead letters of received input ride the group commit, in order, counted once
    committed; a secret straddling the 64 KiB cut is masked, not half kept (regression: the
    raw bytes were cut before masking)."""
    from a2pd.logging import register_secret

    secret = "straddling-secret-0123456789"
    register_secret(secret, permanent=True)
    journal = await open_test_journal(tmp_path / "j.db", commit_interval=0.05,
                                      commit_max=1000)
    try:
        cut = journal.options.max_raw_bytes
        straddling = b"a" * (cut - 10) + secret.encode() + b"tail" * 100
        await journal.queue_dead_letter("frame", "first", b"one")
        await journal.queue_dead_letter("notification", "second", straddling, uuid="u2")
        assert journal.counters["dead_letters"] == 0
        await journal.commit()
        assert journal.counters["dead_letters"] == 2
        letters = await journal.letters.entries()
    finally:
        await journal.aclose()
    assert [(d.sink, d.reason, d.uuid) for d in letters] == [
        ("frame", "first", None), ("notification", "second", "u2")]
    assert letters[0].raw == b"one"
    assert letters[1].size == len(straddling)
    assert len(letters[1].raw) == cut
    assert secret[:8].encode() not in letters[1].raw
    assert b"a***tail" in letters[1].raw


async def test_dead_letter_listing_escapes_hostile_uuids(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    """`a2pd dead-letters list` shows a sender's uuid with control characters escaped: one
    line per letter, no escape sequence reaches the terminal (regression)."""
    from a2pd import admin

    journal = await open_test_journal(tmp_path, commit_interval=0.05, commit_max=1000)
    await journal.queue_dead_letter("notification", "body.from: bad\nFAKE", b"{}",
                                    uuid="u\x1b[2J\nFAKE 1 frame")
    await journal.commit()
    await journal.aclose()
    request = admin.LetterRequest(action="list", ids=[], all=False, sink=None, as_json=False,
                                  yes=False, configured_sinks=[])
    assert await admin.dead_letters(tmp_path, request) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert len(out.splitlines()) == 1
    assert "u\\x1b[2J\\nFAKE" in out
