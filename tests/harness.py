"""What the tests share: the time bound, the seed notifications and events made from them,
test configs, and a daemon wired to an in-process emulator on loopback.

    TIMEOUT                    the bound on every wait (end-to-end and emulator tests alike)
    seed, seed_kind, DATA      the seed notifications in tests/data
    sample_event(s)            seed notifications decoded into events (uuid, fields replaced)
    settings_text/_for         the config of a daemon pointed at an emulator
    PLATFORM_TOML, sink_config a config that is only parsed, never run
    running_daemon, delivered, session_count    an in-process daemon, waited on
    open_test_journal, router_all, read_dead_letters, read_records, snapshot_of
    plain, publish_while_away, failed_recovery_gap, FAST_BACKFILL    traffic and gaps

``a2pd`` as a child process is tests/processes.py's; a raw client of the emulator's HTTP and
WebSocket endpoints is tests/platform_client.py's. Test files import from these modules,
never from one another.

Servers start inside the test (``async with``), never in a yield fixture: pytest-asyncio runs
a fixture's setup and teardown in different tasks, which breaks anyio task groups.
Waiting is event-driven (counters, emulator events), bounded by ``TIMEOUT``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from a2pd import config, events
from a2pd.app import Daemon
from a2pd.emulator import Emulator, EmulatorConfig
from a2pd.journal import DeadLetter, Journal, JournalOptions
from a2pd.observe import Counters
from a2pd.parts import open_journal
from a2pd.router import Route, Router

#: every wait in a test is bounded by this many seconds
TIMEOUT = 15.0
DATA = Path(__file__).parent / "data"

#: time in the tests is scaled down: reconnects and token pacing are near-immediate
FAST_CONNECTION = {
    "backoff_initial": 0.05,
    "backoff_max": 0.5,
    "wstoken_min_interval": 0.01,
    "heartbeat_interval": 5.0,
    "keepalive_interval": 5.0,
    "heartbeat_timeout": 5.0,
    "connect_timeout": 5.0,
    "request_timeout": 5.0,
}


def seed(name: str) -> dict[str, Any]:
    """A seed example notification from tests/data."""
    doc: dict[str, Any] = json.loads((DATA / name).read_text())
    return doc


def seed_kind(name: str) -> str:
    """The emulator publish kind for a seed file."""
    event = seed(name)["event"]
    if "/a2p-sms/batches" in event:
        return "batch"
    if "/a2p-sms/opt-outs" in event:
        return "optout"
    return "message"


def sample_event(name: str = "outbound.json", *, uuid: str | None = None,
                 envelope: Mapping[str, Any] | None = None, **body: Any) -> events.Event:
    """Seed ``name`` decoded as the daemon decodes a notification, with its ``uuid``, the
    top-level fields in ``envelope`` and the body fields in ``body`` replaced."""
    doc = {**seed(name), **(envelope or {})}
    if uuid is not None:
        doc["uuid"] = uuid
    doc["body"] = {**doc["body"], **body}
    result = events.decode_notification(doc, b"")
    assert not isinstance(result, events.EventError), result
    return result


def sample_events(n: int, name: str = "outbound.json", *,
                  uuid: Callable[[int], str] = "u{:05d}".format,
                  **body: Any) -> list[events.Event]:
    """``n`` events of seed ``name``, the i-th with uuid ``uuid(i)`` (``u00000``, ``u00001``
    … by default: they sort in order), each with the body fields in ``body`` replaced."""
    return [sample_event(name, uuid=uuid(i), **body) for i in range(n)]


def _toml_lines(values: Mapping[str, Any]) -> str:
    """``key = value`` lines (values written as JSON, which TOML reads the same)."""
    return "\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items())


def settings_text(emu: Emulator, tmp_path: Path, *, sinks: str | None = None,
                  routes: str = "", connection: dict[str, Any] | None = None,
                  journal: dict[str, Any] | None = None,
                  delivery: dict[str, Any] | None = None, ops: dict[str, Any] | None = None,
                  extra: str = "", log_level: str = "debug",
                  client_secret_file: Path | None = None) -> str:
    """The TOML of a config pointing at ``emu``, with a file sink ``archive`` under
    tmp_path by default. The secrets are inline, or with ``client_secret_file`` kept out of
    the file: the client secret read from that file, the JWT from $A2PD_JWT."""
    conn_toml = _toml_lines({**FAST_CONNECTION, **(connection or {})})
    # a free port by default: tests run daemons side by side
    ops_toml = _toml_lines({"listen": "127.0.0.1:0", **(ops or {})})
    journal_toml = _toml_lines({"commit_interval": 0.01, "compact_interval": 0.2,
                               **(journal or {})})
    delivery_toml = _toml_lines({"retry_initial": 0.01, "retry_max": 0.1,
                                "shutdown_timeout": 5, **(delivery or {})})
    if client_secret_file is None:
        secrets = (f'client_secret = "{emu.config.client_secret}"\n'
                   f'jwt = "{emu.config.jwt}"')
    else:
        secrets = f'client_secret_file = "{client_secret_file}"'
    sinks = sinks if sinks is not None else f"""
