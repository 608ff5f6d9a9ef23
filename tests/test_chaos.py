"""Chaos: thousands of events while the platform misbehaves and the daemon is restarted.

A seeded schedule injects, between bursts of traffic, every recoverable fault the emulator
has — abrupt drops, close frames, WSG-902/903, refused upgrades, a stalled peer, token and
wstoken errors with Retry-After, access tokens expiring mid-connection — plus three
restarts of the daemon process (two SIGTERM, one SIGKILL). Bursts published while the
daemon is away stay within the gateway's replay buffer, so recovery can bring them all back.
Afterwards, against the emulator's log of every notification it generated: every event is
in the file sink exactly once by uuid, and none is invented.

Faults that end the session for good (a Failed recovery, a refused refresh token) lose
events that only the REST backfill can rebuild; they are tested on their own
(test_faults.py, test_daemon.py).
"""

from __future__ import annotations

import json
import random
import signal
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process

from daemon.emulator import Emulator
from daemon.observe import Counters
from tests.harness import TIMEOUT, emulator, read_records, seed, settings_text
from tests.test_cli import started, stderr_lines

SEED = 20261123
ROUNDS = 60
RESTARTS = {12: "term", 30: "kill", 47: "term"}
FAULTS = ["abrupt", "close", "error902", "error903", "refuse", "stall", "token", "wstoken",
          "expire", "none"]
BODIES = [("message", "outbound.json"), ("message", "outbound.json"),
          ("message", "outbound_failed.json"), ("message", "inbound.json"),
          ("batch", "batch.json"), ("optout", "optout.json"), ("optout", "optin.json")]


class Pump:
    """Reads a daemon's stderr (so its pipe never fills) and counts what it logs."""

    def __init__(self, counters: Counters) -> None:
        self.counters = counters
        self.tail: list[str] = []

    async def run(self, process: Process) -> None:
        stream = stderr_lines(process)
        while True:
            try:
                line = (await stream.receive_until(b"\n", 1 << 20)).decode()
            except (anyio.EndOfStream, anyio.IncompleteRead, anyio.ClosedResourceError):
                return
            self.tail = [*self.tail[-60:], line]
            if not line.startswith("{"):
                continue
            doc = json.loads(line)
            event = doc.get("event", "")
            self.counters.inc(f"log.{event}")
            if event == "delivered":
                self.counters.inc("delivered", int(doc["events"]))


@asynccontextmanager
async def daemon_process(config: Path, jwt: str, counters: Counters) -> AsyncIterator[Process]:
    async with started(config, jwt) as process, anyio.create_task_group() as tg:
        pump = Pump(counters)
        tg.start_soon(pump.run, process)
        try:
            yield process
        except BaseException:
            print("\n".join(pump.tail))
            raise


async def inject(emu: Emulator, fault: str) -> None:
    """Apply a fault that ends the current connection (or the next token call)."""
    if fault in ("abrupt", "close", "error902", "error903"):
        await emu.drop_connections(mode=fault)
    elif fault == "refuse":
        emu.refuse_connections()
        await emu.drop_connections(mode="abrupt")
    elif fault == "stall":
        emu.stall_connections()
    elif fault == "token":
        emu.expire_access_tokens()
        emu.fail_http("token", 503, times=2)
        await emu.drop_connections(mode="abrupt")
    elif fault == "wstoken":
        emu.fail_http("wstoken", 429, retry_after=1)
        await emu.drop_connections(mode="abrupt")
    elif fault == "expire":
        emu.expire_access_tokens()
        await emu.drop_connections(mode="close")


def lift(emu: Emulator) -> None:
    emu.accept_connections()
    emu.unstall_connections()


async def test_chaos_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """60 rounds of faults and bursts (about 2,200 notifications), three restarts (one
    SIGKILL): every notification generated is in the file sink exactly once."""
    rng = random.Random(SEED)
    emu = emulator(wsc_on_notifications=7, seed=SEED)
    bodies = {name: seed(name)["body"] for _, name in BODIES}
    counters = Counters()
    generated = 0
    applied: Counter[str] = Counter()
    async with emu.running():
        config = tmp_path / "a2pd.toml"
        config.write_text(settings_text(
            emu, tmp_path, log_level="debug",
            connection={"heartbeat_interval": 0.3, "heartbeat_timeout": 0.5,
                        "backoff_max": 0.3}))

        async def burst(n: int) -> None:
            nonlocal generated
            for _ in range(n):
                kind, name = rng.choice(BODIES)
                body: dict[str, Any] = dict(bodies[name])
                if kind == "message":
                    body["id"] = f"m{generated}"
                generated += await emu.publish(kind, body)

        async def caught_up() -> None:
            with anyio.fail_after(TIMEOUT * 2):
                await counters.wait_for("delivered", generated)

        for life in range(len(RESTARTS) + 1):
            async with daemon_process(config, emu.config.jwt, counters) as process:
                with anyio.fail_after(TIMEOUT):
                    await counters.wait_for("log.subscribed" if life == 0 else
                                            "log.connecting", 1)
                await caught_up()
                for round_ in range(ROUNDS):
                    planned = RESTARTS.get(round_)
                    if planned is not None and applied[f"restart-{round_}"] == 0:
                        applied[f"restart-{round_}"] += 1
                        applied[planned] += 1
                        if planned == "kill":
                            await caught_up()
                            process.send_signal(signal.SIGKILL)
                        else:
                            process.send_signal(signal.SIGTERM)
                        await process.wait()
                        await burst(rng.randint(10, 40))  # published while nobody listens
                        break
                    if applied[f"round-{round_}"]:
                        continue  # done in an earlier life
                    applied[f"round-{round_}"] += 1
                    fault = rng.choice(FAULTS)
                    applied[fault] += 1
                    await inject(emu, fault)
                    await burst(rng.randint(20, 50))
                    lift(emu)
                    await caught_up()
                else:
                    process.send_signal(signal.SIGTERM)
                    assert await process.wait() == 0
        sent = {g.uuid for g in emu.generated}
    written = Counter(r["uuid"] for r in read_records(tmp_path / "events"))
    duplicates = {u: n for u, n in written.items() if n > 1}
    replays = sum(1 for s in emu.sent if s.replay)
    print(f"\ngenerated {len(sent)}, written {sum(written.values())} ({len(written)} unique), "
          f"duplicates {len(duplicates)}, replayed by the gateway {replays}, "
          f"faults {dict(sorted((k, v) for k, v in applied.items() if '-' not in k))}")
    assert len(sent) == generated
    assert set(written) == sent, (f"missing {len(sent - set(written))}, "
                                  f"invented {len(set(written) - sent)}")
    assert not duplicates
    assert applied["kill"] == 1
    assert applied["term"] == 2
    assert replays > 0
