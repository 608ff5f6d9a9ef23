"""The command line as an operator types it, through the installed ``a2pd`` command: options
in any order, pipes that close early, destructive commands that ask, unknown names refused,
and the demo config's "run the two apart" recipe."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from tests.harness import (
    PLATFORM_TOML,
    TIMEOUT,
    emulator,
    open_test_journal,
    settings_text,
    sink_config,
)

#: the console script pip installed next to this interpreter: what an operator runs
#: ($A2PD_COMMAND: another install's, to run these tests against it)
A2PD = os.environ.get("A2PD_COMMAND") or str(Path(sys.executable).parent / "a2pd")
ROOT = Path(__file__).parent.parent


def a2pd(*args: str, env: dict[str, str] | None = None,
         stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([A2PD, *args], capture_output=True, text=True, timeout=60,
                          check=False, input=stdin, env={**os.environ, **(env or {})})


async def journal_with_letters(directory: Path, count: int) -> None:
    """A journal in ``directory`` with ``count`` dead letters of sink ``archive``."""
    journal = await open_test_journal(directory, commit_interval=0.05, commit_max=100)
    await journal.cursor("archive")
    for i in range(count):
        await journal.letters.add("archive", "refused", json.dumps(
            {"kind": "inbound", "uuid": f"u{i}", "pad": "x" * 200}).encode(), uuid=f"u{i}")
    await journal.aclose()


def test_installed_command_is_the_wheel_not_the_tree() -> None:
    """The suite runs what users install: ``a2pd`` is the console script, and the package it
    imports comes from the installed distribution: site-packages for a wheel, the tree only
    for an editable install (pip's direct_url.json says which). ``.ci/run`` requires the
    wheel ($A2PD_REQUIRE_WHEEL)."""
    assert Path(A2PD).exists()
    found = subprocess.run([sys.executable, "-c", "import a2pd; print(a2pd.__file__)"],
                           capture_output=True, text=True, check=True, cwd="/").stdout
    direct = metadata.distribution("a2pd").read_text("direct_url.json")
    editable = bool(direct and json.loads(direct).get("dir_info", {}).get("editable"))
    if os.environ.get("A2PD_REQUIRE_WHEEL"):
        assert not editable, "CI must test the built wheel, not an editable install"
    if editable:
        assert str(ROOT / "daemon" / "a2pd") in found, found
    else:
        assert "site-packages" in found, found
        assert str(ROOT / "daemon") not in found, found


def test_version_flag_and_command() -> None:
    """``a2pd --version`` and ``a2pd version`` print the same line."""
    flag, word = a2pd("--version"), a2pd("version")
    assert flag.returncode == word.returncode == 0
    assert re.fullmatch(r"a2pd \d+\.\d+\.\d+\S*\n", flag.stdout)
    assert flag.stdout == word.stdout


@pytest.mark.parametrize("command", ["run", "validate", "check", "demo", "emulator", "journal",
                                     "dead-letters", "status", "version"])
def test_every_command_has_help(command: str) -> None:
    """``a2pd COMMAND --help`` shows that command's usage and exits 0."""
    result = a2pd(command, "--help")
    assert result.returncode == 0, result.stderr
    assert f"usage: a2pd {command}" in result.stdout
    assert "Traceback" not in result.stderr


async def test_dead_letter_ids_before_or_after_options(tmp_path: Path) -> None:
    """``show -c FILE 1`` and ``show 1 --state-dir DIR`` both work; ``show`` without an id is
    a usage error that says what is missing."""
    await journal_with_letters(tmp_path, 2)
    config = tmp_path / "a2pd.toml"
    config.write_text(f'[state]\ndirectory = "{tmp_path}"\n[sinks.archive]\ntype = "stdout"\n')
    after = a2pd("dead-letters", "show", "-c", str(config), "1")
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout)["uuid"] == "u0"
    before = a2pd("dead-letters", "show", "2", "--state-dir", str(tmp_path), "--json")
    assert before.returncode == 0, before.stderr
    assert json.loads(before.stdout)["uuid"] == "u1"
    split = a2pd("dead-letters", "show", "1", "--state-dir", str(tmp_path), "2")
    assert split.returncode == 0, split.stderr
    assert split.stdout.count('"uuid"') == 2
    none = a2pd("dead-letters", "show", "--state-dir", str(tmp_path))
    assert none.returncode == 2
    assert "needs one or more ids" in none.stderr
    missing = a2pd("dead-letters", "show", "9", "--state-dir", str(tmp_path))
    assert missing.returncode == 1
    assert "no dead letter with id 9" in missing.stderr


