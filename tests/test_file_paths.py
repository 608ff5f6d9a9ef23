"""Path safety of the file sink under hostile event fields (hypothesis).

Templates may use event fields that a sender controls (batchId, status, subscriptionId,
ownerId, and from/to within E.164): whatever they hold, a path never leaves the base
directory, never has a '.'/'..' segment, NUL or a name over 255 bytes, and writing works.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from a2pd import events
from a2pd.errors import SinkError
from a2pd.sinks import SinkContext
from a2pd.sinks.file import FileOptions, FileSink
from a2pd.sinks.templates import fit_name, safe_component
from tests.harness import sample_event

TEMPLATES = [
    "{kind}/{batchId}/{status}.jsonl",
    "{batchId}{status}{subscriptionId}{ownerId}{to}{from}.jsonl",
    "{subscriptionId}-{ownerId}/{date}/{batchId}-{status}-{batchId}-{status}.jsonl",
    "a/{ownerId}/{kind}.jsonl",
    "{status}",
]
hostile = st.text(st.characters(codec="utf-8"), min_size=1, max_size=400) | st.sampled_from(
    ["..", ".", "../../etc/passwd", "/etc/passwd", "a\x00b", "~root", "..\\..\\win",
     "x" * 5000, "/", "//", "%2e%2e%2f", "\u202e..", "\uff0e\uff0e", "CON", "-rf"])


def hostile_event(batch_id: str, status: str, subscription: str, owner: str) -> events.Event:
    return sample_event("outbound_failed.json",
                        envelope={"subscriptionId": subscription, "ownerId": owner},
                        batchId=batch_id, messageStatus=status)


def sink_at(base: Path, template: str) -> FileSink:
    options = FileOptions.model_validate({"directory": str(base), "path": template,
                                          "fsync": "never"})
    return FileSink("files", options, SinkContext(state_dir=base))


def assert_safe(sink: FileSink, path: Path) -> None:
    assert path.is_relative_to(sink.base)
    relative = path.relative_to(sink.base)
    assert relative.parts
    for part in relative.parts:
        assert part not in (".", "..")
        assert "\x00" not in part
        assert len(part.encode("utf-8")) <= 255


@given(st.sampled_from(TEMPLATES), hostile, hostile, hostile, hostile)
def test_hostile_fields_never_leave_the_base_directory(template: str, batch_id: str,
                                                      status: str, subscription: str,
                                                      owner: str) -> None:
    """Every path a template gives for hostile field values lies inside the base directory
    with safe, short-enough names."""
    sink = sink_at(Path("/srv/a2pd/events"), template)
    event = hostile_event(batch_id, status, subscription, owner)
    assert_safe(sink, sink.path_for(event))


@settings(max_examples=40)
@given(st.sampled_from(TEMPLATES), hostile, hostile, hostile, hostile)
def test_hostile_fields_are_written_inside_the_base_directory(template: str, batch_id: str,
                                                              status: str, subscription: str,
                                                              owner: str) -> None:
    """Writing such an event succeeds (no ENAMETOOLONG retried for ever) and creates files
    only under the base directory."""
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        sink = sink_at(root / "out", template)
        event = hostile_event(batch_id, status, subscription, owner)

        async def write() -> None:
            try:
                await sink.send([event])
            finally:
                await sink.aclose()

        anyio.run(write)
        written = [p for p in root.rglob("*") if p.is_file()]
        assert len(written) == 1
        assert_safe(sink, written[0])


def test_long_names_are_cut_with_a_hash_and_keep_their_extension() -> None:
    """A name over 255 bytes keeps its start and extension and gains a hash of the whole, so
    two long names that share a start stay apart (regression: several 100-character values
    in one name made ENAMETOOLONG, retried for ever)."""
    first = fit_name("a" * 300 + "1.jsonl")
    second = fit_name("a" * 300 + "2.jsonl")
    assert first != second
    assert first.endswith(".jsonl")
    assert len(first.encode()) <= 255
    assert fit_name("short.jsonl") == "short.jsonl"
    assert len(fit_name("é" * 200).encode()) <= 255


def test_a_template_that_would_escape_is_refused_per_event(tmp_path: Path) -> None:
    """If a path ever fell outside the base, the event would be refused for good (a
    permanent SinkError: dead-lettered), never written elsewhere."""
    sink = sink_at(tmp_path / "out", "{status}.jsonl")
    sink.options = sink.options.model_copy(update={"path": "../{status}.jsonl"})
    event = hostile_event("b", "s", "sub", "owner")
    with pytest.raises(SinkError) as info:
        sink.path_for(event)
    assert info.value.permanent


@given(hostile)
def test_safe_component_output_is_one_plain_name(value: str) -> None:
    """A substituted value becomes one short name of [A-Za-z0-9+._-], never '.' or '..'."""
    part = safe_component(value)
    assert part not in ("", ".", "..")
    assert "/" not in part
    assert len(part) <= 100
    assert all(ch.isascii() and (ch.isalnum() or ch in "+._-") for ch in part)
