"""Operating a2pd: sd_notify, the ops endpoint (/metrics /healthz /readyz /status),
`a2pd status`, and reload."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import pytest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from a2pd import config
from a2pd.app import Daemon
from a2pd.observe import Histogram
from a2pd.ops import Metrics
from a2pd.sinks.file import FileSink
from tests.harness import (
    TIMEOUT,
    delivered,
    emulator,
    read_records,
    running_daemon,
    seed,
    session_count,
    settings_for,
    settings_text,
    snapshot_of,
)
from tests.processes import read_until, started, stderr_lines, write_config

POLL = 0.05


def ops_url(daemon: Daemon, path: str) -> str:
    assert daemon.ops_port is not None
    return f"http://127.0.0.1:{daemon.ops_port}{path}"


async def until_status(client: httpx.AsyncClient, url: str, status: int) -> httpx.Response:
    """Ask ``url`` until it answers ``status`` (a readiness probe's view), bounded."""
    with anyio.fail_after(TIMEOUT):
        while True:
            response = await client.get(url)
            if response.status_code == status:
                return response
            await anyio.sleep(POLL)


def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus exposition, parsed by prometheus_client."""
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


async def test_notify_messages_arrive_in_order(tmp_path: Path) -> None:
    """Under a real $NOTIFY_SOCKET: READY=1 once subscribed (with a STATUS= line),
    WATCHDOG=1 pings, RELOADING=1 then READY=1 around a SIGHUP reload, STOPPING=1 on SIGTERM;
    and `a2pd status` reads the running daemon."""
    notify_path = tmp_path / "notify.sock"
    emu = emulator()
    async with emu.running(), await anyio.create_unix_datagram_socket(
            local_path=notify_path) as notify:
        config_path = write_config(tmp_path, emu)
        messages: list[str] = []
        got_ready = anyio.Event()
        got_reload = anyio.Event()
        got_stopping = anyio.Event()

        async def collect() -> None:
            async for data, _ in notify:
                messages.append(data.decode())
                text = "\n".join(messages)
                if "READY=1" in text:
                    got_ready.set()
                if "RELOADING=1" in text and messages[-1].startswith("READY=1"):
                    got_reload.set()
                if "STOPPING=1" in text:
                    got_stopping.set()

        env = {"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "200000"}
        async with anyio.create_task_group() as tg:
            tg.start_soon(collect)
            async with started(config_path, emu.config.jwt, env) as process:
                lines: list[str] = []
                stream = stderr_lines(process)
                with anyio.fail_after(TIMEOUT):
                    await read_until(stream, "subscribed", lines)
                    await got_ready.wait()
                    status = await anyio.run_process(
                        [sys.executable, "-m", "a2pd", "status", "-c", str(config_path)],
                        check=False)
                    process.send_signal(signal.SIGHUP)
                    await read_until(stream, "reloaded", lines)
                    await got_reload.wait()
                    process.send_signal(signal.SIGTERM)
                    await got_stopping.wait()
                    assert await process.wait() == 0
            tg.cancel_scope.cancel()
    kinds = [m.split("\n")[0].split("=")[0] for m in messages]
    order = [k for k in kinds if k in ("READY", "RELOADING", "STOPPING")]
    assert order == ["READY", "RELOADING", "READY", "STOPPING"]
    ready = next(m for m in messages if m.startswith("READY=1"))
    assert "STATUS=subscribed;" in ready
    assert kinds.count("WATCHDOG") >= 1
    reloading = next(m for m in messages if m.startswith("RELOADING=1"))
    assert "MONOTONIC_USEC=" in reloading
    assert status.returncode == 0, status.stderr.decode()
    shown = status.stdout.decode()
    assert "subscribed" in shown
    assert "archive" in shown
    assert not (tmp_path / "state" / "ops.json").exists()  # removed at stop


async def test_readyz_follows_the_connection_and_the_sinks(tmp_path: Path) -> None:
    """/readyz is 200 when subscribed and every sink keeps up; 503 while the platform is
    gone or a sink has been stuck on one batch past its budget; 200 again after recovery.
    /healthz stays 200 throughout."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    emu = emulator(port=port)
    blocker = tmp_path / "events" / "outbound.jsonl"
    body = seed("outbound.json")["body"]
    platform = emu.running()
    await platform.__aenter__()
    try:
        settings = settings_for(emu, tmp_path, ops={"ready_max_lag": "300ms"})
        async with running_daemon(settings) as daemon, httpx.AsyncClient() as client:
            await until_status(client, ops_url(daemon, "/readyz"), 200)
            # the platform goes away: not ready, but alive
            await platform.__aexit__(None, None, None)
            platform = None
            gone = await until_status(client, ops_url(daemon, "/readyz"), 503)
            assert "subscription is not active" in gone.text
            assert (await client.get(ops_url(daemon, "/healthz"))).status_code == 200
            platform = emu.running()
            await platform.__aenter__()
            await until_status(client, ops_url(daemon, "/readyz"), 200)
            # a sink stuck on a batch past its budget: not ready
            blocker.mkdir(parents=True)
            await emu.publish("message", {**body, "id": "stuck"})
            stuck = await until_status(client, ops_url(daemon, "/readyz"), 503)
            assert "sink archive" in stuck.text
            blocker.rmdir()
            await delivered(daemon, "archive", 1)
            await until_status(client, ops_url(daemon, "/readyz"), 200)
            assert daemon.supervisor is not None
            await session_count(daemon, "connections", 2)
    finally:
        if platform is not None:
            await platform.__aexit__(None, None, None)


async def test_metrics_are_valid_prometheus_text_with_the_counts(tmp_path: Path) -> None:
    """/metrics parses with prometheus_client and reports what happened: events by kind,
    deliveries per sink, the subscription, journal depth; /status agrees."""
    emu = emulator()
    body = seed("outbound.json")["body"]
    async with emu.running():
        settings = settings_for(emu, tmp_path)
        async with running_daemon(settings) as daemon, httpx.AsyncClient() as client:
            for i in range(7):
                await emu.publish("message", {**body, "id": f"m{i}"})
            await emu.publish("optout", seed("optout.json")["body"])
            await delivered(daemon, "archive", 8)
            response = await client.get(ops_url(daemon, "/metrics"))
            status = (await client.get(ops_url(daemon, "/status"))).json()
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    values = metric_values(response.text)
    assert values[("a2pd_events_received_total", (("kind", "outbound"),))] == 7
    assert values[("a2pd_events_received_total", (("kind", "optout"),))] == 1
    assert values[("a2pd_sink_delivered_total", (("sink", "archive"),))] == 8
    assert values[("a2pd_subscribed", ())] == 1
    assert values[("a2pd_ready", ())] == 1
    assert values[("a2pd_connections_total", ())] == 1
    assert ("a2pd_journal_events", ()) in values
    assert status["sinks"]["archive"]["delivered"] == 8
    assert status["connection"]["subscribed"] is True
    assert status["counters"]["received.outbound"] == 7


def test_status_view_escapes_what_others_wrote() -> None:
    """A receiver's answer quoted in a recent problem cannot reach the terminal raw."""
    from a2pd.status import render

    state = {"version": "x", "pid": 1, "uptime_seconds": 5.0, "state": "subscribed",
             "ready": True, "not_ready": [], "events_per_second": 0.0,
             "connection": {"subscribed": True, "subscription_id": "s", "connections": 1,
                            "recoveries_successful": 0, "recoveries_failed": 0,
                            "last_event_age_seconds": 1.0},
             "journal": {"events": 0, "oldest_age_seconds": None},
             "sinks": {"hook": {"type": "http", "backlog": 0, "busy_seconds": None,
                                "ready": True, "delivered": 0, "retries": 1,
                                "dead_letters": 0}},
             "recent_problems": [{"timestamp": "t", "level": "warning", "component": "pipeline",
                                  "event": "sink_retry", "reason": "HTTP 500: \x1b[2J\ngotcha"}]}
    shown = render(state)
    assert "\x1b" not in shown
    assert "\\x1b[2J\\ngotcha" in shown
    assert "journal 0 events, oldest never" in shown  # a daemon that did not say its size
    state["journal"] = {"events": 3, "oldest_age_seconds": 2.0, "size_bytes": 3 * 1024 * 1024}
    assert "journal 3 events (3.0 MiB), oldest 2.0s" in render(state)


def test_http_sink_latency_renders_as_a_histogram() -> None:
    """The http sink's bucket counters become a cumulative Prometheus histogram; status
    classes and recovery outcomes become labels of one family each."""
    counters = {"http_latency_ms_le_5.hook": 1, "http_latency_ms_le_10.hook": 3,
                "http_latency_ms_sum.hook": 24, "http_latency_ms_count.hook": 4,
                "http_status_2xx.hook": 3, "http_status_5xx.hook": 1,
                "recoveries_successful": 2, "recoveries_failed": 1}
    values = metric_values(Metrics(lambda: snapshot_of(counters, {"hook": "http"}),
                                   dict).render().decode())
    hook = (("le", "0.005"), ("sink", "hook"))
    assert values[("a2pd_http_request_duration_seconds_bucket", hook)] == 1
    assert values[("a2pd_http_request_duration_seconds_bucket",
                   (("le", "+Inf"), ("sink", "hook")))] == 4
    assert values[("a2pd_http_request_duration_seconds_sum", (("sink", "hook"),))] == 0.024
    assert values[("a2pd_http_responses_total", (("class", "5xx"), ("sink", "hook")))] == 1
    assert values[("a2pd_http_responses_total", (("class", "4xx"), ("sink", "hook")))] == 0
    assert values[("a2pd_recoveries_total", (("outcome", "failed"),))] == 1


def test_undeclared_counters_are_not_exported_but_a_plugin_sinks_are() -> None:
    """A counter nobody declared gets no made-up family (it is logged instead); a
    third-party sink's own "<counter>.<sink>" counters are labels of one declared family;
    the dead letters' total is not exported beside the per-source series."""
    counters = {"something_new.x": 5, "something_new": 1, "produced.kafka": 7,
                "dead_letters": 3, "dead_letters.kafka": 2, "dead_letters.frame": 1}
    text = Metrics(lambda: snapshot_of(counters, {"kafka": "kafka"}), dict).render().decode()
    values = metric_values(text)
    assert not [name for name, _ in values if "something_new" in name]
    assert values[("a2pd_sink_plugin_counter_total",
                   (("counter", "produced"), ("sink", "kafka")))] == 7
    assert values[("a2pd_dead_letters_total", (("sink", "kafka"),))] == 2
    assert values[("a2pd_dead_letters_total", (("sink", "frame"),))] == 1
    assert ("a2pd_dead_letters_total", ()) not in values
    assert values[("a2pd_sink_delivered_total", (("sink", "kafka"),))] == 0


def test_delivery_latency_histogram_comes_from_the_pipeline() -> None:
    """The pipeline's per-sink latency histograms render with their buckets in seconds;
    a configured sink without one yet has every bucket at 0."""
    histogram = Histogram((0.01, 0.1, 1.0))
    for value in (0.005, 0.01, 0.05, 2.0):
        histogram.observe(value)
    state = snapshot_of({}, {"a": "file", "b": "stdout"})
    values = metric_values(Metrics(lambda: state, lambda: {"a": histogram}).render().decode())
    bucket = "a2pd_delivery_latency_seconds_bucket"
    assert values[(bucket, (("le", "0.01"), ("sink", "a")))] == 2
    assert values[(bucket, (("le", "0.1"), ("sink", "a")))] == 3
    assert values[(bucket, (("le", "+Inf"), ("sink", "a")))] == 4
    assert values[("a2pd_delivery_latency_seconds_sum", (("sink", "a"),))] == \
        pytest.approx(2.065)
    assert values[("a2pd_delivery_latency_seconds_count", (("sink", "b"),))] == 0
    assert values[(bucket, (("le", "300.0"), ("sink", "b")))] == 0


async def test_reload_with_a_changed_route_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """A reload adds a route to a new sink and replaces the archive sink (changed options)
    while events flow: the archive gets every event exactly once, the new sink gets the
    events that arrived after the reload, once each."""
    emu = emulator()
    body = seed("outbound.json")["body"]
    extra_sink = f"""
[sinks.failures]
type = "file"
directory = "{tmp_path / 'failures'}"
path = "{{kind}}.jsonl"
fsync = "never"
"""
    async with emu.running():
        path = tmp_path / "a2pd.toml"
        base = settings_text(emu, tmp_path)
        path.write_text(base)
        settings = config.load(path, env={})
        async with running_daemon(settings, config_path=path) as daemon:
            for i in range(20):
                await emu.publish("message", {**body, "id": f"before-{i}"})
            await delivered(daemon, "archive", 10)  # some delivered, some maybe in flight
            changed = base.replace('fsync = "never"', 'fsync = "always"') + extra_sink
            changed = changed.replace('[default_route]\nsinks = ["archive"]',
                                      '[default_route]\nsinks = ["archive", "failures"]')
            path.write_text(changed)
            old_archive = daemon.sinks["archive"]
            assert await daemon.reload()
            assert daemon.sinks["archive"] is not old_archive
            for i in range(20):
                await emu.publish("message", {**body, "id": f"after-{i}"})
            await delivered(daemon, "failures", 20)
            assert daemon.pipeline is not None
            with anyio.fail_after(TIMEOUT):
                await daemon.pipeline.counters.wait_for("delivered.archive", 40)
            new_archive = daemon.sinks["archive"]
            assert isinstance(new_archive, FileSink)
            assert new_archive.held  # it has files open ...
    assert not new_archive.held  # ... which the stop closed (the sink built by the reload)
    archive = [r["body"]["id"] for r in read_records(tmp_path / "events")]
    failures = [r["body"]["id"] for r in read_records(tmp_path / "failures")]
    assert sorted(archive) == sorted([f"before-{i}" for i in range(20)] +
                                     [f"after-{i}" for i in range(20)])
    assert len(set(archive)) == len(archive)
    assert sorted(failures) == sorted(f"after-{i}" for i in range(20))


async def test_a_bad_reload_is_refused_and_the_old_config_keeps_running(tmp_path: Path) -> None:
    """A config that does not validate is refused with its problems logged; delivery goes on
    with the running configuration."""
    emu = emulator()
    body = seed("outbound.json")["body"]
    async with emu.running():
        path = tmp_path / "a2pd.toml"
        path.write_text(settings_text(emu, tmp_path))
        settings = config.load(path, env={})
        async with running_daemon(settings, config_path=path) as daemon:
            path.write_text(path.read_text().replace('[default_route]\nsinks = ["archive"]',
                                                     '[default_route]\nsinks = ["nowhere"]'))
            assert not await daemon.reload()
            assert daemon.settings is settings
            await emu.publish("message", {**body, "id": "still-flowing"})
            await delivered(daemon, "archive", 1)
            assert daemon.pipeline is not None
            assert daemon.pipeline.counters["reloads_refused"] == 1
    assert [r["body"]["id"] for r in read_records(tmp_path / "events")] == ["still-flowing"]
    assert not await daemon.reload()  # stopped: a late SIGHUP is ignored, never a crash


def test_cli_status_without_a_daemon_says_so(tmp_path: Path) -> None:
    """`a2pd status` against nothing: a clear line and exit 69, no traceback."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = subprocess.run(
        [sys.executable, "-m", "a2pd", "status", "--url", f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "NO_PROXY": "*"})
    assert result.returncode == 69
    assert "no daemon answers" in result.stderr
    assert "Traceback" not in result.stderr


async def test_odd_requests_never_stop_the_daemon(tmp_path: Path) -> None:
    """HEAD, garbage, a request cut short and an oversized head each get an answer or a
    closed connection; the endpoint (and the daemon) keep serving."""
    emu = emulator()
    async with emu.running(), running_daemon(settings_for(emu, tmp_path)) as daemon, \
                httpx.AsyncClient() as client:
        head = await client.head(ops_url(daemon, "/healthz"))
        assert head.status_code == 200
        assert head.content == b""
        assert daemon.ops_port is not None
        for raw in (b"garbage\r\n\r\n", b"GET /status HTTP/1.1\r\nHost: x\r\n",
                    b"GET /" + b"x" * 70000 + b" HTTP/1.1\r\n\r\n",
                    b"GET /healthz HTTP/1.1\r\nHost: \xff\r\n\r\n"):
            async with await anyio.connect_tcp("127.0.0.1", daemon.ops_port) as sock:
                await sock.send(raw)
                await sock.send_eof()
                with anyio.fail_after(TIMEOUT):
                    try:
                        while await sock.receive():
                            pass
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        pass
        assert (await client.get(ops_url(daemon, "/healthz"))).status_code == 200
        assert (await client.post(ops_url(daemon, "/healthz"))).status_code == 405