async def test_list_into_a_pipe_that_closes_early(tmp_path: Path) -> None:
    """``a2pd dead-letters list --json | head -c 100``: no traceback when the reader goes."""
    await journal_with_letters(tmp_path, 2000)
    pipeline = (f"'{A2PD}' dead-letters list --json --state-dir '{tmp_path}' | head -c 100"
                " >/dev/null; echo \"status=${PIPESTATUS[0]}\" >&2")
    result = subprocess.run(["/bin/bash", "-c", pipeline], capture_output=True, text=True,
                            timeout=60, check=False)
    assert "Traceback" not in result.stderr, result.stderr
    assert "BrokenPipe" not in result.stderr
    assert "status=141" in result.stderr


async def test_purge_asks_unless_yes(tmp_path: Path) -> None:
    """``purge --all`` deletes nothing without ``--yes`` when it cannot ask (no terminal), and
    says how many would go; ``--yes`` purges."""
    await journal_with_letters(tmp_path, 3)
    state = ["--state-dir", str(tmp_path)]
    refused = a2pd("dead-letters", "purge", "--all", *state, stdin="y\n")
    assert refused.returncode == 1
    assert "3 dead letter(s) would be deleted" in refused.stderr
    assert "--yes" in refused.stderr
    assert len(json.loads(a2pd("dead-letters", "list", "--json", *state).stdout)) == 3
    one = a2pd("dead-letters", "purge", "2", "--yes", *state)
    assert one.returncode == 0, one.stderr
    assert "purged 1" in one.stdout
    done = a2pd("dead-letters", "purge", "--all", "-y", *state)
    assert "purged 2" in done.stdout
    assert json.loads(a2pd("dead-letters", "list", "--json", *state).stdout) == []


async def test_unknown_sink_name_is_an_error(tmp_path: Path) -> None:
    """``--sink nosuch`` fails naming the sinks there are, with a "did you mean"."""
    await journal_with_letters(tmp_path, 1)
    result = a2pd("dead-letters", "list", "--sink", "archiv", "--state-dir", str(tmp_path))
    assert result.returncode == 2
    assert "no sink named 'archiv'" in result.stderr
    assert "did you mean 'archive'" in result.stderr
    ok = a2pd("dead-letters", "list", "--sink", "archive", "--state-dir", str(tmp_path))
    assert ok.returncode == 0, ok.stderr


def test_validate_takes_c_like_every_command(tmp_path: Path) -> None:
    """``validate -c FILE`` works as ``validate FILE`` does; both at once is refused."""
    config = tmp_path / "a2pd.toml"
    text = (ROOT / "config" / "example.toml").read_text()
    config.write_text(text)
    env = {"A2PD_CLIENT_SECRET": "s" * 8, "A2PD_JWT": "j" * 8}
    for args in (["-c", str(config)], [str(config)]):
        result = a2pd("validate", *args, env=env)
        assert result.returncode == 0, result.stderr
        assert "OK" in result.stdout
    both = a2pd("validate", str(config), "-c", str(config))
    assert both.returncode == 2


def test_commands_default_to_the_same_config(tmp_path: Path) -> None:
    """Without ``-c`` every command reads ``$A2PD_CONFIG`` (journal and dead-letters too,
    which used to read ./state)."""
    state = tmp_path / "state"
    config = tmp_path / "a2pd.toml"
    config.write_text(f'[state]\ndirectory = "{state}"\n')
    result = a2pd("journal", "stats", env={"A2PD_CONFIG": str(config)})
    assert result.returncode == 74  # the state directory of $A2PD_CONFIG: no journal yet
    assert str(state) in result.stderr
    unset = {k: v for k, v in os.environ.items() if k != "A2PD_CONFIG"}
    default = subprocess.run([A2PD, "journal", "stats"], capture_output=True, text=True,
                             env=unset, cwd=tmp_path, timeout=60, check=False)
    if not Path("/etc/a2pd/a2pd.toml").exists():
        assert default.returncode == 78
        assert "/etc/a2pd/a2pd.toml" in default.stderr


def test_validate_without_secrets(tmp_path: Path) -> None:
    """``validate --no-secrets`` checks a config whose secrets are not readable here (the
    service's, checked by hand), but still every other key."""
    config = tmp_path / "a2pd.toml"
    text = (ROOT / "config" / "example.toml").read_text()
    config.write_text(text.replace("/etc/a2pd/", str(tmp_path / "unreadable") + "/"))
    env = {k: v for k, v in os.environ.items()
           if k not in ("A2PD_CLIENT_SECRET", "A2PD_JWT", "CREDENTIALS_DIRECTORY")}
    full = subprocess.run([A2PD, "validate", str(config)], capture_output=True, text=True,
                          env=env, timeout=60, check=False)
    assert full.returncode == 78
    assert "platform.client_secret_file" in full.stderr
    lenient = subprocess.run([A2PD, "validate", "--no-secrets", str(config)],
                             capture_output=True, text=True, env=env, timeout=60, check=False)
    assert lenient.returncode == 0, lenient.stderr
    assert "secrets not read" in lenient.stdout
    config.write_text(text.replace('fsync = "interval"', 'fsync = "sometimes"'))
    bad = a2pd("validate", "--no-secrets", str(config))
    assert bad.returncode == 78
    assert "fsync" in bad.stderr


