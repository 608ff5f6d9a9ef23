"""The Redis Streams sink against a real redis-server on loopback: entries, exactly once per
uuid, order, trimming, NOSCRIPT, error classes, dead letters, TLS, config and secrets."""

from __future__ import annotations

import io
import json
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from redis import exceptions as redis_errors

from a2pd import config, events
from a2pd.errors import ConfigError, SinkError
from a2pd.logging import configure
from a2pd.pipeline import Pipeline
from a2pd.sinks import sink_class
from a2pd.sinks.redis import RedisOptions, RedisSink, error_code
from a2pd.vocab import redact_url
from tests.harness import (
    TIMEOUT,
    open_test_journal,
    router_all,
    sample_event,
    sample_events,
    sink_config,
)
from tests.redis_server import RedisServer, make_sink, redis_server


async def entries(server: RedisServer, stream: str) -> list[dict[str, str]]:
    client = server.client()
    try:
        return [fields for _id, fields in await client.xrange(stream)]
    finally:
        await client.aclose()


async def test_every_uuid_lands_once_however_often_a_batch_is_resent(tmp_path: Path) -> None:
    """Resending a batch, or overlapping batches, adds no entry: one per uuid, in order."""
    stream = sample_events(50)
    async with redis_server(tmp_path) as server:
        sink = make_sink(server)
        try:
            await sink.send(stream[:30])
            await sink.send(stream[:30])
            await sink.send(stream[20:])
        finally:
            await sink.aclose()
        got = await entries(server, "a2p:outbound")
    assert [e["uuid"] for e in got] == [e.uuid for e in stream]
    assert (sink.written, sink.duplicates) == (50, 40)
    first = got[0]
    assert set(first) == {"uuid", "kind", "time", "json"}
    assert first["kind"] == "outbound"
    assert first["time"] == "2021-05-26T04:16:08.244Z"
    decoded = events.from_record(json.loads(first["json"]))
    assert decoded == stream[0]


async def test_stream_names_come_from_the_template_and_keep_batch_order(tmp_path: Path) -> None:
    """Each event goes to the stream its template names; each stream keeps the batch order."""
    mixed = [*sample_events(3, uuid="o{:05d}".format),
             *sample_events(2, "inbound.json", uuid="i{:05d}".format),
             *sample_events(2, "batch.json", uuid="b{:05d}".format)]
    order = [mixed[i] for i in (0, 3, 5, 1, 4, 6, 2)]
    async with redis_server(tmp_path) as server:
        sink = make_sink(server, stream="t:{kind}:{ownerId}", dedup_prefix="t:seen:")
        try:
            await sink.send(order)
        finally:
            await sink.aclose()
        client = server.client()
        try:
            keys = sorted(await client.keys("t:*:*"))
            seen_keys = await client.keys("t:seen:*")
            ttl = await client.ttl(seen_keys[0])
        finally:
            await client.aclose()
        owner = mixed[0].owner_id
        outbound = await entries(server, f"t:outbound:{owner}")
    assert [e["uuid"] for e in outbound] == ["o00000", "o00001", "o00002"]
    assert len([k for k in keys if not k.startswith("t:seen:")]) == 3
    assert len(seen_keys) == 7
    assert 86000 < ttl <= 86400


async def test_max_len_trims_exactly_or_approximately(tmp_path: Path) -> None:
    """max_len keeps exactly that many entries with trim = exact, about that many otherwise."""
    stream = sample_events(1000)
    async with redis_server(tmp_path) as server:
        exact = make_sink(server, stream="exact", max_len=100, trim="exact")
        rough = make_sink(server, stream="rough", max_len=100)
        try:
            for i in range(0, 1000, 250):
                await exact.send(stream[i:i + 250])
                await rough.send(stream[i:i + 250])
        finally:
            await exact.aclose()
            await rough.aclose()
        client = server.client()
        try:
            exact_len, rough_len = await client.xlen("exact"), await client.xlen("rough")
        finally:
            await client.aclose()
        kept = await entries(server, "exact")
    assert exact_len == 100
    assert [e["uuid"] for e in kept] == [e.uuid for e in stream[-100:]]
    # approximate trimming drops whole radix-tree nodes (100 entries each by default)
    assert 100 <= rough_len <= 300