[sinks.archive]
type = "file"
directory = "{tmp_path / 'events'}"
path = "{{kind}}.jsonl"
fsync = "never"
"""
    if not routes:
        routes = '[default_route]\nsinks = ["archive"]\n'
    text = f"""
[platform]
server = "{emu.base_url}"
client_id = "{emu.config.client_id}"
{secrets}

[connection]
{conn_toml}

[state]
directory = "{tmp_path / 'state'}"

[journal]
{journal_toml}

[delivery]
{delivery_toml}

[ops]
{ops_toml}

[log]
level = "{log_level}"

{extra}
{sinks}
{routes}
"""
    return text


def settings_for(emu: Emulator, tmp_path: Path, **options: Any) -> config.Settings:
    """Settings pointing at ``emu``, with a file sink ``archive`` under tmp_path by default
    (the options are ``settings_text``'s)."""
    return config.loads(settings_text(emu, tmp_path, **options), source="test", env={})


#: a [platform] table with its secrets inline, for a config that is only parsed (its server
#: is never reached)
PLATFORM_TOML = """
[platform]
server = "http://127.0.0.1:1"
client_id = "id"
client_secret = "inline-secret"
jwt = "inline-jwt"
"""


def sink_config(name: str, table: str) -> str:
    """A config that is only parsed: ``PLATFORM_TOML``, the sink ``name`` (``table``: the
    lines of its table) and the default route to it."""
    return f"""{PLATFORM_TOML}
[sinks.{name}]
{table}

[default_route]
sinks = ["{name}"]
"""


@asynccontextmanager
async def running_daemon(settings: config.Settings,
                         config_path: Path | None = None) -> AsyncIterator[Daemon]:
    """Run a daemon until the block ends; enter once its first subscription is active.
    ``config_path`` is the file a reload re-reads."""
    daemon = Daemon(settings, config_path=config_path)
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(daemon.run, handle_signals=False))
        with anyio.fail_after(TIMEOUT):
            await daemon.subscribed.wait()
        try:
            yield daemon
        finally:
            daemon.request_stop()


async def delivered(daemon: Daemon, sink: str, count: int) -> None:
    """Wait until ``sink`` has delivered ``count`` events."""
    assert daemon.pipeline is not None
    with anyio.fail_after(TIMEOUT):
        await daemon.pipeline.counters.wait_for(f"delivered.{sink}", count)


async def session_count(daemon: Daemon, key: str, count: int) -> None:
    """Wait until a session counter (connections, subscriptions, …) reaches ``count``."""
    assert daemon.supervisor is not None
    with anyio.fail_after(TIMEOUT):
        await daemon.supervisor.state.counters.wait_for(key, count)


#: a journal for a test: commits every 10 ms, no bounds, uuids kept for an hour
TEST_JOURNAL = JournalOptions(commit_interval=0.01, commit_max=200, max_events=0,
                              max_age=None, dedup_window=3600.0)


