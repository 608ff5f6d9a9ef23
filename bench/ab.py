"""Two a2pd builds side by side: the same phases as bench/side_by_side.py, paired by round.

    python bench/ab.py NAME=PYTHON NAME=PYTHON [--rounds 6] [--events 50000] [--recovery]

Each NAME is run as ``PYTHON -m a2pd run`` with side_by_side's a2pd config (journal on, file
sink fsync = "interval"); install each build in a venv of its own (``pip install <tree>``)
and pass that venv's python. Rounds alternate the order (A B, B A, ...), so both builds see
the same machine; the recovery phase (16 s of waiting) is skipped unless ``--recovery``.
Prints each round, then per build the median events/s, CPU s per 10k events and p99 at
1k and 5k events/s, and the second build's ratios to the first. For checking that a change
keeps a2pd's figures (a refactor: within 5 %), not for the published comparison.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import side_by_side as sbs

METRICS = (("events/s", lambda d: d["events_per_s"]),
           ("CPU s / 10k", lambda d: d["cpu_per_10k"]),
           ("p99 ms @1k/s", lambda d: d["latency_1000"]["p99"]),
           ("p99 ms @5k/s", lambda d: d["latency_5000"]["p99"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("builds", nargs=2, metavar="NAME=PYTHON")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--recovery", action="store_true")
    args = parser.parse_args()
    pythons = dict(build.split("=", 1) for build in args.builds)
    original = sbs.consumer_command

    def consumer_command(name: str, server: str, jwt: str, work: Path
                         ) -> tuple[list[str], Path]:
        command, out = original("a2pd", server, jwt, work)
        return [pythons[name], *command[1:]], out

    sbs.consumer_command = consumer_command
    if not args.recovery:
        sbs.recovery = lambda source, tail: 0.0
        sbs.RECOVERY_AFTER_SUBSCRIBE = 0
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in pythons}
    work = Path(tempfile.mkdtemp(prefix="a2pd-ab-"))
    for number in range(args.rounds):
        order = list(pythons) if number % 2 == 0 else list(reversed(pythons))
        for name in order:
            doc = sbs.measure(name, args.events, work / f"{number}-{name}")
            runs[name].append(doc)
            print(name, number + 1, *(f"{label} {value(doc):.2f}" for label, value in METRICS),
                  flush=True)
    first, second = list(pythons)
    for label, value in METRICS:
        medians = {name: statistics.median(value(doc) for doc in runs[name]) for name in runs}
        print(f"{label:14} {first} {medians[first]:10.2f}  {second} {medians[second]:10.2f}"
              f"  x{medians[second] / medians[first]:.3f}")


if __name__ == "__main__":
    main()