async def test_max_age_trims_entries_older_than_it(tmp_path: Path) -> None:
    """max_age drops entries whose id (time) is older than now minus max_age (MINID)."""
    async with redis_server(tmp_path) as server:
        client = server.client()
        try:
            for i in range(1, 6):
                await client.xadd("a2p:outbound", {"old": str(i)}, id=f"{i}-0")
            sink = make_sink(server, max_age="1h", trim="exact")
            try:
                await sink.send(sample_events(3))
            finally:
                await sink.aclose()
            got = await entries(server, "a2p:outbound")
        finally:
            await client.aclose()
    assert [e.get("uuid") for e in got] == ["u00000", "u00001", "u00002"]


async def test_a_flushed_script_cache_is_reloaded_and_the_batch_goes_through(
        tmp_path: Path) -> None:
    """NOSCRIPT (a restarted or flushed server) loads the script again, no failure seen."""
    stream = sample_events(20)
    async with redis_server(tmp_path) as server:
        sink = make_sink(server)
        client = server.client()
        try:
            await sink.send(stream[:10])
            await client.script_flush()
            await sink.send(stream[5:])
        finally:
            await client.aclose()
            await sink.aclose()
        got = await entries(server, "a2p:outbound")
    assert [e["uuid"] for e in got] == [e.uuid for e in stream]
    assert sink.script_loads == 2


async def test_a_refused_event_stops_the_rest_of_its_pipeline(tmp_path: Path) -> None:
    """WRONGTYPE on the 2nd event is permanent, and the 3rd is not written ahead of it."""
    batch = [sample_event(uuid="a00000"), sample_event("batch.json", uuid="b00000"),
             sample_event(uuid="c00000")]
    async with redis_server(tmp_path) as server:
        client = server.client()
        await client.set("a2p:batch", "not a stream")
        sink = make_sink(server)
        try:
            with pytest.raises(SinkError) as caught:
                await sink.send(batch)
        finally:
            await sink.aclose()
            await client.aclose()
        got = await entries(server, "a2p:outbound")
    assert caught.value.permanent
    assert "WRONGTYPE" in caught.value.reason
    assert "a2p:batch" in caught.value.reason
    assert [e["uuid"] for e in got] == ["a00000"]


async def test_wrongtype_goes_to_the_dead_letters_and_the_rest_flows_in_order(
        tmp_path: Path) -> None:
    """Through the pipeline: only the events for the broken stream are dead-lettered; the
    others arrive once each, in order, after being narrowed down one by one."""
    outbound = sample_events(30, uuid="o{:05d}".format)
    batches = sample_events(3, "batch.json", uuid="b{:05d}".format)
    stream = [*outbound[:10], batches[0], *outbound[10:20], batches[1], batches[2],
              *outbound[20:]]
    journal = await open_test_journal(tmp_path / "journal.db")
    async with redis_server(tmp_path / "redis") as server:
        client = server.client()
        await client.set("a2p:batch", "not a stream")
        sink = make_sink(server)
        pipeline = Pipeline(router_all("r"), {"r": sink}, journal,
                            batch_max=64, retry_initial=0.001, retry_max=0.01)
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(pipeline.run)
                for event in stream:
                    await pipeline.ingest_event(event)
                with anyio.fail_after(TIMEOUT):
                    await pipeline.counters.wait_for("delivered.r", 30)
                    await pipeline.counters.wait_for("dead_letters", 3)
                await pipeline.close()
            letters = await journal.letters.entries("r")
        finally:
            await sink.aclose()
            await client.aclose()
            await journal.aclose()
        got = await entries(server, "a2p:outbound")
    assert [e["uuid"] for e in got] == [e.uuid for e in outbound]
    assert sorted(letter.uuid or "" for letter in letters) == [e.uuid for e in batches]
    assert all("WRONGTYPE" in letter.reason for letter in letters)


async def test_outages_oom_and_failover_are_transient(tmp_path: Path) -> None:
    """A stopped server, OOM and READONLY (a failover) are retried, never dead-lettered;
    once Redis is back the batch lands once."""
    stream = sample_events(10)
    async with redis_server(tmp_path) as server:
        sink = make_sink(server, connect_timeout=1, timeout=2)
        client = server.client()
        try:
            await sink.send(stream[:2])
            await client.config_set("maxmemory", "1")
            with pytest.raises(SinkError) as oom:
                await sink.send(stream)
            await client.config_set("maxmemory", "0")
            await client.replicaof("127.0.0.1", str(server.port))
            with pytest.raises(SinkError) as readonly:
                await sink.send(stream)
            await client.replicaof("NO", "ONE")
            await client.aclose()
            server.kill()
            with pytest.raises(SinkError) as down:
                await sink.send(stream)
            await server.restart()
            await sink.send(stream)
        finally:
            await client.aclose()
            await sink.aclose()
        got = await entries(server, "a2p:outbound")
    for failure, word in ((oom, "OOM"), (readonly, "READONLY"), (down, "unreachable")):
        assert not failure.value.permanent, failure.value.reason
        assert word in failure.value.reason
    # no appendonly: the restart emptied the server, so everything is written again once
    assert [e["uuid"] for e in got] == [e.uuid for e in stream]


