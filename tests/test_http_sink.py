"""The HTTP sink against a real HTTP server on loopback that fails on command.

Signatures are checked with the ``standardwebhooks`` package (an independent implementation
of the Standard Webhooks verification) and with the README's example receiver.
"""

from __future__ import annotations

import base64
import io
import json
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email.utils import formatdate
from pathlib import Path
from typing import Any

import anyio
import pytest
import trustme
from standardwebhooks.webhooks import Webhook

from a2pd import config
from a2pd import logging as a2pd_logging
from a2pd.errors import ConfigError, SinkError
from a2pd.journal import Journal
from a2pd.pipeline import Pipeline
from a2pd.sinks import SinkContext
from a2pd.sinks.http import HttpOptions, HttpSink
from a2pd.vocab import parse_retry_after, redact_url
from examples.verify_webhook import verify as readme_verify
from tests.harness import (
    TIMEOUT,
    delivered,
    emulator,
    open_test_journal,
    router_all,
    running_daemon,
    sample_events,
    seed,
    seed_kind,
    settings_for,
    sink_config,
)
from tests.http_receiver import DROP, Answer, Receiver, Request, Slow, Stall

SECRET = "whsec_" + base64.b64encode(b"a2pd-test-signing-key-0123456789").decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"the-key-being-rotated-out-000000").decode()


def http_sink(journal: Journal, url: str, env: dict[str, str] | None = None,
              **options: Any) -> HttpSink:
    values = {"url": url, "signing_secrets": [SECRET], "retry_initial": 0.001,
              "retry_max": 0.01, "timeout": 2.0, **options}
    parsed = HttpOptions.model_validate(values, context={"env": env or {}})
    return HttpSink("hook", parsed, SinkContext(Path("."), counters=journal.counters))


def pipeline_for(journal: Journal, sink: HttpSink, batch_max: int = 64) -> Pipeline:
    return Pipeline(router_all("hook"), {"hook": sink}, journal, batch_max=batch_max)


def verified(request: Request, secret: str = SECRET) -> Any:
    """The body of a request whose signature both verifiers accept."""
    Webhook(secret).verify(request.body, request.headers)
    assert readme_verify(secret, request.headers, request.body)
    return request.json()


@asynccontextmanager
async def running_pipeline(journal: Journal, sink: HttpSink, stream: list[Any], *,
                           batch_max: int = 64) -> AsyncIterator[Pipeline]:
    """A pipeline to ``sink`` that has taken ``stream``; closed (everything committed
    delivered) when the block ends, and the sink with it."""
    pipeline = pipeline_for(journal, sink, batch_max)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(pipeline.run)
            for event in stream:
                await pipeline.ingest_event(event)
            yield pipeline
            await pipeline.close()
    finally:
        await sink.aclose()


async def deliver_all(journal: Journal, sink: HttpSink, stream: list[Any], *,
                      batch_max: int = 64) -> Pipeline:
    """Every event of ``stream`` delivered through ``sink`` (closed afterwards)."""
    async with running_pipeline(journal, sink, stream, batch_max=batch_max) as pipeline:
        with anyio.fail_after(TIMEOUT):
            await pipeline.counters.wait_for("delivered.hook", len(stream))
    return pipeline


async def test_every_event_arrives_once_through_every_fault(tmp_path: Path) -> None:
    """500, 503, 502, 429, dropped connections, a timeout and a slow answer: afterwards each
    event was accepted exactly once, in order, and every attempt was signed with the event's
    uuid as webhook-id."""
    receiver = Receiver()
    receiver.script.extend([Answer(500), Answer(503), Answer(429, (("retry-after", "0"),)),
                            DROP, Stall(3.0), Slow(0.05), Answer(502), DROP])
    journal = await open_test_journal(tmp_path)
    stream = sample_events(30)
    async with receiver.running():
        sink = http_sink(journal, receiver.url, timeout=0.5)
        try:
            pipeline = await deliver_all(journal, sink, stream)
        finally:
            await sink.aclose()
    assert [verified(r)["uuid"] for r in receiver.accepted] == [e.uuid for e in stream]
    for request in receiver.requests:
        assert request.headers["webhook-id"] == verified(request)["uuid"]
        assert request.headers["content-type"] == "application/json"
    counters = pipeline.counters
    assert counters["retries.hook"] == 7
    assert counters["http_failures.hook"] == 7
    assert counters["http_errors.hook"] == 3  # two drops and a timeout
    assert counters["http_sent.hook"] == 30
    assert counters["http_latency_ms_count.hook"] == 30 + 4
    await journal.aclose()


