"""Chaos: thousands of events while the platform misbehaves and the daemon is restarted.

A seeded schedule injects, between bursts of traffic, every fault the emulator has: abrupt
drops, close frames, WSG-902/903, refused upgrades, a stalled peer, token and wstoken
errors with Retry-After, access tokens expiring mid-connection, malformed and oversized
frames, recoveries answered `Failed` and refresh tokens that stop working (the last three
lose events that only the REST backfill can bring back) — plus three restarts of the
daemon process (two SIGTERM, one SIGKILL). Afterwards, against the emulator's log of every
notification it generated: each event is in the file sink exactly once — by uuid, or as
its backfilled equivalent (same message/batch id, status and time, or the same opt-out
pair and state) — and nothing is invented.
"""

from __future__ import annotations

import json
import random
import signal
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process

from a2pd.emulator import Emulator
from a2pd.observe import Counters
from tests.harness import TIMEOUT, emulator, read_records, seed, settings_text
from tests.processes import started, stderr_lines

SEED = 20261123
ROUNDS = 60
RESTARTS = {12: "term", 30: "kill", 47: "term"}
FAULTS = ["abrupt", "close", "error902", "error903", "refuse", "stall", "token", "wstoken",
          "expire", "failed-recovery", "refresh-refused", "garbage", "oversized", "none"]
#: small enough that an oversized frame is cheap to make
MAX_FRAME = 64 * 1024
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


def content(kind: str, body: dict[str, Any]) -> tuple[str, ...]:
    """What identifies an A2P event apart from its notification uuid."""
    if kind in ("batch",):
        return ("batch", body["id"], body["status"], body["lastModifiedTime"])
    if kind in ("optout", "optin"):
        return ("optout", body["from"], body["to"], str(body["active"]).lower())
    return ("message", body["id"], body["messageStatus"], body["lastModifiedTime"])


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
    elif fault == "failed-recovery":
        emu.fail_next_recovery(random.Random(len(emu.generated)).choice(
            ["WSG-1003", "WSG-1005"]))
        await emu.drop_connections(mode="abrupt")
    elif fault == "garbage":
        await emu.publish_raw_frame(b'\xff[{"type": "ServerNotification"}, not json')
        await emu.publish_raw_frame(  # a known A2P event path with a body that is no body
            '[{"type": "ServerNotification", "messageId": "x"}, {"uuid": "u", '
            '"event": "/restapi/v1.0/account/~/a2p-sms/messages", "body": 5}]')
    elif fault == "oversized":
        await emu.publish_raw_frame('["' + "x" * (MAX_FRAME + 1) + '"]')
    elif fault == "refresh-refused":
        emu.break_refresh_tokens()
        emu.expire_access_tokens()
        await emu.drop_connections(mode="abrupt")


def lift(emu: Emulator) -> None:
    emu.accept_connections()
    emu.unstall_connections()


async def test_chaos_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """60 rounds of faults and bursts (about 2,200 notifications), three restarts (one
    SIGKILL): every notification generated is in the file sink exactly once, live or
    backfilled."""
    rng = random.Random(SEED)
    # the documented Light group (50 calls a sliding window, a penalty after it), with
    # time scaled 30x like the rest of this run: the backfill after each recovery paces
    emu = emulator(wsc_on_notifications=7, seed=SEED, a2p_rate_limit=50,
                   a2p_rate_window=2.0, a2p_rate_penalty=2.0)
    bodies = {name: seed(name)["body"] for _, name in BODIES}
    counters = Counters()
    generated = 0  # notifications (a publish reaches every subscription that matches,
    published = 0  # and an abandoned session's subscription still gets its copy)
    applied: Counter[str] = Counter()
    async with emu.running():
        config = tmp_path / "a2pd.toml"
        config.write_text(settings_text(
            emu, tmp_path, log_level="debug",
            connection={"heartbeat_interval": 0.3, "heartbeat_timeout": 0.5,
                        "backoff_max": 0.3, "max_frame_bytes": MAX_FRAME}))

        async def burst(n: int) -> None:
            nonlocal generated, published
            for _ in range(n):
                kind, name = rng.choice(BODIES)
                body: dict[str, Any] = dict(bodies[name])
                # every event distinct, stamped now (as the platform does): the backfill
                # lists by time and tells events apart by id, status and time
                stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                if kind in ("message", "batch"):
                    body.update(id=f"{kind}-{published}", creationTime=stamp,
                                lastModifiedTime=stamp)
                else:
                    body["from"] = f"+1650{published:07d}"
                generated += await emu.publish(kind, body)
                published += 1

        async def caught_up() -> None:
            try:
                with anyio.fail_after(TIMEOUT * 2):
                    await counters.wait_for("delivered", published)
            except TimeoutError:
                written = read_records(tmp_path / "events")
                live = {r["uuid"] for r in written}
                rebuilt = {content(r["kind"], r["body"]) for r in written}
                lost = [(g.kind, g.live, content(g.kind, g.body)) for g in emu.generated
                        if g.uuid not in live and content(g.kind, g.body) not in rebuilt]
                print(f"generated {generated}, delivered {counters['delivered']}, "
                      f"not written: {lost[:10]} ({len(lost)})")
                raise

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
        generated_log = list(emu.generated)
        sent = {g.uuid for g in generated_log}
    records = read_records(tmp_path / "events")
    live = Counter(r["uuid"] for r in records if not r.get("backfilled"))
    written = Counter(content(r["kind"], r["body"]) for r in records)
    expected = {content(g.kind, g.body) for g in generated_log}
    backfilled = sum(1 for r in records if r.get("backfilled"))
    replays = sum(1 for s in emu.sent if s.replay)
    faults = {k: v for k, v in sorted(applied.items())
              if not k.startswith(("round-", "restart-"))}
    print(f"\npublished {published} ({len(sent)} notifications), written {len(records)} "
          f"({sum(live.values())} live, {backfilled} backfilled), duplicates "
          f"{sum(n - 1 for n in written.values())}, replayed by the gateway {replays}, "
          f"faults {faults}")
    assert len(expected) == published
    assert set(live) <= sent, "the sink holds a notification the emulator never sent"
    assert set(written) == expected, (f"missing {len(expected - set(written))}, "
                                      f"invented {len(set(written) - expected)}")
    assert all(n == 1 for n in written.values()), "an event was written twice"
    assert applied["kill"] == 1
    assert applied["term"] == 2
    assert replays > 0
    assert backfilled > 0
    assert applied["failed-recovery"] > 0
    assert applied["refresh-refused"] > 0
    assert applied["oversized"] > 0
    assert applied["garbage"] > 0
