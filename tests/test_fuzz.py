"""The fuzz run: 100,000 hostile frames and valid events through the real receive loop.

The bundled emulator writes every frame over a loopback WebSocket to an in-process daemon
(tests/harness.py). Frames come from the seeded generator in tests/fuzz.py, each class
with its designed outcome. The run checks that the daemon stays on its first connection,
delivers every valid event exactly once, counts and dead-letters every invalid frame with
its raw bytes (cut to the journal's bound), logs each, and that memory stays flat.
Figures are printed (``pytest -s tests/test_fuzz.py``) and kept in docs/reliability.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest
import structlog

from a2pd import events, protocol
from a2pd import logging as a2pd_logging
from a2pd.observe import LogThrottle
from tests.fuzz import Generator, Item
from tests.harness import (
    TIMEOUT,
    delivered,
    emulator,
    read_dead_letters,
    read_records,
    running_daemon,
    settings_for,
)

#: hostile frames in the run (valid events come on top, one in every VALID_EVERY items)
HOSTILE_FRAMES = int(os.environ.get("A2PD_FUZZ_FRAMES", "100000"))
VALID_EVERY = 10
CHUNK = 5_000
SEED = 9
#: RSS growth allowed over the second half of the run, once the bounded caches (decoded
#: events, SQLite pages) have filled. Memory, not speed: generous, and load does not move it.
RSS_GROWTH_BOUND = 24 * 1024 * 1024


def rss_bytes() -> int:
    """This process's resident set size."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


class LogCounter:
    """A log stream that keeps nothing but, per event name, how many lines there were and
    how many more they said were held back (``suppressed``)."""

    def __init__(self) -> None:
        self.events: Counter[str] = Counter()
        self.suppressed: Counter[str] = Counter()

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.strip():
                entry = json.loads(line)
                self.events[entry["event"]] += 1
                self.suppressed[entry["event"]] += int(entry.get("suppressed", 0))
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


@contextmanager
def counted_logs() -> Iterator[LogCounter]:
    """JSON logs at warning level into a LogCounter; the previous set-up restored after."""
    previous = structlog.get_config()
    counter = LogCounter()
    a2pd_logging.configure("warning", "json", stream=counter)  # type: ignore[arg-type]
    try:
        yield counter
    finally:
        structlog.configure(**previous)


def designed_outcome(item: Item) -> str:
    """What the pure core says about a hostile frame (must match the class it was built as)."""
    message = protocol.decode(item.frame)  # type: ignore[arg-type]
    if isinstance(message, protocol.FrameError):
        return "frame"
    if isinstance(message, protocol.ServerNotification):
        decoded = events.decode_notification(message.body, message.raw)
        return "notification" if isinstance(decoded, events.EventError) else "valid"
    return "ignored"


