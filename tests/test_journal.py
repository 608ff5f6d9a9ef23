"""The SQLite journal: group commit, dedup, cursors, compaction, bounds, dead letters, faults."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from a2pd.journal import Journal, JournalError
from a2pd.journal import db as journal_db
from a2pd.journal import store as journal_store
from tests.harness import open_test_journal


async def open_journal(tmp_path: Path, **options: Any) -> Journal:
    return await open_test_journal(tmp_path, **{"commit_interval": 0.05, "commit_max": 100,
                                                **options})


async def deliver_and_compact(journal: Journal, count: int) -> None:
    """Journal ``count`` events (``u0``, ``u1``, …) for sink ``s``, deliver them all and
    compact them away."""
    await journal.cursor("s")
    for i in range(count):
        await journal.append(f"u{i}", "k", ["s"], b"{}")
    await journal.commit()
    await journal.advance("s", count)
    assert await journal.compact(["s"]) == count


async def test_commit_assigns_order_and_drops_duplicates(tmp_path: Path) -> None:
    """Committed rows are ordered; a uuid seen before is not journaled twice."""
    journal = await open_journal(tmp_path)
    for uuid in ["a", "b", "a", "c"]:
        await journal.append(uuid, "outbound", ["s"], uuid.encode())
    await journal.commit()
    await journal.append("b", "outbound", ["s"], b"b again")
    await journal.commit()
    rows = await journal.read(0, 10)
    assert [r.uuid for r in rows] == ["a", "b", "c"]
    assert [r.seq for r in rows] == sorted(r.seq for r in rows)
    assert journal.counters["duplicates"] == 2
    await journal.aclose()


async def test_cursors_survive_reopen_and_compaction_frees_rows(tmp_path: Path) -> None:
    """Each sink resumes from its cursor after a reopen; rows all sinks passed are removed."""
    journal = await open_journal(tmp_path)
    for i in range(5):
        await journal.append(f"u{i}", "batch", ["a", "b"], b"{}")
    await journal.commit()
    assert await journal.cursor("a") == 0
    assert await journal.cursor("b") == 0
    await journal.advance("a", 3)
    await journal.advance("b", 2)
    assert await journal.compact(["a", "b"]) == 2
    await journal.aclose()

    again = await open_journal(tmp_path)
    assert await again.cursor("a") == 3
    assert [r.uuid for r in await again.read(await again.cursor("b"), 10)] == ["u2", "u3", "u4"]
    # a uuid compacted away is still remembered for the dedup window
    await again.append("u0", "batch", ["a"], b"{}")
    await again.commit()
    assert again.counters["duplicates"] == 1
    await again.aclose()


async def test_seq_keeps_growing_after_compaction_empties_the_journal(tmp_path: Path) -> None:
    """After every row is compacted away, new rows still come after each sink's cursor."""
    journal = await open_journal(tmp_path)
    await deliver_and_compact(journal, 3)
    await journal.append("next", "k", ["s"], b"")
    [seq] = await journal.commit()
    assert seq == 4
    assert [r.uuid for r in await journal.read(await journal.cursor("s"), 10)] == ["next"]
    await journal.aclose()


async def test_block_policy_waits_for_room(tmp_path: Path) -> None:
    """With full_policy=block, an append waits until compaction makes room."""
    journal = await open_journal(tmp_path, max_events=2)
    await journal.append("a", "k", ["s"], b"")
    await journal.append("b", "k", ["s"], b"")
    await journal.commit()
    await journal.cursor("s")
    done = anyio.Event()

    async def third() -> None:
        await journal.append("c", "k", ["s"], b"")
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(third)
        await anyio.wait_all_tasks_blocked()
        assert not done.is_set()
        await journal.advance("s", 1)
        await journal.compact(["s"])
        with anyio.fail_after(5):
            await done.wait()
    assert journal.counters["full_waits"] >= 1
    await journal.aclose()