async def test_retry_after_is_honoured_and_capped(tmp_path: Path) -> None:
    """Retry-After in seconds and as an HTTP-date delays the next attempt at least that long
    (the sink's own backoff here is milliseconds); an hour-long one is capped (1.2 s)."""
    answers = iter([
        lambda: Answer(429, (("retry-after", "1"),)),
        # an HTTP-date 2 s ahead, to the second: at least 1 s from now
        lambda: Answer(503, (("retry-after", formatdate(time.time() + 2, usegmt=True)),)),
        lambda: Answer(429, (("retry-after", "3600"),)),
    ])
    receiver = Receiver(rule=lambda _request: next(answers, lambda: None)())
    journal = await open_test_journal(tmp_path)
    async with receiver.running():
        sink = http_sink(journal, receiver.url, retry_after_max=1.2)
        await deliver_all(journal, sink, sample_events(1))
    first, second, third, fourth = (r.at for r in receiver.requests)
    assert second - first >= 1.0
    assert third - second >= 1.0
    assert fourth - third >= 1.2  # the cap, not the hour the receiver asked for
    assert len(receiver.accepted) == 1
    await journal.aclose()


def test_basic_credentials_are_masked_as_sent(tmp_path: Path) -> None:
    """A receiver echoing the Authorization header cannot leak the Basic credentials."""
    import anyio.to_thread  # noqa: F401 - the sink is built outside an event loop here

    from a2pd.logging import scrub

    options = HttpOptions.model_validate({"url": "https://example.com/hook", "auth": {
        "type": "basic", "username": "a2pd", "password": "basic-password-123"}})
    HttpSink("hook", options, SinkContext(tmp_path))
    wire = base64.b64encode(b"a2pd:basic-password-123")
    assert scrub(b"echo: Basic " + wire) == b"echo: Basic ***"


def test_urls_in_logs_carry_no_credentials() -> None:
    """User info and query strings (either may hold a credential) never reach a log line."""
    assert redact_url("https://u:pw@hooks.example.com:8443/a2p?token=t") == \
        "https://hooks.example.com:8443/a2p"
    assert redact_url("http://[::1]/x") == "http://[::1]/x"


def test_retry_after_parsing() -> None:
    """Delta-seconds and HTTP-dates give seconds from now; anything else is ignored."""
    now = 1_700_000_000.0
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now) == 30.0
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("\u00b2", now) is None  # a digit to str.isdigit, not a number
    assert parse_retry_after("Mon, 01 Jan 99999 00:00:00 GMT", now) is None
    assert parse_retry_after(None, now) is None


async def test_client_errors_are_dead_lettered_then_replayed(tmp_path: Path) -> None:
    """A 422 dead-letters only that event, with the status and a bounded snippet of the
    answer; the others flow; once the receiver is fixed a replay delivers it."""
    stream = sample_events(10)
    bad = stream[4].uuid
    fixed = False

    def rule(request: Request) -> Answer | None:
        if not fixed and request.json()["uuid"] == bad:
            return Answer(422, body=b'{"error": "unknown field"}' + b"x" * 5000)
        return None

    receiver = Receiver(rule=rule)
    journal = await open_test_journal(tmp_path)
    async with receiver.running():
        sink = http_sink(journal, receiver.url, response_snippet=100)
        async with running_pipeline(journal, sink, stream) as pipeline:
            with anyio.fail_after(TIMEOUT):
                await pipeline.counters.wait_for("delivered.hook", 9)
                await pipeline.counters.wait_for("dead_letters.hook", 1)
            [letter] = await journal.letters.entries("hook")
            assert letter.uuid == bad
            assert letter.reason.startswith(f"{sink.where}: HTTP 422: {{\"error\"")
            assert len(letter.reason) < 200
            assert json.loads(letter.raw)["uuid"] == bad
            fixed = True
            assert await journal.letters.replay(None, "hook") == 1
            with anyio.fail_after(TIMEOUT):
                await pipeline.counters.wait_for("delivered.hook", 10)
    uuids = [verified(r)["uuid"] for r in receiver.accepted]
    assert uuids == [e.uuid for e in stream if e.uuid != bad] + [bad]
    await journal.aclose()


