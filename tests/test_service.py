"""The README's "Install as a service", executed as written, and the unit run the way systemd
runs it: as its own dynamic user.

The steps are read from the README's shell block and run one by one with bash, as root (what
``sudo`` gives; it is dropped because this machine has none), with sudo's PATH. Absolute
paths are moved under a scratch root (``/etc/a2pd`` → ``ROOT/etc/a2pd`` and so on) so the
test leaves the machine as it found it; nothing else in a step changes. "Then edit it" is
done the way an operator would: the server URL and the ops port (the emulator's and a free
one); the client id and the secrets are the README's own placeholders, which the emulator
is told to accept.

``systemctl enable --now`` is done by this test from the installed unit file: its
``ExecStartPre=`` and ``ExecStart=`` run under ``setpriv`` as an unprivileged uid from
systemd's dynamic range with no supplementary groups, the unit's ``UMask=`` and
``WorkingDirectory=``; ``StateDirectory=``/``LogsDirectory=`` are created for that uid with
their modes; every ``LoadCredential=`` is copied (by root, as systemd does) into a
credentials directory only that uid can read, named by ``$CREDENTIALS_DIRECTORY``;
``$NOTIFY_SOCKET`` is a real datagram socket this test reads READY=1 and STOPPING=1 from;
``$JOURNAL_STREAM`` names the stream stdout and stderr go to, as journald's does. Not
modelled: the sandbox options (tests/test_systemd.py checks them with systemd-analyze).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx
import pytest

from a2pd.emulator import Emulator, EmulatorConfig
from tests.harness import TIMEOUT, seed, seed_kind, settings_text

REPO = Path(__file__).parent.parent
#: a uid in systemd's DynamicUser= range (61184-65519) that no account uses
DYNAMIC_UID = 61999
#: sudo's secure_path on Debian
SUDO_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: the paths the README and the unit name, moved under the scratch root
MOVED = ("/etc/systemd/system", "/etc/a2pd", "/opt/a2pd", "/usr/local/bin", "/var/lib/a2pd",
         "/var/log/a2pd")
#: the README's placeholders, which the emulator accepts as this app's credentials
CLIENT_ID, CLIENT_SECRET, JWT = "YOUR_CLIENT_ID", "YOUR_CLIENT_SECRET", "YOUR_JWT"
SEEDS = ("batch.json", "inbound.json", "outbound.json", "optout.json")
#: how often a condition seen only through the ops endpoint is asked again
POLL = 0.05
#: installing a2pd into a new venv from source downloads and builds: minutes, not seconds
INSTALL_TIMEOUT = 600


def readme_steps() -> list[str]:
    """The commands of the README's "Install as a service" block, comments removed."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Install as a service"):]
    begin = section.index("```sh\n") + 6
    block = section[begin:section.index("\n```", begin)]
    steps = []
    for line in block.splitlines():
        command = line.split("  #", 1)[0].strip()
        if command:
            steps.append(command)
    return steps


def move(text: str, root: Path) -> str:
    for path in MOVED:
        text = re.sub(rf"(?<![\w/]){re.escape(path)}(?=[/\s'\"]|$)", f"{root}{path}", text,
                      flags=re.MULTILINE)
    return text


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Unit:
    """The [Service] settings of a unit file (a key given twice keeps every value)."""

    service: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> Unit:
        unit, section = cls(), ""
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line
            elif section == "[Service]":
                key, _, value = line.partition("=")
                unit.service.setdefault(key.strip(), []).append(value.strip())
        return unit

    def one(self, key: str) -> str:
        [value] = self.service[key]
        return value

    def commands(self, key: str) -> list[list[str]]:
        return [shlex.split(value.lstrip("-+!@:")) for value in self.service.get(key, [])]


