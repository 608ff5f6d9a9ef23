"""/metrics through prometheus_client: every declared series from the start, one label set
per family, process metrics and build info, the delivery latency histogram, the journal's
size; the alert rules pass promtool, and they and the dashboard query only metrics a2pd
exports; every counter the code increments is declared."""

from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from a2pd import __version__, counts, events, names, sinks
from a2pd.app import Daemon
from a2pd.delivery import ARRIVAL_KEEP, ARRIVALS_KEPT
from a2pd.delivery import arrivals as arrivals_module
from a2pd.names import BUILTIN_SINK_TYPES, DEAD_LETTER_SOURCES
from a2pd.observe import (
    COUNTERS,
    DELIVERY_LATENCY_BUCKETS,
    FAMILIES,
    HTTP_CLASSES,
    exported_elsewhere,
    resolve,
)
from a2pd.ops import Metrics
from a2pd.pipeline import Pipeline
from a2pd.router import Route, Router
from a2pd.testing import CollectingSink
from tests.harness import (
    TIMEOUT,
    delivered,
    emulator,
    open_test_journal,
    router_all,
    running_daemon,
    sample_event,
    sample_events,
    seed,
    settings_for,
    snapshot_of,
)
from tests.http_receiver import Receiver

ROOT = Path(__file__).parent.parent
MONITORING = ROOT / "docs" / "monitoring"
ALERTS = MONITORING / "a2pd-alerts.yml"
DASHBOARD = MONITORING / "a2pd-dashboard.json"
SOURCE = ROOT / "daemon" / "a2pd"
KINDS = ("batch", "outbound", "inbound", "optout", "optin", "other")
PROCESS = ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
           "process_max_fds", "process_start_time_seconds", "process_virtual_memory_bytes")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


# -- helpers --------------------------------------------------------------------------------


def exposition_problems(text: str) -> list[str]:
    """What breaks "one family, one label set": a family that appears twice, or samples of
    one family with different label names (``le`` aside, on buckets)."""
    problems = []
    seen: set[str] = set()
    for family in text_string_to_metric_families(text):
        if family.name in seen:
            problems.append(f"{family.name}: family appears twice")
        seen.add(family.name)
        label_sets = {frozenset(sample.labels) - {"le"} for sample in family.samples}
        if len(label_sets) > 1:
            problems.append(f"{family.name}: label sets {sorted(map(sorted, label_sets))}")
        if not family.documentation or family.documentation.startswith("counter "):
            problems.append(f"{family.name}: no real help ({family.documentation!r})")
    return problems


def samples(text: str) -> Samples:
    """Every sample, by (name, sorted labels)."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def families(text: str) -> dict[str, str]:
    """Family name → type."""
    return {family.name: family.type for family in text_string_to_metric_families(text)}


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


async def scrape(client: httpx.AsyncClient, daemon: Daemon) -> httpx.Response:
    assert daemon.ops_port is not None
    response = await client.get(f"http://127.0.0.1:{daemon.ops_port}/metrics")
    assert response.status_code == 200
    return response


def two_sinks(receiver_url: str, tmp_path: Path) -> dict[str, Any]:
    """Options for settings_for: the file sink archive and the http sink hook, both routed."""
    return {
        "sinks": f"""
[sinks.archive]
type = "file"
directory = "{tmp_path / 'events'}"
path = "{{kind}}.jsonl"
fsync = "never"

