"""Where the tail at 1k/s comes from: the slow events of a paced phase, by time.

    python bench/probe_tail.py [--python PYTHON] [--burst 50000] [--rate 1000] [--seconds 3]

Runs the side-by-side's a2pd (``PYTHON -m a2pd run``) against the emulator: a warm-up, a
paced phase with no burst before it, a max-rate burst, then the same paced phase again
(as side_by_side.py's latency phase runs). For each paced phase prints the percentiles,
every event over 10 ms with when it was sent (ms from the phase's start), and the size of
the journal's WAL file at its end.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import side_by_side as sbs


def histogram(log: Path) -> dict[str, float]:
    """The daemon's own delivery latency histogram (receive to delivered), by bucket."""
    line = next((line for line in log.read_bytes().splitlines() if b"ops_listening" in line),
                b"")
    match = re.search(rb'"port": ?(\d+)', line)
    if match is None:
        return {}
    with urllib.request.urlopen(f"http://127.0.0.1:{int(match[1])}/metrics", timeout=5) as r:
        text = r.read().decode()
    found = {}
    for row in text.splitlines():
        if row.startswith("a2pd_delivery_latency_seconds_bucket"):
            found[row.split('le="')[1].split('"')[0]] = float(row.rsplit(" ", 1)[1])
    return found


def phase(source: sbs.Source, tail: sbs.Tail, rate: int, seconds: float, title: str,
          log: Path) -> None:
    first = histogram(log)
    print(f"{title}: starts at monotonic {time.monotonic():.3f}")
    before = len(tail.seen)
    count = int(rate * seconds)
    source.call("send", count=count, rate=rate)
    tail.wait_count(before + count, 60)
    start = tail.stamps[before]
    ms = [(tail.seen[i] - tail.stamps[i]) / 1e6 for i in range(before, len(tail.seen))]
    print(title, {k: round(v, 2) for k, v in sbs.percentiles(ms).items()})
    after = histogram(log)
    print("  a2pd's own receive-to-delivered histogram:",
          {le: int(after[le] - first.get(le, 0)) for le in list(after)[:5]})
    slow = [((tail.stamps[i] - start) / 1e6, (tail.seen[i] - tail.stamps[i]) / 1e6)
            for i in range(before, len(tail.seen))
            if tail.seen[i] - tail.stamps[i] > 10_000_000]
    runs: list[list[tuple[float, float]]] = []
    for at, late in slow:
        if runs and at - runs[-1][-1][0] < 20:
            runs[-1].append((at, late))
        else:
            runs.append([(at, late)])
    for run in runs:
        print(f"  from {run[0][0]:8.1f} ms: {len(run):4d} events over 10 ms, "
              f"worst {max(late for _, late in run):6.1f} ms")
    wal = log.parent / "state" / "journal.db-wal"
    print(f"  WAL file: {wal.stat().st_size / 1e6:.1f} MB" if wal.exists() else "  no WAL")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--burst", type=int, default=50_000)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=3.0, help="of each paced phase")
    args = parser.parse_args()
    from a2pd.emulator import DEFAULT_JWT
    with tempfile.TemporaryDirectory(prefix="a2pd-probe-") as tmp:
        work = Path(tmp) / "a2pd"
        work.mkdir()
        source = sbs.Source()
        try:
            command, out = sbs.consumer_command("a2pd", source.hello["server"], DEFAULT_JWT,
                                                work)
            command[0] = args.python
            with open(work / "stderr.log", "wb") as log, sbs.running(command, log) as proc:
                source.call("subscribed")
                tail = sbs.Tail(out, proc.pid)
                tail.start()
                try:
                    source.call("send", count=sbs.WARMUP, rate=None)
                    tail.wait_count(sbs.WARMUP, 60)
                    phase(source, tail, args.rate, args.seconds, "paced, no burst before",
                          work / "stderr.log")
                    before = len(tail.seen)
                    source.call("send", count=args.burst, rate=None)
                    tail.wait_count(before + args.burst, 120)
                    phase(source, tail, args.rate, args.seconds, "paced, right after the burst",
                          work / "stderr.log")
                    phase(source, tail, args.rate, args.seconds, "paced, once more",
                          work / "stderr.log")
                finally:
                    tail.stop()
        finally:
            source.close()


if __name__ == "__main__":
    main()
