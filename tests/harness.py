"""Helpers for end-to-end tests: a daemon wired to an in-process emulator on loopback.

Servers start inside the test (``async with``), never in a yield fixture: pytest-asyncio runs
a fixture's setup and teardown in different tasks, which breaks anyio task groups.
Waiting is event-driven (counters, emulator events), bounded by ``TIMEOUT``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from a2pd import config
from a2pd.app import Daemon
from a2pd.emulator import Emulator, EmulatorConfig
from a2pd.journal import DeadLetter, Journal, JournalOptions
from a2pd.observe import Counters
from a2pd.parts import open_journal

#: every wait in an end-to-end test is bounded by this many seconds
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


def settings_text(emu: Emulator, tmp_path: Path, *, sinks: str | None = None,
                  routes: str = "", connection: dict[str, Any] | None = None,
                  journal: dict[str, Any] | None = None, ops: dict[str, Any] | None = None,
                  extra: str = "", log_level: str = "debug") -> str:
    """The TOML of a config pointing at ``emu``, with a file sink ``archive`` under
    tmp_path by default."""
    conn = {**FAST_CONNECTION, **(connection or {})}
    conn_toml = "\n".join(f"{k} = {json.dumps(v)}" for k, v in conn.items())
    # a free port by default: tests run daemons side by side
    ops_toml = "\n".join(f"{k} = {json.dumps(v)}" for k, v in {
        "listen": "127.0.0.1:0", **(ops or {})}.items())
    journal_toml = "\n".join(f"{k} = {json.dumps(v)}" for k, v in {
        "commit_interval": 0.01, "compact_interval": 0.2, **(journal or {})}.items())
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
client_secret = "{emu.config.client_secret}"
jwt = "{emu.config.jwt}"

[connection]
{conn_toml}

[state]
directory = "{tmp_path / 'state'}"

[journal]
{journal_toml}

[delivery]
retry_initial = 0.01
retry_max = 0.1
shutdown_timeout = 5

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
