"""`a2pd check -c FILE`, the real command against the emulator over loopback: one line per
step, the fix for each refusal the platform can answer, exit 0 only when all is well, and
nothing left behind (no subscription, no OAuth session, no secret in the output)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from a2pd.emulator import Emulator
from a2pd.emulator.config import DAEMON_PERMISSIONS
from tests.harness import emulator, settings_text

#: a check runs a fresh Python process: more than the harness' TIMEOUT on a busy machine
CHECK_TIMEOUT = 60.0


@dataclass(frozen=True)
class Run:
    """What one `a2pd check` printed, and how it ended."""

    code: int
    out: str
    err: str

    def line(self, prefix: str) -> str:
        """The report line that starts with ``prefix``, and its fix line if any."""
        lines = self.out.splitlines()
        for i, line in enumerate(lines):
            if line.startswith(prefix):
                following = lines[i + 1] if i + 1 < len(lines) else ""
                return line + ("\n" + following if following.startswith("     fix: ") else "")
        raise AssertionError(f"no line starts with {prefix!r} in:\n{self.out}")


def write_config(emu: Emulator, tmp_path: Path, **replace: str) -> Path:
    """A config for ``emu`` (``replace``: old text → new text in it)."""
    text = settings_text(emu, tmp_path)
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "a2pd.toml"
    path.write_text(text)
    return path


async def check(path: Path) -> Run:
    """Run `a2pd check -c path` as a child process (the emulator serves meanwhile)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("A2PD_")}
    with anyio.fail_after(CHECK_TIMEOUT):
        result = await anyio.run_process(
            [sys.executable, "-m", "a2pd", "check", "-c", str(path)], env=env,
            stdin=subprocess.DEVNULL, check=False)
    return Run(result.returncode, result.stdout.decode(), result.stderr.decode())


async def check_against(tmp_path: Path, **config: Any) -> tuple[Emulator, Run]:
    """`a2pd check` of a config for an emulator with ``config``; the emulator (stopped)."""
    emu = emulator(**config)
    async with emu.running():
        run = await check(write_config(emu, tmp_path))
    return emu, run


def assert_left_nothing(emu: Emulator, run: Run) -> None:
    """No subscription, no live OAuth session, no secret in what the check printed."""
    assert emu.gateway.subscription_count() == 0
    assert [s for s in emu.oauth.sessions.values() if not s.ended] == []
    text = run.out + run.err
    for secret in [emu.config.client_secret, emu.config.jwt, *emu.issued_secrets()]:
        assert secret not in text
    assert "Traceback" not in text


async def test_all_well_exits_0_with_every_line_ok(tmp_path: Path) -> None:
    """Against a well set-up app every step is ok, the subscription was made and deleted,
    the session revoked, and no secret or token appears in the output."""
    emu, run = await check_against(tmp_path)
    assert run.code == 0, run.out + run.err
    report = [line for line in run.out.splitlines() if not line.startswith("a2pd check:")]
    assert [line.split()[0] for line in report] == ["ok"] * 8, run.out
    assert run.line("ok   login (JWT grant)")
    assert run.line("ok   websocket subscription: 4 filters subscribed, then deleted")
    assert run.line("ok   A2P list (/restapi/v1.0/account/~/a2p-sms/batches)")
    assert run.line("ok   opt-outs list (/restapi/v2/accounts/~/sms/consents)")
    assert run.line("ok   sign out")
    assert run.out.splitlines()[-1] == "a2pd check: all 8 steps ok"
    assert emu.gateway.subscriptions_created == 1
    assert len(emu.oauth.sessions) == 1
    assert_left_nothing(emu, run)


@pytest.mark.parametrize("refused_at", ["wstoken", "subscription"])
async def test_missing_websocket_permission(tmp_path: Path, refused_at: str) -> None:
    """Without WebSocket Subscriptions the token (or the subscription, SUB-528) is refused:
    FAIL with the permission to add; the lists are still checked."""
    emu, run = await check_against(
        tmp_path, app_permissions=DAEMON_PERMISSIONS - {"WebSocketsSubscription"},
        ws_permission_refused_at=refused_at)
    assert run.code == 1
    if refused_at == "wstoken":
        failed = run.line("FAIL websocket token")
        assert "InsufficientPermissions" in failed
        assert "[WebSocketsSubscription]" in failed
        assert run.line("-    websocket subscription: skipped (needs a WebSocket token)")
    else:
        failed = run.line("FAIL websocket subscription")
        assert "HTTP 403 SUB-528" in failed
    assert "fix: add the 'WebSocket Subscriptions' permission to the app" in failed
    assert run.line("ok   A2P list")
    assert run.line("ok   sign out")
    assert_left_nothing(emu, run)


async def test_missing_a2p_permission(tmp_path: Path) -> None:
    """Without A2P SMS the batches list is refused (403 InsufficientPermissions, CMN-401):
    FAIL with the permission to add; the subscription itself is fine."""
    emu, run = await check_against(tmp_path, app_permissions=DAEMON_PERMISSIONS - {"A2PSMS"})
    assert run.code == 1
    failed = run.line("FAIL A2P list")
    assert "HTTP 403 InsufficientPermissions (CMN-401)" in failed
    assert "application needs to have [A2PSMS] permission" in failed
    assert "fix: add the 'A2P SMS' permission to the app" in failed
    assert run.line("ok   websocket subscription")
    assert run.line("ok   opt-outs list")
    assert_left_nothing(emu, run)