async def open_test_journal(path: Path, *, clock: Callable[[], float] = time.time,
                            counters: Counters | None = None, **options: Any) -> Journal:
    """The journal at ``path`` (a directory: its ``journal.db``) with ``TEST_JOURNAL``'s
    options, any of them replaced by ``options``."""
    if path.suffix != ".db":
        path = path / "journal.db"
    return await Journal.open(path, replace(TEST_JOURNAL, **options), clock=clock,
                              counters=counters)


async def read_dead_letters(settings: config.Settings) -> list[DeadLetter]:
    """The dead letters in the journal of a stopped daemon."""
    journal = await open_journal(settings, Path(settings.state.directory))
    try:
        return await journal.letters.entries()
    finally:
        await journal.aclose()


def read_records(directory: Path) -> list[dict[str, Any]]:
    """Every JSON line under ``directory``."""
    records = []
    for path in sorted(directory.rglob("*.jsonl")):
        records.extend(json.loads(line) for line in path.read_text().splitlines())
    return records


def emulator(**overrides: Any) -> Emulator:
    """An emulator on a free loopback port."""
    return Emulator(EmulatorConfig(**overrides))


def router_all(*names: str) -> Router:
    """One route taking every event to the sinks ``names``."""
    return Router((Route("all", names),), ())


def snapshot_of(counters: dict[str, int], sinks: dict[str, str]) -> dict[str, Any]:
    """A daemon snapshot with these counters and sinks (name → type), idle otherwise."""
    return {"version": "x", "counters": counters, "ready": True, "uptime_seconds": 1.0,
            "connection": {"connected": True, "subscribed": True,
                           "last_event_age_seconds": None},
            "journal": {"events": 0, "oldest_age_seconds": None, "size_bytes": 4096,
                        "limit_events": 100, "limit_age_seconds": None,
                        "commits_failing": None},
            "backfill": {"refused": None},
            "sinks": {name: {"type": kind, "backlog": 0, "busy_seconds": None, "ready": True}
                      for name, kind in sinks.items()}}


# -- traffic, and a gap for the backfill to fill ---------------------------------------------

#: the backfill retries a failed list call near at once
FAST_BACKFILL = '[backfill]\nretry_initial = 0.05\nretry_max = 0.2\n'


def now_iso() -> str:
    """The current UTC time as the A2P bodies write it."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def plain(msg_id: str, status: str = "Delivered") -> dict[str, Any]:
    """An outbound message body stamped now."""
    stamp = now_iso()
    body = {**seed("outbound.json")["body"], "id": msg_id, "messageStatus": status,
            "creationTime": stamp, "lastModifiedTime": stamp}
    body.pop("errorCode", None)
    return body


def batch(batch_id: str, status: str) -> dict[str, Any]:
    """A batch body stamped now."""
    stamp = now_iso()
    return {**seed("batch.json")["body"], "id": batch_id, "status": status,
            "creationTime": stamp, "lastModifiedTime": stamp}


async def publish_live(emu: Emulator, daemon: Daemon) -> int:
    """Four messages and a batch received live; how many."""
    for i in range(4):
        await emu.publish("message", plain(f"live-{i}"))
    await emu.publish("batch", batch("live-batch", "Completed"))
    await delivered(daemon, "archive", 5)
    return 5


async def publish_while_away(emu: Emulator, count: int) -> int:
    """Drop the socket and publish ``count`` messages, a batch and an opt-out before the
    daemon can reconnect (no await yields in between); how many events were lost."""
    await emu.drop_connections(mode="abrupt")
    before = len(emu.generated)
    for i in range(count):
        await emu.publish("message", plain(f"lost-{i}"))
    await emu.publish("batch", batch("lost-batch", "Completed"))
    await emu.publish("optout", seed("optout.json")["body"])
    assert not any(g.live for g in emu.generated[before:])
    return count + 2


async def failed_recovery_gap(emu: Emulator, daemon: Daemon, count: int) -> tuple[int, int]:
    """Events received live, then a failed recovery with ``count`` messages (plus a batch
    and an opt-out) published meanwhile: (live, lost)."""
    live = await publish_live(emu, daemon)
    emu.fail_next_recovery()
    return live, await publish_while_away(emu, count)