async def test_a_server_busy_with_a_long_script_is_transient(tmp_path: Path) -> None:
    """BUSY (another client's script running too long) is retried; once the script is
    killed the batch lands."""
    stream = sample_events(5)
    async with redis_server(tmp_path) as server:
        sink = make_sink(server)
        admin = server.client()
        busy_client = server.client(socket_timeout=TIMEOUT)
        try:
            await sink.send(stream[:1])
            await admin.config_set("busy-reply-threshold", "10")
            async with anyio.create_task_group() as tg:

                async def run_forever() -> None:
                    with pytest.raises(redis_errors.ResponseError):
                        await busy_client.eval("while true do end", 0)

                tg.start_soon(run_forever)
                with anyio.fail_after(TIMEOUT):
                    while True:  # bounded poll until the server answers BUSY
                        try:
                            await admin.ping()
                        except redis_errors.ResponseError as exc:
                            refusal = error_code(exc)
                            break
                        await anyio.sleep(0.01)
                with pytest.raises(SinkError) as busy:
                    await sink.send(stream)
                await admin.script_kill()
            await sink.send(stream)
        finally:
            await busy_client.aclose()
            await admin.aclose()
            await sink.aclose()
        got = await entries(server, "a2p:outbound")
    assert refusal == "BUSY"
    assert not busy.value.permanent
    assert "BUSY" in busy.value.reason
    assert [e["uuid"] for e in got] == [e.uuid for e in stream]


def test_error_codes_decide_transient_or_permanent() -> None:
    """Redis error codes map to the retry decision, whichever way redis-py spells them."""
    assert error_code(redis_errors.ResponseError("WRONGTYPE Operation against a key")) \
        == "WRONGTYPE"
    assert error_code(redis_errors.ResponseError("BUSY Redis is busy running a script")) \
        == "BUSY"
    assert error_code(redis_errors.ReadOnlyError("You can't write against a replica.")) \
        == "READONLY"
    assert error_code(redis_errors.BusyLoadingError("Redis is loading")) == "LOADING"
    assert error_code(redis_errors.ResponseError("unknown thing")) == "ERR"


async def test_acl_user_and_password_from_env_and_files(tmp_path: Path) -> None:
    """The ACL user and password come from the environment, a file or a systemd credential;
    wrong credentials are a transient failure whose reason names no secret."""
    password = "pw-" + secrets.token_hex(12)
    wrong = "wrong-" + secrets.token_hex(12)
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "cache_password").write_text(password + "\n")
    (tmp_path / "pw").write_text(password)
    async with redis_server(tmp_path / "redis") as server:
        admin = server.client()
        await admin.acl_setuser("alice", enabled=True, passwords=[f"+{password}"],
                                keys=["a2p:*"], commands=["+@all"])
        await admin.aclose()
        stream = sample_events(3)
        sinks = [
            make_sink(server, env={"A2PD_REDIS_USERNAME": "alice",
                                   "A2PD_REDIS_PASSWORD": password}),
            make_sink(server, username="alice", password_file=str(tmp_path / "pw")),
            make_sink(server, username="alice", credential_name="cache",
                      env={"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")}),
            make_sink(server, url=f"redis://alice:{password}@127.0.0.1:{server.port}/0"),
        ]
        bad = make_sink(server, env={"A2PD_REDIS_USERNAME": "alice",
                                     "A2PD_REDIS_PASSWORD": wrong})
        try:
            for sink in sinks:
                await sink.send(stream)
            with pytest.raises(SinkError) as refused:
                await bad.send(stream)
        finally:
            for sink in [*sinks, bad]:
                await sink.aclose()
        alice = server.client(username="alice", password=password)
        try:
            assert await alice.xlen("a2p:outbound") == 3
        finally:
            await alice.aclose()
    assert [s.written for s in sinks] == [3, 0, 0, 0]
    assert not refused.value.permanent
    assert wrong not in refused.value.reason
    assert password not in refused.value.reason


