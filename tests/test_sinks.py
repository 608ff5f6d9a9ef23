"""stdout and file sinks, and the sink registry."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from a2pd import events
from a2pd.errors import SinkError
from a2pd.sinks import Sink, SinkContext, UnknownSinkType, sink_class, sink_types
from a2pd.sinks.file import FileOptions, FileSink
from a2pd.sinks.stdout import StdoutOptions, StdoutSink
from a2pd.sinks.templates import safe_component
from tests.harness import sample_event


def file_sink(tmp_path: Path, **options: object) -> FileSink:
    opts = FileOptions.model_validate({"directory": str(tmp_path / "out"), **options})
    return FileSink("files", opts, SinkContext(state_dir=tmp_path))


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


async def test_file_sink_writes_json_lines_by_template(tmp_path: Path) -> None:
    """Events land as JSON lines in the file their template names."""
    sink = file_sink(tmp_path, path="{kind}/{date}.jsonl")
    await sink.send([sample_event("outbound.json"), sample_event("inbound.json"),
                     sample_event("outbound_failed.json")])
    await sink.aclose()
    out = tmp_path / "out"
    assert [p.relative_to(out).as_posix() for p in all_files(out)] == [
        "inbound/2021-05-26.jsonl", "outbound/2021-05-26.jsonl", "outbound/2026-01-10.jsonl"]
    line = json.loads((out / "inbound/2021-05-26.jsonl").read_text())
    assert line["uuid"] == "5496200236759723935"
    assert line["kind"] == "inbound"


@pytest.mark.parametrize("hostile", [
    "../../../../etc/passwd", "/etc/passwd", "..", ".", "a\x00b", "x" * 5000, "a/../../b",
    "..\\..\\win", "~root",
])
async def test_file_sink_never_leaves_its_directory(tmp_path: Path, hostile: str) -> None:
    """Hostile field values in a template cannot write outside the base directory."""
    sink = file_sink(tmp_path, path="{batchId}/{status}.jsonl")
    event = sample_event("outbound_failed.json", batchId=hostile, messageStatus=hostile)
    await sink.send([event])
    await sink.aclose()
    out = (tmp_path / "out").resolve()
    written = [p.resolve() for p in tmp_path.rglob("*") if p.is_file()]
    assert written
    for path in written:
        assert path.is_relative_to(out), path
        assert all(len(part) <= 255 for part in path.parts)


def test_safe_component_rules() -> None:
    """Only [A-Za-z0-9+._-] survive; dot names and empties are replaced; length is capped."""
    assert safe_component("+16505550100") == "+16505550100"
    assert safe_component("a/b\\c") == "a_b_c"
    assert safe_component("..") == "__"
    assert safe_component("") == "_"
    assert len(safe_component("y" * 1000)) == 100


async def test_file_sink_refuses_symlinked_escape(tmp_path: Path) -> None:
    """A symlinked directory inside the base that points outside is refused, permanently."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "outbound").symlink_to(outside)
    sink = file_sink(tmp_path, path="{kind}/{date}.jsonl")
    with pytest.raises(SinkError) as info:
        await sink.send([sample_event("outbound.json")])
    assert info.value.permanent
    assert not any(outside.iterdir())
    await sink.aclose()


async def test_file_sink_reopen_follows_rotation(tmp_path: Path) -> None:
    """After reopen() a rotated-away file is recreated at the configured path."""
    sink = file_sink(tmp_path, path="all.jsonl")
    await sink.send([sample_event("outbound.json")])
    target = tmp_path / "out" / "all.jsonl"
    target.rename(tmp_path / "out" / "all.jsonl.1")
    await sink.reopen()
    await sink.send([sample_event("inbound.json")])
    await sink.aclose()
    assert len(target.read_text().splitlines()) == 1
    assert len((tmp_path / "out" / "all.jsonl.1").read_text().splitlines()) == 1