async def test_drop_oldest_policy_counts_what_it_drops(tmp_path: Path) -> None:
    """With full_policy=drop_oldest the oldest rows go, counted, and new ones are kept."""
    journal = await open_journal(tmp_path, max_events=3, full_policy="drop_oldest")
    for i in range(5):
        await journal.append(f"u{i}", "k", ["s"], b"")
    await journal.commit()
    assert [r.uuid for r in await journal.read(0, 10)] == ["u2", "u3", "u4"]
    assert journal.counters["dropped_full"] == 2
    # a dropped event's uuid is still remembered: the same notification again is a duplicate
    await journal.append("u0", "k", ["s"], b"")
    assert await journal.commit() == []
    assert journal.counters["duplicates"] == 1
    await journal.aclose()


async def test_content_keys_set_and_dropped_in_one_commit_end_as_in_order(
        tmp_path: Path) -> None:
    """One group commit applies content keys as if event by event: an opt-in after an
    opt-out forgets the opt-out's key, an opt-out after an opt-in sets it again, and a
    backfilled event sees the result."""
    journal = await open_journal(tmp_path)
    await journal.append("out-1", "optout", ["s"], b"1", key="optout:a:b:true")
    await journal.append("in-1", "optin", ["s"], b"2", key="optout:a:b:false",
                         drop=("optout:a:b:true",))
    await journal.append("in-2", "optin", ["s"], b"3", key="optout:c:d:false",
                         drop=("optout:c:d:true",))
    await journal.append("out-2", "optout", ["s"], b"4", key="optout:c:d:true",
                         drop=("optout:c:d:false",))
    assert len(await journal.commit()) == 4
    # the backfill rebuilds the states: a:b opted in (known), c:d opted out (known); the
    # opposite states were forgotten, so rebuilt events carrying them are journaled
    for uuid, key in [("b1", "optout:a:b:false"), ("b2", "optout:c:d:true"),
                      ("b3", "optout:a:b:true"), ("b4", "optout:c:d:false")]:
        await journal.append(uuid, "optout", ["s"], b"b", key=key, backfilled=True)
    await journal.commit()
    assert [r.uuid for r in await journal.read(4, 10)] == ["b3", "b4"]
    assert journal.counters["backfill_duplicates"] == 2
    await journal.aclose()


async def test_open_objects_follow_their_last_event_and_expire(tmp_path: Path) -> None:
    """An object is open from its first non-final event to its final one, whatever the order
    inside a group commit; duplicates change nothing; one without news for the dedup window
    is forgotten, and so is one the caller says is gone."""
    now = [1000.0]
    journal = await open_journal(tmp_path, dedup_window=60.0, clock=lambda: now[0])
    await journal.cursor("s")
    await journal.append("q1", "outbound", ["s"], b"1", track=("message:1", "b", 500.0, True))
    await journal.append("q2", "outbound", ["s"], b"2", track=("message:2", "b", 400.0, True))
    await journal.append("d1", "outbound", ["s"], b"3", track=("message:1", "b", 900.0, False))
    await journal.append("p", "batch", ["s"], b"4", track=("batch:b", "b", 300.0, True))
    await journal.append("x", "inbound", ["s"], b"5", track=("message:9", None, 800.0, True))
    await journal.commit()
    assert await journal.gaps.open_objects(1000.0) == [
        ("message:9", None, 800.0), ("batch:b", "b", 300.0), ("message:2", "b", 400.0)]
    assert await journal.gaps.open_objects(350.0) == [("batch:b", "b", 300.0)]
    await journal.append("q1", "outbound", ["s"], b"1", track=("message:1", "b", 500.0, True))
    await journal.commit()  # a duplicate uuid does not reopen message 1
    assert [o for o, _, _ in await journal.gaps.open_objects(1000.0)] == [
        "message:9", "batch:b", "message:2"]
    await journal.gaps.forget_objects(["message:9"])
    now[0] += 30
    await journal.append("s2", "outbound", ["s"], b"6", track=("message:2", "b", 400.0, True))
    await journal.commit()
    now[0] += 45  # batch b: 75 s without news; message 2: 45 s
    await journal.compact(["s"])
    assert await journal.gaps.open_objects(1000.0) == [("message:2", "b", 400.0)]
    await journal.aclose()


