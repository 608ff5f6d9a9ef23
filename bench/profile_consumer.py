"""Profile one consumer of the side-by-side benchmark during a max-rate burst (py-spy).

    python bench/profile_consumer.py [--consumer a2pd] [--events 20000] [--top 25]

Starts the emulator (bench/source.py) and the consumer as bench/side_by_side.py does,
warms up, attaches `py-spy record` (every thread, 250 Hz) for one burst, and prints the
events/s reached and the functions with the most samples, by own time and inclusive. The
raw collapsed stacks go to bench/results/profile-<consumer>.txt. py-spy comes with the
`bench` extra; attaching needs ptrace rights (root, or kernel.yama.ptrace_scope=0).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from side_by_side import CONSUMERS, RESULTS, WARMUP, Source, Tail, consumer_command

from a2pd.emulator import DEFAULT_JWT


def top(collapsed: Path, count: int) -> str:
    """The ``count`` functions with the most samples, own and inclusive."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        frames, n = stack.split(";"), int(samples)
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    lines = [f"{total} samples", "own time:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in own.most_common(count)]
    lines.append("inclusive:")
    lines += [f"  {n / total:6.1%}  {name}" for name, n in inclusive.most_common(count)
              if not name.startswith(("<module>", "_run_code", "_run_module_as_main"))]
    return "\n".join(lines)


def a2pd_counters(log: Path) -> str:
    """The daemon's counters from its ops endpoint (the port is in its log)."""
    line = next((line for line in log.read_bytes().splitlines() if b"ops_listening" in line), b"")
    match = re.search(rb'"port": ?(\d+)', line)
    if match is None:
        return "(no ops_listening line in the log)"
    with urllib.request.urlopen(f"http://127.0.0.1:{int(match[1])}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return "\n".join(line for line in text.splitlines()
                     if line.startswith("a2pd_") and not line.endswith((" 0", " 0.0"))
                     and not line.startswith(("a2pd_http", "a2pd_build")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--consumer", choices=CONSUMERS, default="a2pd")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    spy_binary = shutil.which("py-spy")
    if spy_binary is None:
        raise SystemExit("py-spy is not installed (pip install -e '.[bench]')")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"profile-{args.consumer}.txt"
    work = Path(tempfile.mkdtemp(prefix="a2pd-profile-"))
    source = Source()
    try:
        command, lines = consumer_command(args.consumer, source.hello["server"], DEFAULT_JWT,
                                          work)
        with open(work / "stderr.log", "wb") as log:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=log)
        try:
            source.call("subscribed")
            tail = Tail(lines, process.pid)
            tail.start()
            source.call("send", count=WARMUP, rate=None)
            tail.wait_count(WARMUP, 60)
            spy = subprocess.Popen([spy_binary, "record", "--pid", str(process.pid), "-r", "250",
                                    "-f", "raw", "-o", str(out), "--nonblocking", "--threads"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)  # py-spy attaches
            report = source.call("send", count=args.events, rate=None)
            tail.wait_count(WARMUP + args.events, 600)
            rate = (len(tail.seen) - WARMUP) / ((tail.seen[-1] - report["first_ns"]) / 1e9)
            spy.send_signal(signal.SIGINT)
            spy.wait()
            tail.stop()
            counters = a2pd_counters(work / "stderr.log") if args.consumer.startswith("a2pd") \
                else ""
        finally:
            process.terminate()
            process.wait()
    finally:
        source.close()
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.consumer}: {rate:,.0f} events/s over {args.events:,} events")
    if counters:
        print(counters)
    print(top(out, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