[sinks.hook]
type = "http"
url = "{receiver_url}"
""",
        "routes": '[default_route]\nsinks = ["archive", "hook"]\n',
    }


def latency(values: Samples, sink: str) -> tuple[list[tuple[float, float]], float, float]:
    """(cumulative buckets by bound, sum, count) of a2pd_delivery_latency_seconds{sink}."""
    buckets = sorted((float(dict(labels)["le"]), value) for (name, labels), value in values.items()
                     if name == "a2pd_delivery_latency_seconds_bucket"
                     and dict(labels)["sink"] == sink)
    return (buckets, values[key("a2pd_delivery_latency_seconds_sum", sink=sink)],
            values[key("a2pd_delivery_latency_seconds_count", sink=sink)])


def promql_names(expr: str) -> set[str]:
    """The a2pd_ and process_ series names a PromQL expression selects."""
    return set(re.findall(r"\b((?:a2pd|process)_[a-zA-Z0-9_]+)\b", expr))


def alert_expressions() -> Iterator[tuple[str, str]]:
    """(alert name, expr) of every rule in the rule file (a small reader for its layout:
    ``- alert: X`` then ``expr: ...`` on one line)."""
    name = ""
    for line in ALERTS.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("- alert:"):
            name = stripped.split(":", 1)[1].strip()
        elif stripped.startswith("expr:"):
            yield name, stripped.split(":", 1)[1].strip()


def dashboard_expressions() -> Iterator[tuple[str, str]]:
    """(panel title, expr) of every panel target and templating query."""
    doc = json.loads(DASHBOARD.read_text())
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in doc["templating"]["list"]:
        yield f"${variable['name']}", variable["definition"]


# -- the exposition of a running daemon -------------------------------------------------------


async def test_every_series_is_there_from_the_start_once(tmp_path: Path) -> None:
    """Before any event, /metrics of a running daemon parses, has one label set per family
    and real help, and every declared series at 0: per kind, per sink (and per dead-letter
    source), per outcome, per HTTP class, the latency histograms; process metrics, build
    info and the journal's size and limit are there."""
    emu, receiver = emulator(), Receiver()
    async with emu.running(), receiver.running():
        settings = settings_for(emu, tmp_path, **two_sinks(receiver.url, tmp_path))
        async with running_daemon(settings) as daemon, httpx.AsyncClient() as client:
            response = await scrape(client, daemon)
    assert response.headers["content-type"].startswith("text/plain; version=")
    text = response.text
    assert exposition_problems(text) == []
    values = samples(text)
    for kind in KINDS:
        assert values[key("a2pd_events_received_total", kind=kind)] == 0
        assert values[key("a2pd_events_backfilled_total", kind=kind)] == 0
    for sink in ("archive", "hook"):
        for name in ("a2pd_sink_delivered_total", "a2pd_sink_retries_total",
                     "a2pd_dead_letters_total", "a2pd_delivery_latency_seconds_count",
                     "a2pd_sink_backlog_events"):
            assert values[key(name, sink=sink)] == 0, (name, sink)
    for source in ("frame", "notification", "backfill"):
        assert values[key("a2pd_dead_letters_total", sink=source)] == 0
    assert key("a2pd_dead_letters_total") not in values  # no unlabelled total beside them
    for outcome in ("successful", "failed"):
        assert values[key("a2pd_recoveries_total", outcome=outcome)] == 0
    for outcome in ("applied", "refused"):
        assert values[key("a2pd_reloads_total", outcome=outcome)] == 0
    for cls in ("1xx", "2xx", "3xx", "4xx", "5xx"):
        assert values[key("a2pd_http_responses_total", sink="hook", **{"class": cls})] == 0
    assert values[key("a2pd_http_request_duration_seconds_count", sink="hook")] == 0
    assert values[key("a2pd_file_reopened_total", sink="archive")] == 0
    assert key("a2pd_file_reopened_total", sink="hook") not in values  # per type
    assert key("a2pd_http_requests_total", sink="archive") not in values
    for name in ("a2pd_events_committed_total", "a2pd_events_duplicate_total",
                 "a2pd_journal_dropped_total", "a2pd_frames_malformed_total",
                 "a2pd_gaps_backfilled_total", "a2pd_backfill_errors_total"):
        assert values[key(name)] == 0, name
    assert values[key("a2pd_subscribed")] == 1
    assert values[key("a2pd_connections_total")] == 1
    # every declared family, and every series it declares for this config
    known = {"sinks": ["archive", "hook"], "http_sinks": ["hook"], "file_sinks": ["archive"],
             "dead_letter_labels": ["archive", "hook", *DEAD_LETTER_SOURCES]}
    for name, family in FAMILIES.items():
        for labels in family.series(known):
            assert key(name, **dict(zip(family.labels, labels, strict=True))) in values, \
                (name, labels)
    # the latency histogram: every bucket, at 0
    buckets, total, count = latency(values, "archive")
    assert [bound for bound, _ in buckets] == [*DELIVERY_LATENCY_BUCKETS, float("inf")]
    assert {n for _, n in buckets} == {0}
    assert total == 0
    assert count == 0
    for name in PROCESS:
        assert key(name) in values, name
    assert values[key("process_resident_memory_bytes")] > 0
    assert values[key("a2pd_build_info", version=__version__,
                      python=platform.python_version())] == 1
    assert values[key("a2pd_journal_size_bytes")] > 0
    assert values[key("a2pd_journal_limit_events")] == settings.journal.max_events
    assert values[key("a2pd_last_event_age_seconds")] >= 0  # from the start: none yet
    kinds = families(text)
    assert kinds["a2pd_delivery_latency_seconds"] == "histogram"
    assert kinds["a2pd_sink_delivered"] == "counter"
    assert kinds["process_cpu_seconds"] == "counter"