async def test_a_rebuilt_opt_out_state_older_than_the_pairs_newest_is_stale(
        tmp_path: Path) -> None:
    """A backfilled opt-out state set before the newest state journaled for its pair (listed
    before a newer notification arrived) is dropped; a newer one is journaled; received
    notifications are never dropped this way."""
    journal = await open_journal(tmp_path)
    await journal.append("live-in", "optin", ["s"], b"1", key="optout:a:b:false",
                         drop=("optout:a:b:true",), pair=("a:b", 100.0))
    await journal.commit()
    await journal.append("old-out", "optout", ["s"], b"2", key="optout:a:b:true",
                         drop=("optout:a:b:false",), backfilled=True, pair=("a:b", 90.0))
    await journal.append("live-late", "optout", ["s"], b"3", key="optout:c:d:true",
                         pair=("c:d", 50.0))
    await journal.commit()
    await journal.append("new-out", "optout", ["s"], b"4", key="optout:a:b:true",
                         drop=("optout:a:b:false",), backfilled=True, pair=("a:b", 110.0))
    await journal.append("old-c", "optin", ["s"], b"5", key="optout:c:d:false",
                         drop=("optout:c:d:true",), backfilled=True, pair=("c:d", 40.0))
    await journal.commit()
    assert [r.uuid for r in await journal.read(0, 10)] == ["live-in", "live-late", "new-out"]
    assert journal.counters["backfill_duplicates"] == 2
    await journal.aclose()


async def test_dead_letters_are_stored_with_details(tmp_path: Path) -> None:
    """A dead letter keeps sink, reason, attempts, times and raw bytes."""
    journal = await open_journal(tmp_path)
    await journal.letters.add("http", "400 Bad Request", b"\x00raw", uuid="u", seq=7,
                                  attempts=3, first_attempt=1.0, last_attempt=2.0)
    [letter] = await journal.letters.entries("http")
    assert (letter.sink, letter.uuid, letter.seq, letter.reason, letter.attempts,
            letter.first_attempt, letter.last_attempt, letter.raw) == \
        ("http", "u", 7, "400 Bad Request", 3, 1.0, 2.0, b"\x00raw")
    assert await journal.letters.entries("other") == []
    await journal.aclose()


async def test_disk_full_keeps_pending_events_and_never_corrupts(tmp_path: Path) -> None:
    """A full disk fails the commit cleanly; the batch stays pending and commits once there
    is room; committed rows are intact and the database checks clean."""
    journal = await open_journal(tmp_path)
    await journal.append("first", "k", ["s"], b"{}")
    await journal.commit()
    pages = journal.database.conn.execute("PRAGMA page_count").fetchone()[0]
    journal.database.conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own SQLITE_FULL
    for i in range(50):
        await journal.append(f"u{i}", "k", ["s"], b"x" * 4000)
    with pytest.raises(JournalError, match="disk is full") as info:
        await journal.commit()
    assert info.value.transient
    journal.database.conn.execute("PRAGMA max_page_count = 1073741823")
    assert len(await journal.commit()) == 50
    assert [r.uuid for r in await journal.read(0, 100)][:2] == ["first", "u0"]
    assert journal.database.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    await journal.aclose()