async def test_no_secret_in_logs_errors_reprs_or_the_journal(tmp_path: Path) -> None:
    """With credentials in the URL and a wrong password, nothing a2pd prints or writes
    carries them: log lines, retry reasons, reprs, config errors, the journal file."""
    password = "pw-" + secrets.token_hex(12)
    url_password = "urlpw-" + secrets.token_hex(12)
    logs = io.StringIO()
    configure(level="debug", fmt="json", stream=logs)
    journal = await open_test_journal(tmp_path / "journal.db")
    async with redis_server(tmp_path / "redis") as server:
        admin = server.client()
        await admin.acl_setuser("alice", enabled=True, passwords=[f"+{password}"],
                                keys=["*"], commands=["+@all"])
        url = f"redis://alice:{url_password}@127.0.0.1:{server.port}/0"
        sink = make_sink(server, url=url)
        pipeline = Pipeline(router_all("r"), {"r": sink}, journal,
                            retry_initial=0.001, retry_max=0.01, max_attempts=3)
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(pipeline.run)
                for event in sample_events(2):
                    await pipeline.ingest_event(event)
                with anyio.fail_after(TIMEOUT):
                    await pipeline.counters.wait_for("dead_letters", 1)
                # the operator fixes the password: the sink is retried and delivers
                await admin.acl_setuser("alice", enabled=True, passwords=[f"+{url_password}"])
                await journal.letters.replay(None, "r")
                with anyio.fail_after(TIMEOUT):
                    await pipeline.counters.wait_for("delivered.r", 2)
                await pipeline.close()
            letters = await journal.letters.entries("r")
        finally:
            await sink.aclose()
            await admin.aclose()
            await journal.aclose()
        with pytest.raises(ConfigError) as bad_config:
            config.loads(config_text(f"url = 'redis://alice:{url_password}@127.0.0.1:x/0'"),
                         env={})
    configure(level="info", fmt="json")
    text = logs.getvalue()
    assert '"event": "sink_retry"' in text or '"event": "sink_gave_up"' in text
    assert "redis_script_loaded" in text
    written = [text, repr(sink), repr(sink.options), str(bad_config.value),
               *(letter.reason for letter in letters)]
    for blob in written:
        assert url_password not in blob, blob
        assert password not in blob, blob
    assert f"redis://127.0.0.1:{server.port}/0" in text
    for path in tmp_path.glob("journal.db*"):
        assert url_password.encode() not in path.read_bytes()
    assert redact_url("rediss://u:p@[::1]:6380/2") == "rediss://[::1]:6380/2"


def config_text(sink_lines: str) -> str:
    """A config (only parsed) whose one sink ``cache`` is a Redis sink with these lines."""
    return sink_config("cache", f'type = "redis"\n{sink_lines}')


@pytest.mark.parametrize(("lines", "key", "words"), [
    ("bogus = 1", "sinks.cache.bogus", "unknown key"),
    ("url = 'http://127.0.0.1:6379'", "sinks.cache.url", "redis:// or rediss://"),
    ("url = 'redis://127.0.0.1:6379/0?password=x'", "sinks.cache.url", "no query"),
    ("stream = 'a2p:{nope}'", "sinks.cache.stream", "unknown field"),
    ("max_len = -1", "sinks.cache.max_len", "greater than or equal"),
    ("dedup_ttl = '10s'", "sinks.cache.dedup_ttl", "at least 60s"),
    ("max_len = 10\nmax_age = '1d'", "sinks.cache", "not both"),
    ("tls_ca_file = '/etc/ca.pem'", "sinks.cache", "rediss://"),
    ("password_file = '/nonexistent/pw'", "sinks.cache", "cannot read"),
    ("password = 'x1234567'\npassword_file = '/x'", "sinks.cache", "not both"),
    ("trim = 'sometimes'", "sinks.cache.trim", "'approximate' or 'exact'"),
])
def test_bad_options_are_config_errors_with_their_key(lines: str, key: str,
                                                      words: str) -> None:
    """Every bad option is a ConfigError naming its key path (exit 78)."""
    with pytest.raises(ConfigError) as caught:
        config.loads(config_text(lines), env={})
    assert caught.value.exit_code == 78
    [problem] = caught.value.problems
    assert problem.key == key
    assert words in problem.reason