async def test_file_sink_fsync_always_calls_fsync(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """fsync="always" fsyncs after every batch; "never" does not fsync at all."""
    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    sink = file_sink(tmp_path, fsync="always")
    await sink.send([sample_event("outbound.json")])
    await sink.send([sample_event("outbound.json")])
    await sink.aclose()
    assert len(calls) == 2
    calls.clear()
    never = file_sink(tmp_path, fsync="never", directory=str(tmp_path / "n"))
    await never.send([sample_event("outbound.json")])
    await never.aclose()
    assert calls == []


async def test_file_sink_disk_error_is_transient(tmp_path: Path) -> None:
    """An unwritable directory is a retryable SinkError, not a crash."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "outbound").write_text("a file where a directory should be")
    sink = file_sink(tmp_path)
    with pytest.raises(SinkError) as info:
        await sink.send([sample_event("outbound.json")])
    assert not info.value.permanent
    await sink.aclose()


async def test_stdout_json_lines() -> None:
    """format=json writes one JSON record per event."""
    buf = io.StringIO()
    sink = StdoutSink("out", StdoutOptions(format="json"), SinkContext(Path(".")), stream=buf)
    await sink.send([sample_event("batch.json"), sample_event("optout.json")])
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert [line["kind"] for line in lines] == ["batch", "optout"]


async def test_stdout_text_is_one_line_per_event() -> None:
    """format=text gives one readable line per event with the key facts."""
    buf = io.StringIO()
    sink = StdoutSink("out", StdoutOptions(format="text"), SinkContext(Path(".")), stream=buf)
    await sink.send([sample_event("outbound_failed.json"), sample_event("optout.json"),
                     sample_event("batch.json")])
    lines = buf.getvalue().splitlines()
    assert len(lines) == 3
    assert "DeliveryFailed" in lines[0]
    assert "SMS-CAR-411" in lines[0]
    assert "opted out" in lines[1]
    assert "Completed" in lines[2]
    assert "processed=3/3" in lines[2]


def test_registry_has_builtins_and_refuses_unknown() -> None:
    """Built-in types resolve to Sink classes; unknown names raise with the known list."""
    assert {"stdout", "file"} <= set(sink_types())
    assert issubclass(sink_class("file"), Sink)
    with pytest.raises(UnknownSinkType, match="stdout"):
        sink_class("nope")


def test_registry_loads_entry_point_sinks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A third-party package's `a2pd.sinks` entry point is found by type name."""
    pkg = tmp_path / "site"
    (pkg / "thirdsink").mkdir(parents=True)
    (pkg / "thirdsink" / "__init__.py").write_text(
        "from a2pd.sinks import Sink\nclass Mine(Sink):\n    type_name = 'mine'\n")
    dist = pkg / "thirdsink-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdsink\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[a2pd.sinks]\nmine = thirdsink:Mine\n")
    monkeypatch.syspath_prepend(str(pkg))
    assert "mine" in sink_types()
    assert sink_class("mine").__name__ == "Mine"


async def test_file_sink_interval_fsync_runs_beside_the_writes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fsync="interval" fsyncs in a background thread (a batch never waits for it); the
    round is complete once the sink is closed, and a failed round fails the next write."""
    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    sink = file_sink(tmp_path, fsync="interval", fsync_interval=0.001, path="all.jsonl")
    sink._last_fsync -= 1  # the interval has passed
    await sink.send([sample_event("outbound.json")])
    await sink.aclose()
    assert len(calls) == 1
    assert len((tmp_path / "out" / "all.jsonl").read_text().splitlines()) == 1

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    failing = file_sink(tmp_path, fsync="interval", fsync_interval=0.001, path="all.jsonl")
    failing._last_fsync -= 1
    await failing.send([sample_event("outbound.json")])
    failing.wait_fsync()
    with pytest.raises(SinkError):
        await failing.send([sample_event("outbound.json")])
    await failing.aclose()


@pytest.mark.parametrize(("tail", "kept"), [
    (b'{"kind":"outbound","uuid":"torn', b""),  # part of one of our records: cut off
    (b'{"ki', b""),
    (b"an operator's note without a newline", b"an operator's note without a newline\n"),
])
async def test_file_sink_mends_a_tail_torn_by_a_crash(tmp_path: Path, tail: bytes,
                                                      kept: bytes) -> None:
    """A crash in the middle of a write can leave part of a record at the end of a file (the
    kernel writes a large batch page by page). The batch was never acknowledged, so it is
    written again: every line stays one whole record, whatever the fragment was."""
    whole = events.record_json(sample_event("inbound.json")) + b"\n"
    out = tmp_path / "out"
    out.mkdir()
    (out / "events.jsonl").write_bytes(whole + tail)
    sink = file_sink(tmp_path, path="events.jsonl")
    again = sample_event("outbound.json")
    await sink.send([again])
    await sink.aclose()
    assert (out / "events.jsonl").read_bytes() == whole + kept + events.record_json(again) + b"\n"
    assert sink.counters["file_torn_tails.files"] == 1
    # a file that ends with a whole line is left as it is
    sink = file_sink(tmp_path, path="events.jsonl")
    await sink.send([again])
    await sink.aclose()
    assert sink.counters["file_torn_tails.files"] == 0
    assert (out / "events.jsonl").read_bytes().count(b"\n") == whole.count(b"\n") + \
        kept.count(b"\n") + 2