async def test_corrupt_database_is_a_clear_error(tmp_path: Path) -> None:
    """A file that is not a SQLite database is refused with a clear message."""
    (tmp_path / "journal.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(JournalError, match="corrupt"):
        await open_journal(tmp_path)


async def test_locked_database_is_a_clear_error(tmp_path: Path) -> None:
    """Another process holding the write lock gives a 'locked' error, not a hang."""
    journal = await open_journal(tmp_path)
    other = sqlite3.connect(tmp_path / "journal.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        await journal.append("a", "k", ["s"], b"")
        with pytest.raises(JournalError, match="locked") as info:
            await journal.commit()
        assert info.value.transient
    finally:
        other.execute("ROLLBACK")
        other.close()
    await journal.aclose()


async def test_unwritable_state_dir_is_a_clear_error(tmp_path: Path) -> None:
    """A state directory we cannot write is reported, not a traceback."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(JournalError, match="cannot open"):
        await open_test_journal(blocker, commit_interval=0.1, commit_max=10,
                                dedup_window=60.0)


async def test_journal_file_is_private(tmp_path: Path) -> None:
    """The database file is created with mode 0600."""
    journal = await open_journal(tmp_path)
    assert (tmp_path / "journal.db").stat().st_mode & 0o777 == 0o600
    await journal.aclose()


async def test_replay_requeues_sink_dead_letters_only(tmp_path: Path) -> None:
    """Replay puts a sink's dead letter back for that sink; frame/notification ones stay."""
    journal = await open_journal(tmp_path)
    record = b'{"kind":"outbound","uuid":"u1"}'
    await journal.letters.add("http", "400", record, uuid="u1")
    await journal.letters.add("frame", "not JSON", b"garbage")
    assert await journal.letters.replay(None, None) == 1
    rows = await journal.read(0, 10)
    assert [(r.uuid, r.kind, r.targets, r.record) for r in rows] == [
        ("u1#replay-1", "outbound", ",http,", record)]
    assert [d.sink for d in await journal.letters.entries()] == ["frame"]
    with pytest.raises(JournalError, match="no dead letter"):
        await journal.letters.replay([99], None)
    assert await journal.letters.purge(None, "frame") == 1
    assert await journal.letters.entries() == []
    await journal.aclose()


async def test_dead_letter_raw_is_bounded_and_scrubbed(tmp_path: Path) -> None:
    """Raw bytes are cut to the limit (size kept) and registered secrets are masked."""
    from a2pd.logging import register_secret

    register_secret("sekrit-token-123")
    journal = await open_journal(tmp_path, max_raw_bytes=32)
    await journal.letters.add("frame", "bad", b"x sekrit-token-123 " + b"y" * 100)
    [letter] = await journal.letters.entries()
    assert letter.size == 119
    assert letter.truncated
    assert b"sekrit" not in letter.raw
    assert len(letter.raw) <= 32
    await journal.aclose()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "a2pd", *args], capture_output=True,
                          text=True, timeout=60, check=False)


async def test_admin_commands(tmp_path: Path) -> None:
    """`a2pd journal stats` and `a2pd dead-letters list|show|replay|purge` work on a journal."""
    journal = await open_journal(tmp_path)
    await journal.append("u1", "inbound", ["archive"], b'{"kind":"inbound"}')
    await journal.commit()
    await journal.cursor("archive")
    await journal.letters.add("archive", "refused", b'{"kind":"inbound","uuid":"u2"}',
                                  uuid="u2", attempts=4)
    await journal.gaps.add(1_700_000_000.0)
    await journal.aclose()
    state = ["--state-dir", str(tmp_path)]

    stats = run_cli("journal", "stats", "--json", *state)
    assert stats.returncode == 0, stats.stderr
    data = json.loads(stats.stdout)
    assert data["events"] == 1
    assert data["lag"] == {"archive": 1}
    assert data["dead_letters"] == {"archive": 1}
    assert [gap["start"] for gap in data["gaps"]] == ["2023-11-14T22:13:20+00:00"]
    text = run_cli("journal", "stats", *state).stdout
    assert "gap pending    events since 2023-11-14T22:13:20+00:00" in text

    listed = run_cli("dead-letters", "list", "--json", *state)
    assert [d["uuid"] for d in json.loads(listed.stdout)] == ["u2"]
    shown = run_cli("dead-letters", "show", "1", *state)
    assert json.loads(shown.stdout)["raw"] == '{"kind":"inbound","uuid":"u2"}'
    assert run_cli("dead-letters", "replay", *state).returncode == 2
    replayed = run_cli("dead-letters", "replay", "--all", *state)
    assert "requeued 1" in replayed.stdout
    assert json.loads(run_cli("journal", "stats", "--json", *state).stdout)["events"] == 2
    assert "purged 0" in run_cli("dead-letters", "purge", "--all", *state).stdout

    missing = run_cli("journal", "stats", "--state-dir", str(tmp_path / "nowhere"))
    assert missing.returncode == 74
    assert "no journal here" in missing.stderr


async def test_cancelled_commit_keeps_its_batch(tmp_path: Path) -> None:
    """A commit cancelled before its transaction ran (shutdown, a sibling task failing) puts
    the batch back: the next commit writes it, oldest first, nothing lost or doubled."""
    journal = await open_journal(tmp_path)
    for i in range(3):
        await journal.append(f"u{i}", "k", ["s"], b"{}")
    with anyio.CancelScope() as scope:
        scope.cancel()
        await journal.commit()
    assert scope.cancelled_caught
    await journal.append("u3", "k", ["s"], b"{}")
    await journal.append("u1", "k", ["s"], b"{}")  # still known as pending: a duplicate
    await journal.commit()
    assert [r.uuid for r in await journal.read(0, 10)] == ["u0", "u1", "u2", "u3"]
    assert journal.counters["committed"] == 4
    await journal.aclose()