async def test_delivered_events_are_observed_in_the_latency_histogram(tmp_path: Path) -> None:
    """After events are delivered to two sinks, each sink's latency histogram has one
    observation per event (cumulative buckets, +Inf = count, a positive sum), the counters
    moved under the same label sets, and no arrival time is left behind."""
    emu, receiver = emulator(), Receiver()
    body = seed("outbound.json")["body"]
    async with emu.running(), receiver.running():
        settings = settings_for(emu, tmp_path, **two_sinks(receiver.url, tmp_path))
        async with running_daemon(settings) as daemon, httpx.AsyncClient() as client:
            before = samples((await scrape(client, daemon)).text)
            for i in range(9):
                await emu.publish("message", {**body, "id": f"m{i}"})
            await emu.publish("optout", seed("optout.json")["body"])
            await delivered(daemon, "archive", 10)
            await delivered(daemon, "hook", 10)
            response = await scrape(client, daemon)
            assert daemon.pipeline is not None
            left = dict(daemon.pipeline.delivery.arrivals.waiting)
    text = response.text
    assert exposition_problems(text) == []
    values = samples(text)
    assert set(values) >= set(before)  # nothing that was there went away
    for sink in ("archive", "hook"):
        buckets, total, count = latency(values, sink)
        assert count == 10
        assert buckets[-1] == (float("inf"), 10)
        counts = [n for _, n in buckets]
        assert counts == sorted(counts)  # cumulative
        assert 0 < total < 10 * TIMEOUT
        assert values[key("a2pd_sink_delivered_total", sink=sink)] == 10
    assert values[key("a2pd_events_received_total", kind="outbound")] == 9
    assert values[key("a2pd_events_received_total", kind="optout")] == 1
    assert values[key("a2pd_http_responses_total", sink="hook", **{"class": "2xx"})] >= 1
    assert values[key("a2pd_http_request_duration_seconds_count", sink="hook")] >= 1
    assert values[key("a2pd_journal_size_bytes")] > 0
    assert values[key("a2pd_last_event_age_seconds")] < TIMEOUT
    assert left == {}


