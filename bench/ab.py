"""Two a2pd builds side by side: the same phases as bench/side_by_side.py, paired by round.

    python bench/ab.py NAME=PYTHON NAME=PYTHON [--rounds 6] [--events 50000] [--recovery] [--pin]
                       [--sink-fsync interval|always]

Each NAME is run as ``PYTHON -m a2pd run`` with side_by_side's a2pd config (journal on, file
sink fsync = "interval", or "always": side_by_side's a2pd-always); install each build in a
venv of its own (``pip install <tree>``) and pass that venv's python. Rounds alternate the
order (A B, B A, ...), so both builds see the same machine; the recovery phase (16 s of
waiting) is skipped unless ``--recovery``.
Prints each round, then per build the median events/s, CPU s per 10k events and p99 at
1k and 5k events/s, the second build's ratios to the first and in how many rounds the
second did worse; then the latency percentiles of every round's events pooled (one round's
p99 is set by its one or two longest stalls, so the pooled figures are the steadier ones).
For checking that a change keeps a2pd's figures (a refactor: within 5 %), not for the
published comparison.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

import side_by_side as sbs

METRICS = (("events/s", lambda d: d["events_per_s"]),
           ("CPU s / 10k", lambda d: d["cpu_per_10k"]),
           ("p99 ms @1k/s", lambda d: d["latency_1000"]["p99"]),
           ("p99 ms @5k/s", lambda d: d["latency_5000"]["p99"]),
           ("disk KB / event", lambda d: d["disk_kb_per_event"]),
           ("disk MB/s @1k/s", lambda d: d["latency_1000"]["disk_mb_per_s"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("builds", nargs=2, metavar="NAME=PYTHON")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--recovery", action="store_true")
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="length of each paced latency phase (side_by_side: 3)")
    parser.add_argument("--pin", action="store_true",
                        help="a2pd on the last CPU, the source and this script on the others "
                             "(less noise between rounds on a machine with few cores)")
    parser.add_argument("--sink-fsync", choices=("interval", "always"), default="interval",
                        help="the file sink's fsync policy (side_by_side's a2pd or a2pd-always)")
    args = parser.parse_args()
    consumer = "a2pd-always" if args.sink_fsync == "always" else "a2pd"
    pin: list[str] = []
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            parser.error("--pin needs two CPUs")
        os.sched_setaffinity(0, cpus[:-1])  # the source process inherits it
        pin = ["taskset", "-c", str(cpus[-1])]
    pythons = dict(build.split("=", 1) for build in args.builds)
    original = sbs.consumer_command

    def consumer_command(name: str, server: str, jwt: str, work: Path
                         ) -> tuple[list[str], Path]:
        command, out = original(consumer, server, jwt, work)
        return [*pin, pythons[name], *command[1:]], out

    sbs.consumer_command = consumer_command
    pooled: dict[tuple[str, int], list[float]] = {}
    current: list[str] = [""]

    def latency(source: sbs.Source, tail: sbs.Tail, rate: int, seconds: float
                ) -> dict[str, float]:
        before = len(tail.seen)
        figures = original_latency(source, tail, rate, args.seconds)
        pooled.setdefault((current[0], rate), []).extend(
            (tail.seen[i] - tail.stamps[i]) / 1e6 for i in range(before, len(tail.seen)))
        return figures

    original_latency = sbs.latency
    sbs.latency = latency
    if not args.recovery:
        sbs.recovery = lambda source, tail: 0.0
        sbs.RECOVERY_AFTER_SUBSCRIBE = 0
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in pythons}
    work = Path(tempfile.mkdtemp(prefix="a2pd-ab-"))
    try:
        for number in range(args.rounds):
            order = list(pythons) if number % 2 == 0 else list(reversed(pythons))
            for name in order:
                current[0] = name
                doc = sbs.measure(name, args.events, work / f"{number}-{name}")
                runs[name].append(doc)
                print(name, number + 1,
                      *(f"{label} {value(doc):.2f}" for label, value in METRICS), flush=True)
    finally:
        # each round's journals and outputs: ~1 GB a run, left in /tmp until this
        shutil.rmtree(work, ignore_errors=True)
    first, second = list(pythons)
    for label, value in METRICS:
        medians = {name: statistics.median(value(doc) for doc in runs[name]) for name in runs}
        # worse: fewer events/s, more of everything else
        worse = sum((value(b) < value(a)) if label == "events/s" else (value(b) > value(a))
                    for a, b in zip(runs[first], runs[second], strict=True))
        print(f"{label:14} {first} {medians[first]:10.2f}  {second} {medians[second]:10.2f}"
              f"  x{medians[second] / medians[first]:.3f}  {second} worse in {worse}"
              f"/{args.rounds}")
    for rate in (1000, 5000):
        for q in (0.50, 0.90, 0.99, 0.999):
            figures = {name: _at(pooled.get((name, rate), []), q) for name in pythons}
            print(f"pooled p{q * 100:g} ms @{rate // 1000}k/s".ljust(22),
                  f"{first} {figures[first]:8.2f}  {second} {figures[second]:8.2f}"
                  f"  x{figures[second] / figures[first]:.3f}")


def _at(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


if __name__ == "__main__":
    main()
