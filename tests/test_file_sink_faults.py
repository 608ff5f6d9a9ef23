"""The file sink under real faults: a full disk (a small tmpfs mounted in the test), a sink
directory deleted or a file replaced behind the daemon's back, a reopen beside delivery.

The disks are tests/disks.py's.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from a2pd.errors import SinkError
from a2pd.sinks import SinkContext
from a2pd.sinks.file import FileOptions, FileSink
from tests.disks import fill, free, tmpfs
from tests.harness import (
    TIMEOUT,
    delivered,
    emulator,
    running_daemon,
    sample_event,
    seed,
    settings_for,
)

#: a record longer than a memory page: it never fits in the rest of a file's last page, so
#: on a full tmpfs part of a batch lands and the rest is refused
PADDING = "x" * (os.sysconf("SC_PAGESIZE") + 100)
BODY = {**seed("outbound.json")["body"], "text": PADDING}


def file_sink(directory: Path, **options: Any) -> FileSink:
    opts = FileOptions.model_validate({"directory": str(directory), **options})
    return FileSink("files", opts, SinkContext(state_dir=directory.parent))


def records(path: Path) -> list[dict[str, Any]]:
    """Every line of ``path`` as a JSON record (each line must be one whole record)."""
    data = path.read_bytes()
    assert not data or data.endswith(b"\n")
    return [json.loads(line) for line in data.splitlines()]


def archive(directory: Path, fsync: str) -> str:
    return f"""
[sinks.archive]
type = "file"
directory = "{directory}"
path = "{{kind}}.jsonl"
fsync = "{fsync}"
fsync_interval = "10ms"
"""


@pytest.mark.parametrize("fsync", ["never", "interval", "always"])
async def test_a_batch_refused_by_a_full_disk_is_written_once(tmp_path: Path,
                                                              fsync: str) -> None:
    """A batch written to a full disk fails, transiently, three times, leaving the file as it
    was before it (the part that fit is cut off); once there is room the retry writes it,
    and the file holds every event once, each line a whole record."""
    with tmpfs(tmp_path / "disk") as disk:
        sink = file_sink(disk / "out", path="all.jsonl", fsync=fsync, fsync_interval=0.001)
        target = disk / "out" / "all.jsonl"
        try:
            await sink.send([sample_event(uuid="u0", text=PADDING)])
            before = target.read_bytes()
            fill(disk)
            batch = [sample_event(uuid=f"u{n}", text=PADDING) for n in (1, 2, 3)]
            for _ in range(3):
                with pytest.raises(SinkError) as info:
                    await sink.send(batch)
                assert not info.value.permanent
                assert target.read_bytes() == before
            free(disk)
            await sink.send(batch)
        finally:
            await sink.aclose()
        assert [r["uuid"] for r in records(target)] == ["u0", "u1", "u2", "u3"]


async def test_a_failed_batch_is_cut_back_in_every_file_it_touched(tmp_path: Path) -> None:
    """A batch for two files whose first file's lines fit on the full disk and whose second
    file's do not: the first file is cut back too, so the retry does not write it twice."""
    with tmpfs(tmp_path / "disk") as disk:
        sink = file_sink(disk / "out", path="{kind}.jsonl")
        inbound = disk / "out" / "inbound.jsonl"
        outbound = disk / "out" / "outbound.jsonl"
        try:
            await sink.send([sample_event("inbound.json", uuid="u0", text="short")])
            before = inbound.read_bytes()
            fill(disk)
            batch = [sample_event("inbound.json", uuid="u1", text="short"),
                     sample_event(uuid="u2", text=PADDING)]
            with pytest.raises(SinkError):
                await sink.send(batch)
            assert inbound.read_bytes() == before
            assert not outbound.exists() or outbound.read_bytes() == b""
            free(disk)
            await sink.send(batch)
        finally:
            await sink.aclose()
        assert [r["uuid"] for r in records(inbound)] == ["u0", "u1"]
        assert [r["uuid"] for r in records(outbound)] == ["u2"]