async def test_alerts_and_dashboard_query_only_exported_metrics(tmp_path: Path) -> None:
    """Every a2pd_/process_ series an alert rule or a dashboard panel selects is a sample
    name on a running daemon's /metrics (counters with _total, histograms with
    _bucket/_sum/_count), and docs/metrics.md describes every a2pd family."""
    emu, receiver = emulator(), Receiver()
    async with emu.running(), receiver.running():
        settings = settings_for(emu, tmp_path, **two_sinks(receiver.url, tmp_path))
        async with running_daemon(settings) as daemon, httpx.AsyncClient() as client:
            text = (await scrape(client, daemon)).text
    exported = {name for name, _ in samples(text)}
    referenced: dict[str, set[str]] = defaultdict(set)
    alerts = list(alert_expressions())
    panels = list(dashboard_expressions())
    assert len(alerts) >= 10
    assert len(panels) >= 20
    for where, expr in [*alerts, *panels]:
        for name in promql_names(expr):
            referenced[name].add(where)
    missing = {name: sorted(where) for name, where in referenced.items() if name not in exported}
    assert missing == {}
    for needed in ("a2pd_subscribed", "a2pd_sink_backlog_events", "a2pd_dead_letters_total",
                   "a2pd_journal_limit_events", "a2pd_last_event_age_seconds",
                   "a2pd_backfill_refused", "a2pd_backfill_errors_total"):
        assert any(needed in promql_names(expr) for _, expr in alerts), needed
    for needed in ("a2pd_events_received_total", "a2pd_sink_delivered_total",
                   "a2pd_sink_backlog_events", "a2pd_delivery_latency_seconds_bucket",
                   "a2pd_dead_letters_total", "a2pd_subscribed", "a2pd_recoveries_total",
                   "a2pd_journal_size_bytes", "process_resident_memory_bytes",
                   "process_cpu_seconds_total"):
        assert any(needed in promql_names(expr) for _, expr in panels), needed
    reference = (ROOT / "docs" / "metrics.md").read_text()
    for family in text_string_to_metric_families(text):
        if family.name.startswith("a2pd_"):
            documented = family.name + ("_total" if family.type == "counter" else "")
            assert f"`{documented}`" in reference, documented


def test_a_removed_sink_keeps_its_counters_and_loses_its_gauges() -> None:
    """After a reload removes sinks, their counter and histogram series stay (those still at
    0 too, and a third-party sink's own counters): only their per-sink gauges go."""
    counters = {"delivered.hook": 4, "produced.kafka": 7}
    configured = {"archive": "file", "hook": "http", "kafka": "kafka"}
    metrics = Metrics(lambda: snapshot_of(counters, configured), dict)
    before = samples(metrics.render().decode())
    del configured["hook"], configured["kafka"]
    after = samples(metrics.render().decode())
    assert exposition_problems(metrics.render().decode()) == []
    gauges = ("a2pd_sink_backlog_events", "a2pd_sink_busy_seconds", "a2pd_sink_ready")
    assert {k for k in before if k not in after} == {
        *(key(name, sink=sink) for name in gauges for sink in ("hook", "kafka")),
        key("a2pd_sink_info", sink="hook", type="http"),
        key("a2pd_sink_info", sink="kafka", type="kafka")}
    assert {k for k in after if k not in before} == set()
    assert after[key("a2pd_sink_delivered_total", sink="hook")] == 4
    assert after[key("a2pd_sink_retries_total", sink="kafka")] == 0
    assert after[key("a2pd_http_responses_total", sink="hook", **{"class": "5xx"})] == 0
    assert after[key("a2pd_sink_plugin_counter_total", sink="kafka", counter="produced")] == 7
    assert key("a2pd_delivery_latency_seconds_count", sink="hook") in after
    assert key("a2pd_sink_backlog_events", sink="archive") in after


# -- the alert rules ---------------------------------------------------------------------------


def test_alert_rules_pass_promtool() -> None:
    """`promtool check rules` accepts the rule file, and `promtool test rules` shows each
    alert firing on the series that should trigger it (and not before)."""
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is needed (Debian: apt-get install prometheus)"
    check = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True,
                           text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout
    unit = subprocess.run([promtool, "test", "rules", "a2pd-alerts.test.yml"],
                          cwd=MONITORING, capture_output=True, text=True, timeout=60,
                          check=False)
    assert unit.returncode == 0, unit.stdout + unit.stderr