async def test_late_duplicate_after_the_dedup_window_is_skipped(tmp_path: Path) -> None:
    """A uuid whose dedup entry expired while its event is still journaled (a slow sink)
    arrives again: it is counted as a duplicate, not an integrity error."""
    now = [1000.0]
    journal = await open_journal(tmp_path, dedup_window=60.0, clock=lambda: now[0])
    await journal.cursor("s")
    await journal.append("late", "k", ["s"], b"{}")
    await journal.commit()
    now[0] += 3600
    assert await journal.compact(["s"]) == 0  # undelivered: kept; its seen row expires
    await journal.append("late", "k", ["s"], b"again")
    assert await journal.commit() == []
    rows = await journal.read(0, 10)
    assert [(r.uuid, r.record) for r in rows] == [("late", b"{}")]
    assert journal.counters["duplicates"] == 1
    await journal.aclose()


async def test_max_age_removes_old_undelivered_events_loudly(tmp_path: Path) -> None:
    """``max_age`` bounds how long an undelivered event is kept; removals are counted."""
    now = [1000.0]
    journal = await open_journal(tmp_path, max_age=600.0, clock=lambda: now[0])
    await journal.cursor("s")
    await journal.append("old", "k", ["s"], b"{}")
    await journal.commit()
    now[0] += 500
    await journal.append("new", "k", ["s"], b"{}")
    await journal.commit()
    now[0] += 200
    assert await journal.compact(["s"]) == 1
    assert [r.uuid for r in await journal.read(0, 10)] == ["new"]
    assert journal.counters["expired"] == 1
    assert (await journal.stats())["events"] == 1
    await journal.aclose()