def test_typos_get_did_you_mean(tmp_path: Path) -> None:
    """A misspelt key or sink name is named with the likely intended one."""
    config = tmp_path / "a2pd.toml"
    config.write_text(PLATFORM_TOML + """[sinks.archive]
type = "file"
directory = "/tmp/x"
fsynk = "always"
[sinks.hook]
type = "htp"
[[routes]]
name = "all"
sinks = ["archve"]
""")
    result = a2pd("validate", str(config))
    assert result.returncode == 78
    assert "sinks.archive.fsynk: unknown key (did you mean 'fsync'?)" in result.stderr
    assert "did you mean 'http'?" in result.stderr
    assert "no sink named 'archve' (did you mean 'archive'?)" in result.stderr
    config.write_text(config.read_text().replace("[sinks.archive]",
                                                 "[subscripton]\n[sinks.archive]"))
    section = a2pd("validate", str(config))
    assert "subscripton: unknown key (did you mean 'subscription'?)" in section.stderr


async def read_line(stream: BufferedByteReceiveStream) -> str:
    return (await stream.receive_until(b"\n", 1 << 16)).decode()


async def test_emulator_options_and_the_demo_recipe(tmp_path: Path) -> None:
    """``a2pd emulator --port 0 --traffic`` (the README's form) starts; ``a2pd run -c
    config/demo.toml`` against it (the recipe in demo.toml) logs in with the demo credentials,
    subscribes and delivers the emulator's traffic; both stop cleanly."""
    config = tmp_path / "demo.toml"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"}
    for name in ("A2PD_CLIENT_SECRET", "A2PD_JWT", "CREDENTIALS_DIRECTORY"):
        env.pop(name, None)
    emulator = await anyio.open_process([A2PD, "emulator", "--port", "0", "--traffic",
                                         "--rate", "50"], env=env)
    try:
        assert emulator.stdout is not None
        with anyio.fail_after(TIMEOUT):
            first = await read_line(BufferedByteReceiveStream(emulator.stdout))
        url = re.search(r"http://\S+", first)
        assert url, first
        text = (ROOT / "config" / "demo.toml").read_text()
        config.write_text(text.replace("http://127.0.0.1:8765", url.group(0)))
        daemon = await anyio.open_process([A2PD, "run", "-c", str(config)], env=env,
                                          cwd=tmp_path, stderr=subprocess.DEVNULL)
        try:
            assert daemon.stdout is not None
            with anyio.fail_after(TIMEOUT):
                # the demo config's console sink: one JSON line per event on stdout
                first = json.loads(await read_line(BufferedByteReceiveStream(daemon.stdout)))
            assert first["kind"] in ("batch", "outbound", "inbound", "optout", "optin")
            daemon.send_signal(signal.SIGTERM)
            with anyio.fail_after(TIMEOUT):
                assert await daemon.wait() == 0
        finally:
            if daemon.returncode is None:
                daemon.kill()
            await daemon.aclose()
        emulator.send_signal(signal.SIGINT)
        with anyio.fail_after(TIMEOUT):
            assert await emulator.wait() == 0
    finally:
        if emulator.returncode is None:
            emulator.kill()
        await emulator.aclose()
    assert (tmp_path / "demo-output" / "state" / "journal.db").exists()
    shutil.rmtree(tmp_path / "demo-output")


def test_validate_without_secrets_checks_sink_secret_sources(tmp_path: Path) -> None:
    """``--no-secrets`` leaves an HTTP sink's signing key and a Redis password unread (their
    format is not checked), but still refuses a Redis password given twice."""
    config = tmp_path / "a2pd.toml"
    base = f"""
[platform]
server = "https://platform.ringcentral.com"
client_id = "id"
client_secret_file = "{tmp_path}/nowhere/client_secret"
jwt_file = "{tmp_path}/nowhere/jwt"
[sinks.hook]
type = "http"
url = "https://hooks.example.com/a2p"
signing_secrets = [{{ file = "{tmp_path}/nowhere/key" }}]
auth = {{ type = "bearer", token = {{ credential = "hook_token" }} }}
[sinks.streams]
type = "redis"
url = "redis://127.0.0.1:6379/0"
password_file = "{tmp_path}/nowhere/redis"
[default_route]
sinks = ["hook", "streams"]
"""
    config.write_text(base)
    ok = a2pd("validate", "--no-secrets", str(config))
    assert ok.returncode == 0, ok.stderr
    config.write_text(base.replace('password_file =', 'password = "inline-pw"\npassword_file ='))
    both = a2pd("validate", "--no-secrets", str(config))
    assert both.returncode == 78
    assert "set either password or password_file, not both" in both.stderr