def test_every_alert_has_a_severity_and_annotations() -> None:
    """Each rule carries a severity label and summary/description annotations."""
    text = ALERTS.read_text()
    rules = re.split(r"\n\s+- alert: ", text)[1:]
    assert len(rules) >= 10
    for rule in rules:
        name = rule.split("\n", 1)[0]
        assert re.search(r"\n\s+severity: (critical|warning|info)\n", rule), name
        assert "summary:" in rule, name
        assert "description:" in rule, name


# -- the declarations ----------------------------------------------------------------------------

#: how the f-string placeholders of counter names in the code are filled for the check
PLACEHOLDERS = {"name": "archive", "self.name": "archive", "letter.sink": "archive",
                "sink": "archive", "kind": "outbound", "status // 100": "2", "bound": "5"}
#: calls that name a counter (Counters.inc, SessionState.count, the file sink's deferred
#: list): by a constant of a2pd.counts, or an f-string that starts with one
_NAMED = re.compile(r"(?:\.inc|state\.count|_counts\.append)\(\s*"
                    r"(?:counts\.([A-Z_0-9]+)\b|f?\"([^\"]+)\")")
#: the same calls with a variable for the name: each must be one of these known forwarders
_VARIABLE = re.compile(r"(?:\.inc|state\.count|_counts\.append)\(\s*(?!counts\.)"
                       r"([a-z_][\w.]*)\s*[,)]")
FORWARDERS = {("sinks/file.py", "key"), ("session/state.py", "name")}


def counter_names_in_code() -> Iterator[tuple[str, str]]:
    """(file, counter name with its placeholders filled) for every counter the daemon's
    code names (the emulator keeps counters of its own). A name written as a string literal
    rather than through a2pd.counts is yielded as ``literal:<text>``, which never resolves."""
    for path in sorted(SOURCE.rglob("*.py")):
        where = path.relative_to(SOURCE).as_posix()
        if where.startswith("emulator/"):
            continue
        text = path.read_text()
        for constant, literal in _NAMED.findall(text):
            if constant:
                yield where, getattr(counts, constant)
                continue
            if not literal.startswith("{counts."):
                yield where, f"literal:{literal}"
                continue

            def fill(match: re.Match[str], where: str = where) -> str:
                expr = match.group(1)
                if expr.startswith("counts."):
                    return str(getattr(counts, expr.removeprefix("counts.")))
                assert expr in PLACEHOLDERS, f"{where}: add {expr!r} to PLACEHOLDERS"
                return PLACEHOLDERS[expr]
            yield where, re.sub(r"\{([^{}]+)\}", fill, literal)


def test_every_counter_the_code_increments_is_declared() -> None:
    """Every counter name in the daemon's code resolves to a declared family (or is one of
    the few exported another way): an undeclared counter would be missing from /metrics."""
    found = list(counter_names_in_code())
    assert len(found) > 60
    undeclared = sorted({f"{where}: {name}" for where, name in found
                         if resolve(name) is None and not exported_elsewhere(name)})
    assert undeclared == []
    names = {name for _, name in found}
    assert {"received.outbound", "delivered.archive", "dead_letters.archive",
            "http_status_2xx.archive", "recoveries_failed", "backfill_errors"} <= names
    variable = set()
    for path in sorted(SOURCE.rglob("*.py")):
        where = path.relative_to(SOURCE).as_posix()
        if not where.startswith("emulator/"):
            variable |= {(where, arg) for arg in _VARIABLE.findall(path.read_text())}
    assert variable == FORWARDERS