async def test_batches_are_cut_compressed_and_signed(tmp_path: Path) -> None:
    """Batch mode posts JSON arrays of at most batch_max_events, gzip-encoded, signed over
    the uncompressed body, with a stable batch id; every event once, in order."""
    receiver = Receiver()
    receiver.script.append(Answer(500))  # the first batch is retried
    journal = await open_test_journal(tmp_path)
    stream = sample_events(30)
    async with receiver.running():
        sink = http_sink(journal, receiver.url, mode="batch", batch_max_events=8,
                         compression="gzip", linger=0.05, signing_secrets=[SECRET, OLD_SECRET])
        await deliver_all(journal, sink, stream)
    arrays = [verified(r) for r in receiver.accepted]
    assert all(len(a) <= 8 for a in arrays)
    assert [e["uuid"] for a in arrays for e in a] == [e.uuid for e in stream]
    for request in receiver.requests:
        assert request.headers["content-encoding"] == "gzip"
        assert request.headers["webhook-id"].startswith("batch_")
        Webhook(OLD_SECRET).verify(request.body, request.headers)  # both keys sign
    failed, retried = receiver.requests[0], receiver.requests[1]
    assert failed.headers["webhook-id"] == retried.headers["webhook-id"]
    await journal.aclose()


async def test_concurrent_requests_deliver_each_event_once(tmp_path: Path) -> None:
    """With concurrency 4 and failures mixed in, each event is accepted exactly once: a
    retried batch skips the events the receiver already took."""
    failures = iter(range(10**6))

    def rule(request: Request) -> Answer | None:
        return Answer(503) if next(failures) % 5 == 3 else None

    receiver = Receiver(rule=rule)
    journal = await open_test_journal(tmp_path)
    stream = sample_events(80)
    async with receiver.running():
        sink = http_sink(journal, receiver.url, concurrency=4)
        await deliver_all(journal, sink, stream, batch_max=20)
    uuids = [verified(r)["uuid"] for r in receiver.accepted]
    assert sorted(uuids) == sorted(e.uuid for e in stream)
    assert len(uuids) == len(set(uuids))
    await journal.aclose()


@pytest.mark.parametrize("location", ["/found", "http://elsewhere.invalid/hook"])
async def test_only_same_origin_307_308_redirects_are_followed(tmp_path: Path,
                                                               location: str) -> None:
    """Even with follow_redirects, a 302 (which would turn the POST into a body-less GET)
    and a redirect to another origin (which would carry the secrets there) are dead
    letters, never "delivered"."""

    def rule(request: Request) -> Answer | None:
        if request.target == "/hook":
            return Answer(302 if location == "/found" else 307, (("location", location),))
        return None

    receiver = Receiver(rule=rule)
    journal = await open_test_journal(tmp_path)
    async with receiver.running():
        sink = http_sink(journal, receiver.url, follow_redirects=True,
                         secret_headers={"X-Key": "redirect-secret-key"})
        async with running_pipeline(journal, sink, sample_events(1)) as pipeline:
            with anyio.fail_after(TIMEOUT):
                await pipeline.counters.wait_for("dead_letters.hook", 1)
    assert [r.target for r in receiver.requests] == ["/hook"]
    assert not receiver.accepted
    [letter] = await journal.letters.entries("hook")
    assert "only 307/308 to the same origin" in letter.reason
    assert pipeline.counters["delivered.hook"] == 0
    await journal.aclose()