def test_defaults_and_registry() -> None:
    """type = "redis" is a built-in; the defaults are documented ones."""
    settings = config.loads(config_text(""), env={"A2PD_REDIS_PASSWORD": "from-env-123"})
    options = settings.sinks["cache"].options
    assert isinstance(options, RedisOptions)
    assert sink_class("redis") is RedisSink
    assert (options.url, options.stream, options.dedup_prefix) == (
        "redis://127.0.0.1:6379/0", "a2p:{kind}", "a2p:seen:")
    assert options.dedup_ttl == 86400.0
    assert options.resolved_password is not None
    assert options.resolved_password.get_secret_value() == "from-env-123"
    assert options.resolved_username is None


def make_certs(directory: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1, made with the openssl command."""
    directory.mkdir()
    files = {name: directory / name for name in ("ca.key", "ca.crt", "server.key",
                                                 "server.csr", "server.crt", "ext.cnf")}
    files["ext.cnf"].write_text("subjectAltName = IP:127.0.0.1\n")

    openssl = shutil.which("openssl")
    assert openssl is not None, "the openssl command is needed to make test certificates"

    def run(*argv: str) -> None:
        subprocess.run([openssl, *argv], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(files["ca.key"]), "-out", str(files["ca.crt"]), "-days", "2",
        "-subj", "/CN=a2pd test CA")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(files["server.key"]), "-out", str(files["server.csr"]),
        "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", str(files["server.csr"]), "-CA", str(files["ca.crt"]),
        "-CAkey", str(files["ca.key"]), "-CAcreateserial", "-out", str(files["server.crt"]),
        "-days", "2", "-extfile", str(files["ext.cnf"]))
    return files


async def test_rediss_url_speaks_tls_and_checks_the_certificate(tmp_path: Path) -> None:
    """rediss:// with the CA file delivers over TLS; without the CA the certificate is
    refused (a transient failure: the operator can fix it)."""
    certs = make_certs(tmp_path / "tls")
    tls = {"ca": certs["ca.crt"], "cert": certs["server.crt"], "key": certs["server.key"]}
    async with redis_server(tmp_path / "redis", tls=tls) as server:
        url = server.url
        assert url.startswith("rediss://")
        good = make_sink(server, url=url, tls_ca_file=str(certs["ca.crt"]))
        untrusted = make_sink(server, url=url, connect_timeout=2)
        try:
            await good.send(sample_events(3))
            with pytest.raises(SinkError) as refused:
                await untrusted.send(sample_events(3))
        finally:
            await good.aclose()
            await untrusted.aclose()
    assert good.written == 3
    assert not refused.value.permanent
    assert "unreachable" in refused.value.reason


def test_example_config_documents_every_option() -> None:
    """Uncommented, the redis block of config/example.toml is valid and names every option."""
    root = Path(__file__).parent.parent
    text = (root / "config" / "example.toml").read_text()
    block = text[text.index("# [sinks.streams]"):text.index("# ---- Routes")]
    lines = [line[2:] for line in block.splitlines()
             if line.startswith(("# [", "# type", *(f"# {f} " for f in RedisOptions.model_fields)))]
    documented = {line.split("=")[0].strip() for line in lines[2:]}
    assert documented == set(RedisOptions.model_fields)
    # the alternatives (username_file, inline password) exclude the lines above them
    table = "\n".join(line for line in lines[2:] if "# instead of" not in line)
    table = table.replace('"redis://127.0.0.1', '"rediss://127.0.0.1')
    settings = config.loads(config_text(table), env={"A2PD_REDIS_PASSWORD": "from-env-123"})
    options = settings.sinks["cache"].options
    assert isinstance(options, RedisOptions)
    assert options.resolved_username == "a2pd"


def test_validate_command_exits_78_without_echoing_a_url_password(tmp_path: Path) -> None:
    """`a2pd validate` names the bad redis key, exits 78, and never prints the URL."""
    path = tmp_path / "a2pd.toml"
    path.write_text(config_text("url = 'redis://alice:pw-in-the-url-123@127.0.0.1:6379/x'"))
    result = subprocess.run([sys.executable, "-m", "a2pd", "validate", str(path)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 78
    assert "sinks.cache.url" in result.stdout + result.stderr
    assert "pw-in-the-url-123" not in result.stdout + result.stderr