def test_declarations_are_consistent() -> None:
    """Families end in _total with help; a counter's fixed labels are among its family's
    declared values; the resolved label values fit the labels; dead-letter sources in the
    code are declared; the built-in sink types are the sinks package's."""
    for name, family in FAMILIES.items():
        assert name.endswith("_total")
        assert re.fullmatch(r"a2pd_[a-z0-9_]+", name)
        assert len(family.help) > 20, name
        assert len(family.labels) == len(family.domains)
    for counter, (family, fixed) in COUNTERS.items():
        assert FAMILIES[family.name] is family, f"{family.name} declared twice"
        for label, value in fixed:
            domain = family.domains[family.labels.index(label)]
            assert isinstance(domain, tuple), counter
            assert value in domain, counter
    for counter, labels in (("recoveries_failed", ("failed",)),
                            ("http_status_5xx.hook", ("hook", "5xx")),
                            ("http_status_7xx.hook", ("hook", "7xx")),
                            ("received.optin", ("optin",)), ("committed", ()),
                            ("dead_letters.frame", ("frame",)),
                            ("reloads_refused", ("refused",))):
        found = resolve(counter)
        assert found is not None, counter
        assert found[1] == labels, counter
    for undeclared in ("something_new", "something_new.x", "committed.x", "received",
                       "dead_letters", "http_latency_ms_le_5.hook"):
        assert resolve(undeclared) is None, undeclared
    assert exported_elsewhere("dead_letters")
    assert exported_elsewhere("http_latency_ms_le_250.hook")
    assert not exported_elsewhere("something_new")
    assert HTTP_CLASSES == ("1xx", "2xx", "3xx", "4xx", "5xx")
    sources = set()
    for path in SOURCE.rglob("*.py"):
        sources |= set(re.findall(r"queue_dead_letter\(\s*\"([a-z]+)\"", path.read_text()))
    assert sources == set(DEAD_LETTER_SOURCES)
    assert set(sinks._BUILTINS) == BUILTIN_SINK_TYPES
    assert set(names.KINDS) == set(KINDS)


# -- the arrival times behind the latency ---------------------------------------------------------


async def test_latency_is_observed_once_per_sink_and_arrivals_are_bounded(
        tmp_path: Path) -> None:
    """Over a real journal with two sinks: each sink's histogram counts every live event
    once; backfilled events are not observed; a dead-lettered event's arrival is forgotten
    by age; past ARRIVALS_KEPT the oldest arrivals go first."""
    journal = await open_test_journal(tmp_path)
    first, second = CollectingSink("first"), CollectingSink("second")
    stream = sample_events(30)
    second.reject = {stream[7].uuid}
    rebuilt = [sample_event(uuid=f"b-{i}", envelope={"backfilled": True}, id=f"b{i}")
               for i in range(3)]
    pipeline = Pipeline(router_all("first", "second"), {"first": first, "second": second},
                        journal, retry_initial=0.001)
    async with anyio.create_task_group() as tg:
        await tg.start(pipeline.run)
        for event in stream:
            await pipeline.ingest_event(event)
        for event in rebuilt:
            assert not isinstance(event, events.EventError)
            assert events.is_backfilled(event)
            await pipeline.ingest_event(event)
        with anyio.fail_after(TIMEOUT):
            await pipeline.counters.wait_for("delivered.first", 33)
            await pipeline.counters.wait_for("delivered.second", 32)
        await pipeline.close()
    await journal.aclose()
    assert pipeline.delivery_latency["first"].count == 30
    assert pipeline.delivery_latency["second"].count == 29
    # the refused event still waits for its second confirmation, until it is too old; the
    # sink passed it (it confirmed later events), so its wait is not observed
    assert dict(pipeline.delivery.arrivals.waiting) == \
        {stream[7].uuid: ("second",)}
    now = time.monotonic()
    pipeline.forget_arrivals(now)
    assert list(pipeline.delivery.arrivals.waiting) == [stream[7].uuid]
    pipeline.forget_arrivals(now + ARRIVAL_KEEP + 1)
    assert len(pipeline.delivery.arrivals) == 0
    assert pipeline.delivery_latency["second"].count == 29
    for i in range(ARRIVALS_KEPT + 5):
        pipeline.delivery.arrivals.arrived(f"u{i}", now, ("first",))
    pipeline.forget_arrivals(now)
    assert len(pipeline.delivery.arrivals) == ARRIVALS_KEPT
    assert next(iter(pipeline.delivery.arrivals.waiting)) == "u5"
    # "first" has no row left to pass: nothing it waits for was forgotten
    assert pipeline.counters["latency_unobserved.first"] == 0