async def test_group_commit_commits_as_soon_as_an_append_arrives(tmp_path: Path) -> None:
    """With commit_interval 0 the committer commits at once (no interval to wait out)."""
    journal = await open_journal(tmp_path, commit_interval=0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(journal.run_committer)
        with anyio.fail_after(10):
            await journal.append("a", "outbound", ["s"], b"a")
            await journal.wait_committed()
        assert [r.uuid for r in await journal.read(0, 10)] == ["a"]
        tg.cancel_scope.cancel()
    await journal.aclose()


async def test_reads_come_from_recent_commits_and_see_rows_added_elsewhere(
        tmp_path: Path) -> None:
    """Readers get the latest commits' rows from memory, and still every row another
    process added in between (a dead-letter replay) from the database, in order."""
    journal = await open_journal(tmp_path)
    await journal.append("a", "outbound", ["s"], b"a")
    await journal.commit()
    other = sqlite3.connect(tmp_path / "journal.db")
    with other:
        other.execute("INSERT INTO events (uuid, kind, targets, received, record) "
                      "VALUES ('elsewhere', 'outbound', ',s,', 0, x'00')")
    other.close()
    await journal.append("b", "outbound", ["s"], b"b")
    await journal.commit()
    assert [r.uuid for r in await journal.read(0, 10)] == ["a", "elsewhere", "b"]
    first = (await journal.read(0, 1))[0]
    assert [r.uuid for r in await journal.read(first.seq, 10)] == ["elsewhere", "b"]
    await journal.aclose()


async def test_checkpoint_moves_committed_rows_into_the_database_file(tmp_path: Path) -> None:
    """checkpoint() copies the WAL into journal.db from its own connection (the automatic
    checkpoint is far off), and the journal goes on committing and reading after it."""
    journal = await open_journal(tmp_path)
    for i in range(200):
        await journal.append(f"u{i}", "outbound", ["s"], b"x" * 500)
    await journal.commit()
    before = (tmp_path / "journal.db").stat().st_size
    await journal.checkpoint()
    assert (tmp_path / "journal.db").stat().st_size > before + 200 * 500
    await journal.append("after", "outbound", ["s"], b"y")
    await journal.commit()
    assert len(await journal.read(0, 1000)) == 201
    await journal.aclose()


def _wal_salt(tmp_path: Path) -> bytes:
    """The WAL header's salts: new ones each time a commit starts the WAL over."""
    with open(tmp_path / "journal.db-wal", "rb") as wal:
        return wal.read(24)[16:24]


async def test_the_scheduled_checkpoint_waits_for_a_wal_worth_copying(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After every complete checkpoint, the next commit starts the WAL over and syncs its
    new header (SQLite at synchronous=NORMAL): an fdatasync on the committing thread, the
    event loop's for a small commit, 11-20 ms here. With a checkpoint every second, that was
    the p99 at 1,000 events/s (#17). The scheduled checkpoint (``when_due``) copies only
    once ``CHECKPOINT_FRAMES`` wait, or any wait and the journal is quiet: small commits
    in between go on in the same WAL (was: a new WAL after every second's checkpoint)."""
    journal = await open_journal(tmp_path)
    monkeypatch.setattr(journal_db, "CHECKPOINT_FRAMES", 200)
    for i in range(20):
        await journal.append(f"a{i}", "outbound", ["s"], b"x" * 500)
    await journal.commit()
    salt = _wal_salt(tmp_path)
    for round_ in range(5):  # a few frames a round, a checkpoint looked for each time
        await journal.append(f"b{round_}", "outbound", ["s"], b"y" * 500)
        await journal.commit()
        await journal.checkpoint(when_due=True)
    await journal.append("c", "outbound", ["s"], b"z")
    await journal.commit()
    assert _wal_salt(tmp_path) == salt  # never copied: the WAL went on
    for i in range(300):  # over CHECKPOINT_FRAMES: due
        await journal.append(f"d{i}", "outbound", ["s"], b"w" * 5000)
    await journal.commit()
    await journal.checkpoint(when_due=True)
    await journal.append("e", "outbound", ["s"], b"v")
    await journal.commit()
    assert _wal_salt(tmp_path) != salt  # copied, and the commit started the WAL over
    salt = _wal_salt(tmp_path)
    await journal.append("f", "outbound", ["s"], b"u")
    await journal.commit()
    monkeypatch.setattr(journal_db, "TRUNCATE_IDLE", 0.0)  # quiet since: due
    await journal.checkpoint(when_due=True)
    await journal.append("g", "outbound", ["s"], b"t")
    await journal.commit()
    assert _wal_salt(tmp_path) != salt
    assert len(await journal.read(0, 1000)) == 329
    await journal.aclose()


async def test_the_scheduled_checkpoint_cuts_a_quiet_wal_with_every_frame_copied(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A burst grew the WAL and a checkpoint copied all of it while traffic went on; then
    the journal goes quiet. Nothing waits to be copied, and the scheduled checkpoint still
    cuts the file to nothing (was, with the first ``when_due``: not due with no frame
    waiting, and the burst's WAL stayed on disk until traffic came back)."""
    journal = await open_journal(tmp_path)
    wal = tmp_path / "journal.db-wal"
    for i in range(300):
        await journal.append(f"a{i}", "outbound", ["s"], b"x" * 20_000)
    await journal.commit()
    await journal.checkpoint()  # every frame copied; the WAL file keeps its size
    assert wal.stat().st_size > journal_db.WAL_IDLE_SIZE
    await journal.checkpoint(when_due=True)  # a commit just came: not quiet, not due
    assert wal.stat().st_size > journal_db.WAL_IDLE_SIZE
    monkeypatch.setattr(journal_db, "TRUNCATE_IDLE", 0.0)  # quiet since
    await journal.checkpoint(when_due=True)
    assert wal.stat().st_size == 0
    assert len(await journal.read(0, 1000)) == 300
    await journal.aclose()


def test_the_wal_backlog_is_read_from_the_wal_index(tmp_path: Path) -> None:
    """``wal_backlog`` reads the frames not copied yet from the "-shm" file's header
    (walformat.html): what ``PRAGMA wal_checkpoint`` reports, without running one."""
    path = tmp_path / "journal.db"
    with contextlib.closing(journal_db.connect(path, fsync=False)) as conn:
        shm = os.open(path.with_name("journal.db-shm"), os.O_RDONLY)
        try:
            conn.execute("CREATE TABLE t (x)")
            with conn:
                conn.executemany("INSERT INTO t VALUES (zeroblob(10000))", [()] * 50)
            waiting = journal_db.wal_backlog(shm)
            other = sqlite3.connect(path)
            busy, log, copied = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            other.close()
            assert (busy, copied, waiting) == (0, log, log)
            assert log > 100
            assert journal_db.wal_backlog(shm) == 0
            with conn:
                conn.execute("INSERT INTO t VALUES (1)")  # starts the WAL over
            assert journal_db.wal_backlog(shm) in (1, 2)
        finally:
            os.close(shm)


async def test_compaction_works_in_chunks_until_done(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A long delivered backlog is compacted a chunk per transaction, all of it in one
    call; every removed uuid is still deduplicated, and expired seen rows go in chunks too."""
    monkeypatch.setattr(journal_store, "COMPACT_CHUNK", 3)
    now = [1000.0]
    journal = await open_journal(tmp_path, dedup_window=60.0, clock=lambda: now[0])
    await deliver_and_compact(journal, 10)
    assert journal.depth == 0
    for i in range(10):
        await journal.append(f"u{i}", "k", ["s"], b"{}")
    assert await journal.commit() == []
    assert journal.counters["duplicates"] == 10
    now[0] += 61  # past the dedup window: the seen rows go, seven more than a chunk
    assert await journal.compact(["s"]) == 0
    assert journal.database.conn.execute("SELECT COUNT(*) FROM seen").fetchone()[0] == 0
    await journal.aclose()


async def test_the_last_seq_survives_compaction_and_reopening(tmp_path: Path) -> None:
    """Every event delivered and compacted away: the journal still knows the newest seq it
    gave out, in `a2pd journal stats` and after reopening (was: 0, beside cursors at 5)."""
    journal = await open_journal(tmp_path)
    await deliver_and_compact(journal, 5)
    assert journal.last_seq == 5
    assert (await journal.stats())["last_seq"] == 5
    await journal.aclose()
    journal = await open_journal(tmp_path)
    assert journal.last_seq == 5
    assert (await journal.stats())["last_seq"] == 5
    await journal.aclose()


async def test_dropping_the_oldest_is_logged_as_a_sample(tmp_path: Path) -> None:
    """A full journal dropping events at every commit logs a sample (10 lines a minute,
    then a line saying how many were held back), while the counter counts every one (was:
    one line per commit, 378 lines in 3 s)."""
    journal = await open_journal(tmp_path, max_events=2, full_policy="drop_oldest")
    with capture_logs() as logs:
        for i in range(50):
            await journal.append(f"u{i}", "k", ["s"], b"")
            await journal.append(f"v{i}", "k", ["s"], b"")
            await journal.commit()
    lines = [line for line in logs if line["event"] == "journal_full_dropped_oldest"]
    assert len(lines) == 10
    assert journal.counters["dropped_full"] == 98
    await journal.aclose()



async def test_a_run_that_did_not_end_cleanly_is_a_gap_from_its_last_commit(
        tmp_path: Path) -> None:
    """The run marker: a run that ends without ``end_run`` (SIGKILL, a crash, a stop with
    events it could not commit) makes the next ``begin_run`` record a gap from its last
    commit, in the same transaction (a start that then fails cannot lose it); a clean end
    records nothing."""
    journal = await open_journal(tmp_path)
    assert await journal.gaps.begin_run() is None  # a journal's first run
    await journal.append("u0", "k", ["s"], b"{}")
    await journal.commit()
    last = float(await journal.gaps.get_meta("last_commit") or "nan")
    await journal.aclose()  # no end_run: as after a SIGKILL

    journal = await open_journal(tmp_path)
    unclean = await journal.gaps.begin_run()
    assert unclean is not None
    since, gap = unclean
    assert since == last
    assert [g.id for g in await journal.gaps.pending()] == [gap]
    assert await journal.end_run()
    await journal.aclose()

    journal = await open_journal(tmp_path)
    assert await journal.gaps.begin_run() is None
    started = float(await journal.gaps.get_meta("run_started") or "nan")
    await journal.aclose()  # killed again before committing anything: a gap from its start
    journal = await open_journal(tmp_path)
    assert await journal.gaps.begin_run(record_gap=False) == (started, None)
    assert len(await journal.gaps.pending()) == 1
    await journal.aclose()