async def test_redirects_are_not_followed_unless_configured(tmp_path: Path) -> None:
    """A 307 is a dead letter naming the redirect; with follow_redirects it is delivered to
    the new location (a 307 keeps the method and body)."""

    def rule(request: Request) -> Answer | None:
        if request.target == "/hook":
            return Answer(307, (("location", "/moved"),))
        return None

    for follow in (False, True):
        receiver = Receiver(rule=rule)
        journal = await open_test_journal(tmp_path / str(follow))
        async with receiver.running():
            sink = http_sink(journal, receiver.url, follow_redirects=follow)
            async with running_pipeline(journal, sink, sample_events(1)) as pipeline:
                with anyio.fail_after(TIMEOUT):
                    await pipeline.counters.wait_for(
                        "delivered.hook" if follow else "dead_letters.hook", 1)
        if follow:
            [request] = receiver.accepted
            assert request.target == "/moved"
            verified(request)
        else:
            assert not receiver.accepted
            [letter] = await journal.letters.entries("hook")
            assert "HTTP 307 redirect to" in letter.reason
            assert "/moved" in letter.reason
        await journal.aclose()


async def test_tls_with_a_private_ca_and_a_client_certificate(tmp_path: Path) -> None:
    """``ca_file`` trusts a private CA and ``client_cert``/``client_key`` authenticate the
    sink to a receiver that requires it; without the CA the certificate is refused and the
    failure is retried, not dead-lettered."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    ca.configure_trust(server_context)
    server_context.verify_mode = ssl.CERT_REQUIRED
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    client = ca.issue_cert("a2pd-client")
    cert_file, key_file = tmp_path / "client.pem", tmp_path / "client.key"
    client.cert_chain_pems[0].write_to_path(str(cert_file))
    client.private_key_pem.write_to_path(str(key_file))

    receiver = Receiver(ssl_context=server_context)
    journal = await open_test_journal(tmp_path)
    stream = sample_events(3)
    async with receiver.running():
        untrusting = http_sink(journal, receiver.url)
        try:
            with pytest.raises(SinkError) as info:
                await untrusting.send(stream[:1])
            assert not info.value.permanent
            assert "certificate" in info.value.reason.lower() or "ssl" in info.value.reason.lower()
        finally:
            await untrusting.aclose()
        sink = http_sink(journal, receiver.url, ca_file=str(ca_file),
                         client_cert=str(cert_file), client_key=str(key_file))
        await deliver_all(journal, sink, stream)
    assert [verified(r)["uuid"] for r in receiver.accepted] == [e.uuid for e in stream]
    assert all(r.tls_client_cert for r in receiver.accepted)
    await journal.aclose()


async def test_credentials_come_from_env_and_files_and_never_leak(tmp_path: Path) -> None:
    """A bearer token from the environment and a header from a file reach the receiver; none
    of the secrets appears in the log, in a dead letter or in an error, even when the
    receiver echoes them back."""
    token, api_key = "tok-0123456789-abcdef", "key-9876543210-fedcba"
    key_file = tmp_path / "api_key"
    key_file.write_text(api_key + "\n")
    env = {"HOOK_TOKEN": token}

    def rule(request: Request) -> Answer | None:
        echoed = f"bad: {request.headers.get('authorization')} {request.headers.get('x-api-key')}"
        if request.json()["uuid"].endswith("0"):
            return Answer(400, body=echoed.encode())
        return None

    receiver = Receiver(rule=rule)
    receiver.script.append(Answer(500, body=f"down, token was {token}".encode()))
    log = io.StringIO()
    a2pd_logging.configure(level="debug", fmt="json", stream=log)
    journal = await open_test_journal(tmp_path)
    try:
        async with receiver.running():
            url = receiver.url + "?sig=query-secret-000"
            sink = http_sink(journal, url, env, auth={"type": "bearer",
                                                      "token": {"env": "HOOK_TOKEN"}},
                             secret_headers={"X-Api-Key": {"file": str(key_file)}},
                             headers={"X-Source": "a2pd"})
            async with running_pipeline(journal, sink, sample_events(3)) as pipeline:
                with anyio.fail_after(TIMEOUT):
                    await pipeline.counters.wait_for("delivered.hook", 2)
                    await pipeline.counters.wait_for("dead_letters.hook", 1)
        letters = await journal.letters.entries("hook")
    finally:
        a2pd_logging.configure()
        await journal.aclose()
    request = receiver.accepted[0]
    assert request.headers["authorization"] == f"Bearer {token}"
    assert request.headers["x-api-key"] == api_key
    assert request.headers["x-source"] == "a2pd"
    assert request.target == "/hook?sig=query-secret-000"
    written = log.getvalue() + "".join(d.reason + d.raw.decode() for d in letters)
    assert "sink_retry" in written
    assert "HTTP 400" in written
    for secret in (token, api_key, "query-secret-000", SECRET):
        assert secret not in written


@pytest.mark.parametrize(("options", "key", "reason"), [
    ({"url": "ftp://x"}, "url", "http:// or https://"),
    ({"signing_secrets": ["whsec_%%%"]}, "signing_secrets", "Standard Webhooks"),
    ({"auth": {"type": "bearer", "token": {"env": "NOPE"}}}, "auth.bearer.token",
     "$NOPE is not set"),
    ({"secret_headers": {"X-K": {"file": "relative"}}}, "secret_headers.X-K",
     "absolute path"),
    ({"retry_statuses": [700]}, "retry_statuses.0", "not an HTTP status"),
    ({"headers": {"webhook-id": "x"}}, "headers", "set by the sink"),
    ({"timeout": "fast"}, "timeout", ""),
    ({"ca_file": "/nonexistent/ca.pem"}, "ca_file", "not a readable file"),
    ({"retries": 3}, "retries", "unknown key"),
    ({"headers": {"X-Team": "caf\u00e9"}}, "headers", "printable ASCII"),
    ({"secret_headers": {"X-Key": "two\nlines"}}, "secret_headers", "printable ASCII"),
    ({"auth": {"type": "bearer", "token": "tok\r\nX-Evil: 1"}}, "auth.bearer.token",
     "printable ASCII"),
    ({"url": "https://u:p@example.com/", "auth": {"type": "basic", "username": "u",
                                                   "password": "p"}}, "", "either"),
])
def test_bad_options_name_the_key(options: dict[str, Any], key: str, reason: str) -> None:
    """Each mistake is a config problem at sinks.hook.<key>, with a reason, no secret."""
    table = {"type": "http", "url": "https://example.com/hook", **options}
    text = sink_config("hook", "\n".join(f"{k} = {toml_value(v)}" for k, v in table.items()))
    with pytest.raises(ConfigError) as info:
        config.loads(text, env={})
    problems = {p.key: p.reason for p in info.value.problems}
    where = f"sinks.hook.{key}" if key else "sinks.hook"
    assert where in problems, problems
    assert reason in problems[where]


def toml_value(value: Any) -> str:
    """A TOML inline value (strings, numbers, lists, tables)."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}"
                                for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)