async def test_a_sink_behind_longer_than_arrival_keep_shows_in_the_inf_bucket(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sink stuck on a batch: arrivals forgotten for room count as
    latency_unobserved.<sink>, those forgotten for age (a clock ARRIVAL_KEEP ahead) as one
    observation each above every bucket, with their age in _sum; its late delivery is not
    observed again. For a sink that kept up, nothing forgotten counts: an event it refused
    (dead-lettered), a duplicate of one it delivered."""
    journal = await open_test_journal(tmp_path)
    fast, stuck = CollectingSink("fast"), CollectingSink("stuck")
    stream = sample_events(5)
    fast.reject = {stream[2].uuid}
    stuck.stuck = {stream[0].uuid}
    optout = sample_event("optout.json", uuid="optout-1")
    assert not isinstance(optout, events.EventError)
    # outbound events to both sinks; the opt-out to "fast" only
    router = Router((Route("outbound", ("fast", "stuck"), {"kind": frozenset({"outbound"})}),),
                    ("fast",))
    pipeline = Pipeline(router, {"fast": fast, "stuck": stuck}, journal,
                        retry_initial=0.001, retry_max=0.05)
    async with anyio.create_task_group() as tg:
        await tg.start(pipeline.run)
        await pipeline.ingest_event(optout)
        for event in stream:
            await pipeline.ingest_event(event)
        with anyio.fail_after(TIMEOUT):
            await pipeline.counters.wait_for("delivered.fast", 5)  # all but the refused one
            await pipeline.counters.wait_for("retries.stuck", 1)
            await pipeline.ingest_event(optout)  # a duplicate: the journal drops it
            await pipeline.journal.flush()
            await pipeline.counters.wait_for("duplicates", 1)
            while pipeline.backlog()["fast"]:
                await anyio.sleep(0.01)  # a poll interval, bounded by fail_after
        assert stuck.got == []
        waiting = dict(pipeline.delivery.arrivals.waiting)
        assert waiting == {**{e.uuid: ("stuck",) for e in stream},
                           stream[2].uuid: ("fast", "stuck"), "optout-1": ("fast",)}
        now = time.monotonic()
        # for room: the three oldest go (the refused one among them)
        monkeypatch.setattr(arrivals_module, "ARRIVALS_KEPT", 3)
        pipeline.forget_arrivals(now)
        monkeypatch.undo()
        assert list(pipeline.delivery.arrivals.waiting) == [stream[3].uuid, stream[4].uuid,
                                                          "optout-1"]
        assert pipeline.counters["latency_unobserved.stuck"] == 3
        assert pipeline.counters["latency_unobserved.fast"] == 0
        # for age: the two left that "stuck" waits for are observed, above every bucket
        pipeline.forget_arrivals(now + ARRIVAL_KEEP + 1)
        assert len(pipeline.delivery.arrivals) == 0
        late = pipeline.delivery_latency["stuck"]
        assert late.count == 2
        assert late.counts[-1] == 2  # the +Inf bucket (counts are per bucket)
        assert late.sum >= 2 * ARRIVAL_KEEP
        assert pipeline.delivery_latency["fast"].count == 5  # the opt-out once, 4 outbound
        assert pipeline.delivery_latency["fast"].counts[-1] == 0
        stuck.stuck.clear()
        with anyio.fail_after(TIMEOUT):
            await pipeline.counters.wait_for("delivered.stuck", 5)
        await pipeline.close()
    await journal.aclose()
    assert stuck.got == [e.uuid for e in stream]
    assert pipeline.delivery_latency["stuck"].count == 2
    assert pipeline.counters["latency_unobserved.stuck"] == 3