@dataclass
class Service:
    """What systemd prepares for a DynamicUser= service before it runs a command of it."""

    root: Path
    unit: Unit
    env: dict[str, str]
    umask: int
    cwd: Path

    def argv(self, command: list[str]) -> list[str]:
        return ["setpriv", f"--reuid={DYNAMIC_UID}", f"--regid={DYNAMIC_UID}",
                "--clear-groups", "--no-new-privs", "--", *command]


def prepare(root: Path, unit: Unit, notify: Path, journal_stream: str) -> Service:
    uid = DYNAMIC_UID
    assert unit.one("DynamicUser") == "yes"
    state = root / "var/lib" / unit.one("StateDirectory")
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(int(unit.one("StateDirectoryMode"), 8))
    os.chown(state, uid, uid)
    logs = root / "var/log" / unit.one("LogsDirectory")
    logs.mkdir(parents=True, exist_ok=True)
    logs.chmod(int(unit.one("LogsDirectoryMode"), 8))
    os.chown(logs, uid, uid)
    credentials = root / "run/credentials/a2pd.service"
    credentials.mkdir(parents=True)
    for spec in unit.service.get("LoadCredential", []):
        name, _, source = spec.partition(":")
        target = credentials / name
        shutil.copyfile(source, target)  # read by root, like systemd
        target.chmod(0o400)
        os.chown(target, uid, uid)
    credentials.chmod(0o500)
    os.chown(credentials, uid, uid)
    env = {
        "PATH": f"{root}/usr/local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
                "/sbin:/bin",
        "LANG": "C.UTF-8", "HOME": "/", "USER": unit.one("User"), "LOGNAME": unit.one("User"),
        "INVOCATION_ID": "0" * 32,
        "CREDENTIALS_DIRECTORY": str(credentials),
        "STATE_DIRECTORY": str(state), "LOGS_DIRECTORY": str(logs),
        "NOTIFY_SOCKET": str(notify), "JOURNAL_STREAM": journal_stream,
        "WATCHDOG_USEC": str(int(unit.one("WatchdogSec").removesuffix("s")) * 1_000_000),
    }
    return Service(root, unit, env, int(unit.one("UMask"), 8),
                   Path(unit.one("WorkingDirectory")))