@pytest.mark.parametrize("fsync", ["never", "interval", "always"])
async def test_the_daemon_retries_a_full_disk_and_writes_each_event_once(
        tmp_path: Path, fsync: str) -> None:
    """The daemon's file sink on a full disk: delivery is retried (``retries.archive``), and
    once there is room every event is in the file exactly once."""
    with tmpfs(tmp_path / "disk") as disk:
        emu = emulator()
        async with emu.running():
            settings = settings_for(emu, tmp_path, sinks=archive(disk / "events", fsync))
            async with running_daemon(settings) as daemon:
                assert daemon.pipeline is not None
                counters = daemon.pipeline.counters
                await emu.publish("message", {**BODY, "id": "m0"})
                await delivered(daemon, "archive", 1)
                fill(disk)
                for n in range(1, 6):
                    await emu.publish("message", {**BODY, "id": f"m{n}"})
                with anyio.fail_after(TIMEOUT):
                    await counters.wait_for("retries.archive", 3)
                assert counters["delivered.archive"] == 1
                free(disk)
                await delivered(daemon, "archive", 6)
        written = records(disk / "events" / "outbound.jsonl")
    assert sorted(r["body"]["id"] for r in written) == [f"m{n}" for n in range(6)]
    assert set(Counter(r["uuid"] for r in written).values()) == {1}
    assert {r["uuid"] for r in written} == {s.uuid for s in emu.sent}


@pytest.mark.parametrize("fsync", ["never", "always"])
async def test_a_deleted_sink_directory_is_created_again_and_written(tmp_path: Path,
                                                                     fsync: str) -> None:
    """`rm -rf` of the sink's directory while the daemon writes to it: without a SIGHUP,
    every event published afterwards lands once in the file created afresh, and the sink
    says so (``file_reopened`` warning and counter)."""
    directory = tmp_path / "events"
    emu = emulator()
    with capture_logs() as logs:
        async with emu.running():
            settings = settings_for(emu, tmp_path, sinks=archive(directory, fsync))
            async with running_daemon(settings) as daemon:
                assert daemon.pipeline is not None
                for n in range(3):
                    await emu.publish("message", {**BODY, "id": f"m{n}"})
                await delivered(daemon, "archive", 3)
                shutil.rmtree(directory)
                for n in range(3, 8):
                    await emu.publish("message", {**BODY, "id": f"m{n}"})
                await delivered(daemon, "archive", 8)
                assert daemon.pipeline.counters["file_reopened.archive"] == 1
    written = records(directory / "outbound.jsonl")
    assert [r["body"]["id"] for r in written] == [f"m{n}" for n in range(3, 8)]
    reopened = [entry for entry in logs if entry["event"] == "file_reopened"]
    assert [(e["log_level"], e["sink"], e["path"], e["reason"]) for e in reopened] == [
        ("warning", "archive", str(directory / "outbound.jsonl"), "deleted")]


async def test_a_file_replaced_without_a_sighup_is_followed(tmp_path: Path) -> None:
    """The file is renamed away and an empty one created in its place (logrotate, but no
    SIGHUP): later events go to the new file, each once; earlier ones stay in the old."""
    directory = tmp_path / "events"
    target = directory / "outbound.jsonl"
    emu = emulator()
    with capture_logs() as logs:
        async with emu.running():
            settings = settings_for(emu, tmp_path, sinks=archive(directory, "interval"))
            async with running_daemon(settings) as daemon:
                assert daemon.pipeline is not None
                for n in range(3):
                    await emu.publish("message", {**BODY, "id": f"m{n}"})
                await delivered(daemon, "archive", 3)
                target.rename(directory / "outbound.jsonl.1")
                target.touch()
                for n in range(3, 6):
                    await emu.publish("message", {**BODY, "id": f"m{n}"})
                await delivered(daemon, "archive", 6)
                assert daemon.pipeline.counters["file_reopened.archive"] == 1
    assert [r["body"]["id"] for r in records(target)] == ["m3", "m4", "m5"]
    assert [r["body"]["id"] for r in records(directory / "outbound.jsonl.1")] == \
        ["m0", "m1", "m2"]
    assert [e["reason"] for e in logs if e["event"] == "file_reopened"] == ["replaced"]


async def test_a_reopen_fsyncing_its_files_does_not_hold_up_a_send(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reload's reopen fsyncs the files it closes in a worker thread; a send on the event
    loop's thread meanwhile goes ahead instead of waiting for that fsync (the loop froze)."""
    entered, release, finished = threading.Event(), threading.Event(), threading.Event()
    real = os.fsync

    def held(fd: int) -> None:
        entered.set()
        release.wait(TIMEOUT)
        real(fd)
        finished.set()

    sink = file_sink(tmp_path / "out", path="all.jsonl", fsync="interval", fsync_interval=3600)
    await sink.send([sample_event(uuid="u0", text=PADDING)])
    monkeypatch.setattr(os, "fsync", held)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(sink.reopen)
            assert await anyio.to_thread.run_sync(partial(entered.wait, TIMEOUT))
            await sink.send([sample_event(uuid="u1", text=PADDING)])
            assert not finished.is_set()
            release.set()
    finally:
        release.set()
        await sink.aclose()
    assert [r["uuid"] for r in records(tmp_path / "out" / "all.jsonl")] == ["u0", "u1"]
