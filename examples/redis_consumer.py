"""A small consumer of a2pd's Redis streams: one member of a consumer group.

    python examples/redis_consumer.py --url redis://127.0.0.1:6379/0 \\
        --group billing --consumer "$(hostname)-1" a2p:outbound a2p:inbound

Start as many as you need, on as many machines, with the same --group and distinct
--consumer names: Redis hands each entry to exactly one member of the group (XREADGROUP).
An entry is acknowledged (XACK) only after ``handle`` returned, so the entries of a member
that dies stay pending; every member regularly takes over entries that have been pending
longer than --claim-idle (XAUTOCLAIM) and handles them. Delivery to ``handle`` is therefore
at least once: make it idempotent (``uuid`` identifies the notification).

Each handled entry is printed as one JSON line ({"consumer", "stream", "id", "uuid",
"kind", "status"}); replace ``handle`` with your own processing. SIGTERM or SIGINT stops
the consumer after the entries in hand are handled and acknowledged. The URL may also come
from $REDIS_URL; it is never printed. Needs only the ``redis`` package.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any

import redis

#: how long XREADGROUP waits for new entries before looking at the stop flag and pending
#: entries again, in milliseconds
BLOCK_MS = 1000


def handle(consumer: str, stream: str, entry_id: str, fields: dict[str, str]) -> None:
    """Process one entry. Here: print it. Must be idempotent (at-least-once delivery)."""
    record = json.loads(fields["json"])
    body = record.get("body") or {}
    status = (body.get("messageStatus") or body.get("status")) if isinstance(body, dict) else None
    print(json.dumps({"consumer": consumer, "stream": stream, "id": entry_id,
                      "uuid": fields["uuid"], "kind": fields["kind"], "status": status}),
          flush=True)


class Consumer:
    """One consumer-group member reading ``streams``."""

    def __init__(self, client: redis.Redis, group: str, name: str, streams: list[str], *,
                 count: int, block_ms: int, claim_idle_ms: int, start: str) -> None:
        self.client = client
        self.group = group
        self.name = name
        self.streams = streams
        self.count = count
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.start = start
        self.stopping = False

    def create_groups(self) -> None:
        """Create the group on every stream (and the stream itself) unless it exists."""
        for stream in self.streams:
            try:
                self.client.xgroup_create(stream, self.group, id=self.start, mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def run(self) -> None:
        # first what this member had read but not acknowledged before it stopped (id 0),
        # then entries abandoned by others, then new entries
        while not self.stopping and self._read({stream: "0" for stream in self.streams},
                                               block=None):
            pass
        while not self.stopping:
            self._claim_abandoned()
            if self.stopping:
                break
            self._read({stream: ">" for stream in self.streams}, block=self.block_ms)

    def _read(self, ids: dict[str, str], block: int | None) -> int:
        """Read and handle one round; the number of entries it brought."""
        replies: Any = self.client.xreadgroup(self.group, self.name, ids,  # type: ignore[arg-type]
                                              count=self.count, block=block)
        seen = 0
        for stream, entries in replies or []:
            self._handle_all(stream, entries)
            seen += len(entries)
        return seen

    def _claim_abandoned(self) -> None:
        for stream in self.streams:
            start = "0-0"
            while True:
                reply: Any = self.client.xautoclaim(stream, self.group, self.name,
                                                    min_idle_time=self.claim_idle_ms,
                                                    start_id=start, count=self.count)
                start, entries = reply[0], reply[1]
                self._handle_all(stream, entries)
                if start in ("0-0", b"0-0") or not entries:
                    break

    def _handle_all(self, stream: str, entries: list[Any]) -> None:
        for entry_id, fields in entries:
            if fields is None:  # trimmed away while pending: nothing to handle
                self.client.xack(stream, self.group, entry_id)
                continue
            handle(self.name, stream, entry_id, fields)
            self.client.xack(stream, self.group, entry_id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("streams", nargs="+", help="stream names, e.g. a2p:outbound")
    parser.add_argument("--url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--group", default="a2p-consumers")
    parser.add_argument("--consumer", default=f"{os.uname().nodename}-{os.getpid()}")
    parser.add_argument("--count", type=int, default=10, help="entries per read")
    parser.add_argument("--block", type=float, default=BLOCK_MS / 1000,
                        help="seconds a read waits for new entries")
    parser.add_argument("--claim-idle", type=float, default=60.0,
                        help="take over entries pending longer than this many seconds")
    parser.add_argument("--start", default="0",
                        help="where a new group starts: 0 (the whole stream) or $ (new only)")
    args = parser.parse_args(argv)

    client = redis.Redis.from_url(args.url, decode_responses=True)
    consumer = Consumer(client, args.group, args.consumer, args.streams, count=args.count,
                        block_ms=max(1, int(args.block * 1000)),
                        claim_idle_ms=int(args.claim_idle * 1000), start=args.start)

    def stop(_signum: int, _frame: object) -> None:
        consumer.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        consumer.create_groups()
        print(f"consumer {args.consumer} ready in group {args.group}", file=sys.stderr,
              flush=True)
        consumer.run()
    except redis.RedisError as exc:
        print(f"redis error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