async def test_missing_optouts_permission(tmp_path: Path) -> None:
    """Without SMS the consents list the backfill reads opt-outs from is refused."""
    emu, run = await check_against(tmp_path, app_permissions=DAEMON_PERMISSIONS - {"SMS"})
    assert run.code == 1
    failed = run.line("FAIL opt-outs list")
    assert "[SMS] permission" in failed
    assert "fix: add the 'SMS' permission to the app" in failed
    assert run.line("ok   A2P list")
    assert_left_nothing(emu, run)


async def test_missing_read_accounts_refuses_the_a2p_filters(tmp_path: Path) -> None:
    """The A2P event filters need Read Accounts: the subscription request is refused."""
    emu, run = await check_against(tmp_path,
                                   app_permissions=DAEMON_PERMISSIONS - {"ReadAccounts"})
    assert run.code == 1
    failed = run.line("FAIL websocket subscription")
    assert "[ReadAccounts] permission" in failed
    assert "fix: add the 'Read Accounts' permission to the app" in failed
    assert_left_nothing(emu, run)


async def test_bad_client_secret(tmp_path: Path) -> None:
    """A wrong client secret: login fails (401 invalid_client), the rest is skipped."""
    emu = emulator()
    async with emu.running():
        run = await check(write_config(emu, tmp_path, **{
            f'client_secret = "{emu.config.client_secret}"':
                'client_secret = "wrong-secret-value"'}))
    assert run.code == 1
    failed = run.line("FAIL login (JWT grant)")
    assert "HTTP 401 invalid_client" in failed
    assert "fix: the client id or client secret is wrong" in failed
    for step in ("refresh token", "websocket token", "A2P list", "sign out"):
        assert run.line(f"-    {step}: skipped (needs login)")
    assert "wrong-secret-value" not in run.out + run.err
    assert_left_nothing(emu, run)


async def test_bad_jwt(tmp_path: Path) -> None:
    """A JWT the platform does not take: login fails (400 invalid_grant) with how to make
    a new one."""
    emu = emulator()
    async with emu.running():
        run = await check(write_config(emu, tmp_path, **{
            f'jwt = "{emu.config.jwt}"': 'jwt = "eyJhbGciOi.not-the-credential.x"'}))
    assert run.code == 1
    failed = run.line("FAIL login (JWT grant)")
    assert "HTTP 400 invalid_grant" in failed
    assert "fix: the JWT credential was refused" in failed
    assert "not-the-credential" not in run.out + run.err
    assert_left_nothing(emu, run)


async def test_app_not_made_for_the_jwt_flow(tmp_path: Path) -> None:
    """An app of another auth type: the grant is refused (403 unauthorized_client, OAU-112)."""
    emu, run = await check_against(tmp_path, jwt_flow=False)
    assert run.code == 1
    failed = run.line("FAIL login (JWT grant)")
    assert "unauthorized_client (OAU-112)" in failed
    assert "fix: the app does not use the JWT flow: set its auth to 'JWT auth flow'" in failed
    assert_left_nothing(emu, run)


async def test_refresh_tokens_off(tmp_path: Path) -> None:
    """With "Issue refresh tokens" off everything works but the check fails on it."""
    emu, run = await check_against(tmp_path, issue_refresh_tokens=False)
    assert run.code == 1
    failed = run.line("FAIL refresh token")
    assert "fix: turn on 'Issue refresh tokens'" in failed
    fails = [line for line in run.out.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 1
    assert run.out.splitlines()[-1] == "a2pd check: 1 of 8 steps failed"
    assert_left_nothing(emu, run)


async def test_unreachable_server(tmp_path: Path) -> None:
    """A server URL nobody answers at: login fails with where to look, nothing else runs."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    emu = emulator()
    async with emu.running():
        run = await check(write_config(emu, tmp_path, **{
            f'server = "{emu.base_url}"': f'server = "{closed}"'}))
    assert run.code == 1
    failed = run.line("FAIL login (JWT grant)")
    assert "cannot reach the platform" in failed
    assert f"fix: check platform.server ({closed};" in failed
    assert run.line("-    websocket token: skipped (needs login)")
    assert emu.requests == []
    assert_left_nothing(emu, run)


async def test_bad_config_exits_78(tmp_path: Path) -> None:
    """A config that does not validate never reaches the platform: exit 78."""
    path = tmp_path / "a2pd.toml"
    path.write_text("[platform]\nserver = 5\n")
    run = await check(path)
    assert run.code == 78
    assert "invalid configuration" in run.err
    assert run.out == ""


async def test_sink_secrets_are_not_needed_and_sources_are_named(tmp_path: Path) -> None:
    """A sink secret that only the service can read (a systemd credential) does not stop a
    check run by hand; the config line says where each platform secret came from."""
    emu = emulator()
    async with emu.running():
        sinks = ('[sinks.archive]\ntype = "http"\nurl = "https://hooks.example.com/x"\n'
                 'signing_secrets = [{ credential = "webhook_signing_key" }]\n')
        text = settings_text(emu, tmp_path, sinks=sinks)
        path = tmp_path / "a2pd.toml"
        path.write_text(text)
        run = await check(path)
    assert run.code == 0, run.out + run.err
    assert "(client secret from inline, JWT from inline)" in run.line("ok   config")
    assert_left_nothing(emu, run)