@pytest.mark.slow
async def test_fuzz_run_keeps_the_daemon_up_and_accounts_for_every_frame(
        tmp_path: Path) -> None:
    """100k hostile frames interleaved with valid events over a real socket: one connection
    throughout, every valid event delivered once, every invalid frame counted, logged and
    dead-lettered with its (bounded) raw bytes, RSS flat over the second half."""
    generator = Generator(seed=SEED, valid_every=VALID_EVERY)
    outcomes: Counter[str] = Counter()
    labels: Counter[str] = Counter()
    letters_digest = hashlib.sha256()
    letter_sizes: Counter[str] = Counter()
    valid_uuids: set[str] = set()
    rss: list[int] = []
    emu = emulator()
    with counted_logs() as logs:
        async with emu.running():
            settings = settings_for(emu, tmp_path, log_level="warning")
            async with running_daemon(settings) as daemon:
                assert daemon.supervisor is not None
                assert daemon.pipeline is not None
                assert daemon.journal is not None
                max_raw = daemon.journal.options.max_raw_bytes
                session = daemon.supervisor.state.counters
                frames_before = session["frames"]
                rss_start = rss_bytes()
                started = time.perf_counter()
                written = 0
                chunks = 0
                while outcomes.total() - outcomes["valid"] < HOSTILE_FRAMES:
                    items = generator.items(CHUNK)
                    for item in items:
                        outcomes[item.outcome] += 1
                        labels[f"{item.outcome}.{item.label}"] += 1
                        if item.outcome == "valid":
                            assert item.kind is not None
                            assert item.body is not None
                            assert await emu.publish(item.kind, item.body) == 1
                            continue
                        await emu.publish_raw_frame(item.frame)  # type: ignore[arg-type]
                        if item.outcome in ("frame", "notification"):
                            raw = item.raw
                            source = item.outcome
                            letter_sizes[source] += 1
                            letters_digest.update(_letter_key(source, raw[:max_raw], len(raw)))
                    written += len(items)
                    with anyio.fail_after(TIMEOUT * 4):
                        await session.wait_for("frames", frames_before + written)
                    # the emulator's own bookkeeping of what it sent, kept out of the RSS
                    valid_uuids.update(record.uuid for record in emu.sent)
                    emu.sent.clear()
                    emu.gateway.generated.clear()
                    chunks += 1
                    rss.append(rss_bytes())
                await delivered(daemon, "archive", outcomes["valid"])
                with anyio.fail_after(TIMEOUT):
                    await daemon.pipeline.counters.wait_for(
                        "dead_letters", outcomes["frame"] + outcomes["notification"])
                elapsed = time.perf_counter() - started
                assert session["connections"] == 1
                assert session["frames_malformed"] == outcomes["frame"]
                assert session["notifications"] == outcomes["notification"] + outcomes["valid"]
                assert daemon.pipeline.counters["duplicates"] == 0
                assert daemon.pipeline.counters["committed"] == outcomes["valid"]
    letters = await read_dead_letters(settings)
    found_digest = hashlib.sha256()
    for letter in letters:
        assert len(letter.raw) <= max_raw
        found_digest.update(_letter_key(letter.sink, letter.raw, letter.size))
    assert Counter(letter.sink for letter in letters) == letter_sizes
    assert found_digest.hexdigest() == letters_digest.hexdigest()
    records = read_records(tmp_path / "events")
    uuids = [record["uuid"] for record in records]
    assert len(uuids) == len(set(uuids)) == outcomes["valid"]
    assert set(uuids) == valid_uuids
    # every bad frame is counted and dead-lettered; the log keeps a bounded sample that
    # says how much it left out (what the last window held back is said by its next line)
    throttle = LogThrottle()
    most_lines = throttle.burst * (int(elapsed // throttle.window) + 2)
    for name, outcome in (("frame_malformed", "frame"),
                          ("notification_undecodable", "notification"),
                          ("gateway_error", "ignored")):
        assert 1 <= logs.events[name] <= most_lines
        assert logs.events[name] + logs.suppressed[name] <= outcomes[outcome]
    half = rss[len(rss) // 2]
    growth = rss[-1] - half
    mib = 2**20
    print(f"\nfuzz: {outcomes.total()} frames in {elapsed:.1f} s "
          f"({outcomes.total() / elapsed:,.0f}/s): {dict(outcomes)}")
    print(f"fuzz: delivered {len(uuids)} valid once each; dead letters {dict(letter_sizes)}, "
          f"{sum(1 for d in letters if d.truncated)} cut to {max_raw} bytes")
    print(f"fuzz: RSS before {rss_start / mib:.1f} MiB, after the first chunk "
          f"{rss[0] / mib:.1f}, at half-way {half / mib:.1f}, at the end {rss[-1] / mib:.1f} "
          f"(second half {growth / mib:+.1f} MiB), peak {max(rss) / mib:.1f} MiB")
    print(f"fuzz: log lines {dict(logs.events)}, lines held back {dict(logs.suppressed)}")
    print(f"fuzz: classes {dict(sorted(labels.items()))}")
    print("fuzz: RSS per chunk (MiB) " + " ".join(f"{r / mib:.0f}" for r in rss))
    assert growth < RSS_GROWTH_BOUND


def _letter_key(source: str, raw: bytes, size: int) -> bytes:
    return source.encode() + b"\0" + str(size).encode() + b"\0" + \
        hashlib.blake2b(raw, digest_size=16).digest()


def test_every_generated_frame_has_its_designed_outcome() -> None:
    """The generator's classes agree with the pure core on 20k frames (so the end-to-end run
    can trust each frame's class without decoding it twice), and every class occurs."""
    generator = Generator(seed=SEED, valid_every=VALID_EVERY)
    seen: Counter[str] = Counter()
    for item in generator.items(20_000):
        seen[item.outcome] += 1
        if item.outcome != "valid":
            assert designed_outcome(item) == item.outcome, (item.label, item.frame)
    assert set(seen) == {"frame", "notification", "ignored", "valid"}