def test_a_huge_secret_file_is_refused_unread(tmp_path: Path) -> None:
    """A sink's secret file over 64 KiB (here /dev/zero) is a config error, not a crash."""
    config = tmp_path / "a2pd.toml"
    config.write_text(sink_config("hook", """type = "http"
url = "https://hooks.example.com/a2p"
auth = { type = "bearer", token = { file = "/dev/zero" } }"""))
    result = a2pd("validate", str(config))
    assert result.returncode == 78, result.stderr
    assert "/dev/zero is larger than 65536 bytes" in result.stderr


async def test_dead_letter_ids_are_checked_before_anything_is_done(tmp_path: Path) -> None:
    """A wrong id is a clear error for every action, and nothing is requeued or purged."""
    await journal_with_letters(tmp_path, 2)
    state = ["--state-dir", str(tmp_path)]
    for action in ("replay", "purge"):
        wrong = a2pd("dead-letters", action, "1", "7", "--yes", *state)
        assert wrong.returncode == 1, wrong.stderr
        assert "no dead letter with id 7" in wrong.stderr
        assert "stopped" not in wrong.stderr
    assert len(json.loads(a2pd("dead-letters", "list", "--json", *state).stdout)) == 2
    negative = a2pd("dead-letters", "replay", "-5", *state)
    assert negative.returncode == 2
    assert "'-5' is not a dead letter id" in negative.stderr


async def test_backfill_dead_letters_are_not_replayed_into_nothing(tmp_path: Path) -> None:
    """A dead letter of the backfill (a record that never reached a sink) is not requeued:
    it would go to no sink and be compacted away unseen; the command says why."""
    journal = await open_test_journal(tmp_path / "journal.db", commit_interval=0.05, commit_max=100)
    await journal.queue_dead_letter("backfill", "bad record", b'{"id": "1"}', uuid="b1")
    await journal.commit()
    await journal.aclose()
    result = a2pd("dead-letters", "replay", "--all", "--state-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "requeued 0" in result.stdout
    assert "1 not requeued" in result.stderr
    stats = json.loads(a2pd("journal", "stats", "--json", "--state-dir", str(tmp_path)).stdout)
    assert stats["events"] == 0
    assert stats["dead_letters"] == {"backfill": 1}


def test_status_with_a_bad_url_is_a_usage_error() -> None:
    """``status --url`` with something that is not an http(s) URL: one line, exit 2."""
    for url in ("notaurl", "http://[::1"):
        result = a2pd("status", "--url", url)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr


async def test_ops_port_in_use_is_a_config_error(tmp_path: Path) -> None:
    """``[ops] listen`` on a port another process holds: exit 78 naming the key, no
    traceback (it used to end as an exception group, exit 1, restarted by systemd)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        emu = emulator()
        async with emu.running():
            config = tmp_path / "a2pd.toml"
            config.write_text(settings_text(emu, tmp_path, ops={"listen": f"127.0.0.1:{port}"}))
            result = await anyio.run_process([A2PD, "run", "-c", str(config)], check=False)
    err = result.stderr.decode()
    assert result.returncode == 78, err
    assert "ops.listen" in err
    assert "Traceback" not in err


def test_demo_never_takes_the_operators_secrets(tmp_path: Path) -> None:
    """``a2pd demo`` logs in to its emulator with the emulator's credentials even when the
    environment holds an operator's real ones."""
    env = {"A2PD_JWT": "an-operators-real-jwt", "A2PD_CLIENT_SECRET": "a-real-secret",
           "CREDENTIALS_DIRECTORY": str(tmp_path / "creds")}
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "jwt").write_text("another-real-jwt")
    result = subprocess.run([A2PD, "demo", "--duration", "2", "--rate", "20"],
                            capture_output=True, text=True, timeout=120, check=False,
                            cwd=tmp_path, env={**os.environ, **env})
    assert result.returncode == 0, result.stderr
    assert "an-operators-real-jwt" not in result.stderr


def test_config_errors_read_without_validator_noise(tmp_path: Path) -> None:
    """A validator's message is shown as written, without pydantic's "Value error, "."""
    config = tmp_path / "a2pd.toml"
    config.write_text(sink_config("hook", """type = "http"
url = "https://hooks.example.com/a2p"
signing_secrets = ["not-a-key"]"""))
    result = a2pd("validate", str(config))
    assert result.returncode == 78
    assert "sinks.hook.signing_secrets: key 0 is not a Standard Webhooks secret" in result.stderr
    assert "Value error" not in result.stderr