async def test_daemon_forwards_every_seed_event_signed(tmp_path: Path) -> None:
    """End to end: the emulator's seed notifications reach a webhook receiver through the
    daemon, each verifiable by the README's receiver code."""
    receiver = Receiver()
    emu = emulator()
    names = ["batch.json", "inbound.json", "outbound.json", "optout.json", "optin.json"]
    async with emu.running(), receiver.running():
        secret_file = tmp_path / "signing"
        secret_file.write_text(SECRET)
        sinks = f"""
[sinks.hook]
type = "http"
url = "{receiver.url}"
signing_secrets = [{{ file = "{secret_file}" }}]
retry_initial = 0.01
"""
        settings = settings_for(emu, tmp_path, sinks=sinks,
                                routes='[default_route]\nsinks = ["hook"]\n')
        async with running_daemon(settings) as daemon:
            for name in names:
                await emu.publish(seed_kind(name), seed(name)["body"])
            await delivered(daemon, "hook", len(names))
    bodies = [verified(r) for r in receiver.accepted]
    assert sorted(b["kind"] for b in bodies) == ["batch", "inbound", "optin", "optout",
                                                 "outbound"]
    assert receiver.counters["connections"] == 1  # one kept-alive connection for all
    assert {b["uuid"] for b in bodies} == {s.uuid for s in emu.sent}
    assert not readme_verify(OLD_SECRET, receiver.accepted[0].headers, receiver.accepted[0].body)
    tampered = receiver.accepted[0].body.replace(b'"uuid"', b'"uuId"')
    assert not readme_verify(SECRET, receiver.accepted[0].headers, tampered)