class Lines(list[str]):
    """Lines read by a thread; ``wait_for`` blocks (in a worker thread) until one holds a
    string: woken by each new line, never by a timer."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = threading.Condition()

    def add(self, line: str) -> None:
        with self.changed:
            self.append(line)
            self.changed.notify_all()

    async def wait_for(self, needle: str) -> None:
        def wait() -> bool:
            with self.changed:
                return self.changed.wait_for(lambda: any(needle in line for line in self),
                                             TIMEOUT)
        assert await anyio.to_thread.run_sync(wait), f"no line with {needle!r}: {self}"


@contextmanager
def journal_pipe() -> Iterator[tuple[int, str, Lines]]:
    """A pipe standing in for journald's stream: the write end, its ``$JOURNAL_STREAM``
    value, and the lines read from it (by a thread, until the write ends close)."""
    read_fd, write_fd = os.pipe()
    st = os.fstat(write_fd)
    lines = Lines()

    def read() -> None:
        with os.fdopen(read_fd, encoding="utf-8", errors="replace") as stream:
            for line in stream:
                lines.add(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield write_fd, f"{st.st_dev}:{st.st_ino}", lines
    finally:
        os.close(write_fd)
        reader.join(TIMEOUT)


def run_step(command: str, root: Path) -> subprocess.CompletedProcess[str]:
    moved = move(command, root).replace("sudo ", "")
    return subprocess.run(["/bin/bash", "-e", "-o", "pipefail", "-c", moved], cwd=REPO,
                          capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False,
                          env={"PATH": f"{root}/usr/local/bin:{SUDO_PATH}", "LANG": "C.UTF-8",
                               "HOME": os.environ.get("HOME", "/root")})


def edit_config(path: Path, server: str, ops_port: int) -> None:
    """What the operator edits in the installed example config for this account."""
    text = path.read_text()
    text = text.replace('server = "https://platform.ringcentral.com"', f'server = "{server}"')
    text = text.replace('listen = "127.0.0.1:9108"', f'listen = "127.0.0.1:{ops_port}"')
    path.write_text(text)


@pytest.mark.slow
async def test_readme_service_install_runs_as_the_dynamic_user() -> None:
    """Every step of the README's service installation works as written; the unit's daemon,
    as its own unprivileged user, reads its config and credentials, says READY=1, subscribes,
    delivers every event to its files (private to it), logs with journald priorities and
    without secrets or message text, answers ``a2pd status`` for another user, and stops
    with exit 0 on SIGTERM."""
    assert os.geteuid() == 0, "the service test needs root, as the README's sudo steps do"
    assert shutil.which("setpriv"), "setpriv (util-linux) is needed"
    root = Path(tempfile.mkdtemp(prefix="a2pd-service-", dir="/var/tmp"))
    root.chmod(0o755)
    for there in ("opt", "usr/local/bin", "etc/systemd/system", "var/lib", "var/log"):
        (root / there).mkdir(parents=True, mode=0o755)  # what a Debian machine has
    emu = Emulator(EmulatorConfig(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, jwt=JWT))
    try:
        async with emu.running():
            steps = readme_steps()
            start = next(i for i, s in enumerate(steps) if "systemctl" in s and "enable" in s)
            for step in steps[:start]:
                done = await anyio.to_thread.run_sync(run_step, step, root)
                assert done.returncode == 0, f"{step}\n{done.stdout}\n{done.stderr}"
                if "/etc/a2pd/a2pd.toml" in step and step.split()[1:2] == ["install"]:
                    edit_config(root / "etc/a2pd/a2pd.toml", emu.base_url, free_port())
                    installed = root / "etc/a2pd/a2pd.toml"
                    installed.write_text(move(installed.read_text(), root))
            assert (root / "etc/a2pd/a2pd.toml").stat().st_mode & 0o777 == 0o644
            for secret in ("client_secret", "jwt"):
                assert (root / "etc/a2pd" / secret).stat().st_mode & 0o777 == 0o600
            unit_file = root / "etc/systemd/system/a2pd.service"
            unit_file.write_text(move(unit_file.read_text(), root))
            await systemctl_start_and_stop(root, Unit.read(unit_file), emu, steps[start + 1:])
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def systemctl_start_and_stop(root: Path, unit: Unit, emu: Emulator,
                                   after: list[str]) -> None:
    notify_path = root / "run/notify"
    notify_path.parent.mkdir(parents=True, exist_ok=True)
    events = [seed(name) for name in SEEDS]
    async with await anyio.create_unix_datagram_socket(local_path=notify_path) as notify:
        notify_path.chmod(0o777)
        with journal_pipe() as (stream_fd, journal_stream, lines):
            service = prepare(root, unit, notify_path, journal_stream)
            [pre] = unit.commands("ExecStartPre")
            checked = await anyio.run_process(service.argv(pre), env=service.env,
                                              cwd=service.cwd, check=False)
            assert checked.returncode == 0, checked.stderr.decode()
            [main] = unit.commands("ExecStart")
            process = await anyio.open_process(
                service.argv(main), env=service.env, cwd=service.cwd, umask=service.umask,
                stdin=subprocess.DEVNULL, stdout=stream_fd, stderr=stream_fd)
            try:
                with anyio.fail_after(TIMEOUT):
                    while b"READY=1" not in (await notify.receive())[0]:
                        pass
                for name in SEEDS:
                    await emu.publish(seed_kind(name), seed(name)["body"])
                await delivered_everything(root / "etc/a2pd/a2pd.toml", len(SEEDS))
                for step in after:
                    if step.startswith("a2pd status"):
                        shown = await anyio.run_process(
                            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                             "--", f"{root}/usr/local/bin/a2pd", *shlex.split(
                                 move(step, root))[1:]], check=False)
                        assert shown.returncode == 0, shown.stderr.decode()
                        assert b"subscribed" in shown.stdout
                process.terminate()  # KillSignal=SIGTERM
                with anyio.fail_after(TIMEOUT):
                    code = await process.wait()
                    while b"STOPPING=1" not in (await notify.receive())[0]:
                        pass
            finally:
                if process.returncode is None:
                    process.kill()
                await process.aclose()
        assert code == 0, "\n".join(lines)
    check_outcome(root, emu, events, lines)


async def delivered_everything(config: Path, count: int) -> None:
    """Wait until the daemon's /status says the example config's catch-all sink
    (``archive``) delivered ``count`` events (the ops endpoint of the installed config)."""
    text = config.read_text()
    port = re.search(r'listen = "127.0.0.1:(\d+)"', text)
    assert port, "the edited config names its ops port"
    url = f"http://127.0.0.1:{port.group(1)}/status"
    async with httpx.AsyncClient(trust_env=False) as client:
        with anyio.fail_after(TIMEOUT):
            while True:
                if (await client.get(url)).json()["sinks"]["archive"]["delivered"] >= count:
                    return
                await anyio.sleep(POLL)


def check_outcome(root: Path, emu: Emulator, events: list[dict[str, object]],
                  lines: Lines) -> None:
    state = root / "var/lib/a2pd"
    written = list((state / "events").rglob("*.jsonl"))
    records = [json.loads(line) for p in written for line in p.read_text().splitlines()]
    assert len(records) == len(events), "\n".join(lines)
    for path in [*written, state / "journal.db"]:
        info = path.stat()
        assert (info.st_uid, info.st_mode & 0o777) == (DYNAMIC_UID, 0o600), path
    text = "".join(lines)
    assert lines
    assert all(re.match(r"<[0-7]>\{", line) for line in lines if line.strip()), text
    assert any(line.startswith("<6>") and '"subscribed"' in line for line in lines)
    for secret in (CLIENT_SECRET, JWT, *emu.issued_secrets()):
        assert secret not in text
    for event in events:
        body = event["body"]
        if isinstance(body, dict) and body.get("text"):
            assert str(body["text"]) not in text, "message text reached the system log"


async def test_log_lines_carry_their_journald_priority(tmp_path: Path) -> None:
    """Under journald (``$JOURNAL_STREAM`` names stderr) every log line starts with its
    syslog priority, so ``journalctl -p warning`` finds warnings and errors: the warning a
    missing refresh token gives (<4>), a refused reload (<3>), and info lines (<6>)."""
    emu = Emulator(EmulatorConfig(issue_refresh_tokens=False))
    config = tmp_path / "a2pd.toml"
    async with emu.running():
        config.write_text(settings_text(emu, tmp_path, log_level="info"))
        with journal_pipe() as (stream_fd, journal_stream, lines):
            process = await anyio.open_process(
                [sys.executable, "-m", "a2pd", "run", "-c", str(config)],
                env={**os.environ, "JOURNAL_STREAM": journal_stream, "PYTHONUNBUFFERED": "1"},
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stream_fd)
            try:
                with anyio.fail_after(TIMEOUT):
                    await lines.wait_for('"subscribed"')
                    config.write_text("[platform\n")
                    process.send_signal(signal.SIGHUP)
                    await lines.wait_for('"reload_refused"')
                    process.terminate()
                    assert await process.wait() == 0
            finally:
                if process.returncode is None:
                    process.kill()
                await process.aclose()
    priority = {json.loads(line[3:])["event"]: line[:3] for line in lines
                if re.match(r"<\d>\{", line)}
    assert priority["no_refresh_token"] == "<4>"
    assert priority["reload_refused"] == "<3>"
    assert priority["subscribed"] == "<6>"
    assert all(re.match(r"<\d>", line) for line in lines if line.strip()), lines

