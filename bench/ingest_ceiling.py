"""The receiving side alone: how fast a2pd journals a burst while its delivery is stalled.

    python bench/ingest_ceiling.py [--python PYTHON] [--events 50000] [--rounds 3]

Runs side_by_side's a2pd (journal on) against the emulator (bench/source.py) in two set-ups
per round, taking turns: ``file``, as side_by_side runs it (a file sink, fsync =
"interval"), and ``stalled``, whose only sink is an HTTP forward to a socket that accepts
connections and never answers (the reader's first request waits out its 60 s timeout, so
nothing is delivered or compacted meanwhile). Both are timed the same way: from the
burst's first send until the daemon's ``a2pd_events_committed_total`` (its /metrics,
polled every 50 ms) counts the whole burst. ``stalled`` is the receiving side with the
event loop's core to itself: the most that moving delivery to a second process (issue
#17) can give it.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import side_by_side as sbs

STALLED_SINK = """
[sinks.hole]
type = "http"
url = "http://127.0.0.1:{port}/events"
timeout = "60s"

[default_route]
sinks = ["hole"]
"""


class BlackHole(threading.Thread):
    """Accepts connections and never reads from or answers them."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.listener.close()
        for conn in self.held:
            conn.close()


def committed(log: Path) -> float:
    """The daemon's committed-events counter (the ops port is in its log)."""
    line = next((line for line in log.read_bytes().splitlines() if b"ops_listening" in line),
                b"")
    match = re.search(rb'"port": ?(\d+)', line)
    if match is None:
        return 0.0
    with urllib.request.urlopen(f"http://127.0.0.1:{int(match[1])}/metrics", timeout=5) as r:
        text = r.read().decode()
    found = re.search(r"^a2pd_events_committed_total (\S+)$", text, re.MULTILINE)
    return float(found[1]) if found else 0.0


def wait_committed(log: Path, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while committed(log) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"fewer than {count} events committed after {timeout} s")
        time.sleep(0.05)


def one_round(python: str, setup: str, events: int) -> float:
    """Events/s committed for one burst in ``setup`` (``file`` or ``stalled``)."""
    work = Path(tempfile.mkdtemp(prefix="a2pd-ingest-"))
    source = sbs.Source()
    hole = BlackHole()
    hole.start()
    try:
        from a2pd.emulator import DEFAULT_JWT
        command, _ = sbs.consumer_command("a2pd", source.hello["server"], DEFAULT_JWT, work)
        command[0] = python
        if setup == "stalled":
            config = work / "a2pd.toml"
            text = config.read_text()
            config.write_text(text[:text.index("[sinks.archive]")]
                              + STALLED_SINK.format(port=hole.port))
        log = work / "stderr.log"
        with open(log, "wb") as out, sbs.running(command, out) as process:
            source.call("subscribed")
            source.call("send", count=sbs.WARMUP, rate=None)
            wait_committed(log, sbs.WARMUP, 60)
            report = source.call("send", count=events, rate=None)
            wait_committed(log, sbs.WARMUP + events, 600)
            rate = events / ((time.monotonic_ns() - report["first_ns"]) / 1e9)
            # a first stop request; running()'s second one skips the drain, which would
            # wait for the stalled sink
            process.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            return rate
    finally:
        hole.close()
        source.close()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"file": [], "stalled": []}
    for number in range(args.rounds):
        order = ["file", "stalled"] if number % 2 == 0 else ["stalled", "file"]
        for setup in order:
            rate = one_round(args.python, setup, args.events)
            rates[setup].append(rate)
            print(f"round {number + 1} {setup:8} {rate:10,.0f} events/s committed", flush=True)
    medians = {setup: statistics.median(values) for setup, values in rates.items()}
    for setup, median in medians.items():
        print(f"{setup:8} median {median:10,.0f} events/s committed")
    print(f"stalled / file: {medians['stalled'] / medians['file']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