def test_example_config_http_block_is_valid(tmp_path: Path) -> None:
    """The commented http sink in config/example.toml validates once uncommented (with its
    files and credentials in place), so the documentation cannot drift from the code."""
    text = (Path(__file__).parent.parent / "config" / "example.toml").read_text()
    begin, end = "# --- http sink example begin\n", "# --- http sink example end\n"
    block = text[text.index(begin) + len(begin):text.index(end)]
    uncommented = "\n".join(line.removeprefix("# ") for line in block.splitlines())
    ca = trustme.CA()
    client = ca.issue_cert("a2pd-client")
    paths = {"/etc/a2pd/receiver-ca.pem": ca.cert_pem, "/etc/a2pd/client.pem":
             client.cert_chain_pems[0], "/etc/a2pd/client.key": client.private_key_pem}
    for original, blob in paths.items():
        target = tmp_path / Path(original).name
        blob.write_to_path(str(target))
        uncommented = uncommented.replace(original, str(target))
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "hook_token").write_text("token-from-credential")
    (creds / "webhook_signing_key").write_text(SECRET)
    env = {"A2PD_CLIENT_SECRET": "s", "A2PD_JWT": "j", "HOOK_API_KEY": "k",
           "CREDENTIALS_DIRECTORY": str(creds)}
    text = text.replace(block, uncommented).replace('sinks = ["failures"]',
                                                    'sinks = ["failures", "hook"]')
    settings = config.loads(text, env=env)
    options = settings.sinks["hook"].options
    assert isinstance(options, HttpOptions)
    assert options.auth is not None
    assert options.signing_secrets[0].get_secret_value() == SECRET
    assert options.secret_headers["X-Api-Key"].get_secret_value() == "k"


async def test_giving_up_dead_letters_only_what_the_receiver_never_took(
        tmp_path: Path) -> None:
    """One event of a batch keeps failing until max_attempts: only it and those after it
    go to the dead letters; the ones the receiver accepted are not dead-lettered (a replay
    would send them twice)."""
    stream = sample_events(5)
    bad = stream[3].uuid
    receiver = Receiver(rule=lambda r: Answer(503) if r.json()["uuid"] == bad else None)
    journal = await open_test_journal(tmp_path)
    async with receiver.running():
        sink = http_sink(journal, receiver.url, max_attempts=2)
        async with running_pipeline(journal, sink, stream) as pipeline:
            with anyio.fail_after(TIMEOUT):
                await pipeline.counters.wait_for("dead_letters.hook", 1)
    letters = await journal.letters.entries("hook")
    assert [d.uuid for d in letters] == [stream[3].uuid, stream[4].uuid]
    assert [r.json()["uuid"] for r in receiver.accepted] == [e.uuid for e in stream[:3]]
    await journal.aclose()


async def test_a_reload_replacing_the_sink_does_not_resend_what_arrived(tmp_path: Path) -> None:
    """A batch half-delivered when a reload replaces the sink (same url, other options):
    the new sink sends only what the receiver has not taken yet."""

    stream = sample_events(5)
    failing = {stream[3].uuid}
    receiver = Receiver(rule=lambda r: Answer(503) if r.json()["uuid"] in failing else None)
    journal = await open_test_journal(tmp_path)
    async with receiver.running():
        old = http_sink(journal, receiver.url, retry_initial=0.5, retry_max=0.5)
        new = http_sink(journal, receiver.url, timeout=3.0)
        new.adopt(old)
        async with running_pipeline(journal, old, stream) as pipeline:
            with anyio.fail_after(TIMEOUT):
                await pipeline.counters.wait_for("retries.hook", 1)
            failing.clear()
            new.adopt(old)  # what the app does when it builds the replacement
            retired = await pipeline.reconfigure(router_all("hook"), {"hook": new})
            assert retired == [old]
            with anyio.fail_after(TIMEOUT):
                await pipeline.counters.wait_for("delivered.hook", 5)
        await new.aclose()
    uuids = [r.json()["uuid"] for r in receiver.accepted]
    assert uuids == [e.uuid for e in stream]
    await journal.aclose()
