"""``python -m a2pd.emulator`` / ``a2pd emulator``: run the emulator until SIGINT/SIGTERM.

Prints ``emulator listening on http://HOST:PORT`` (flushed) once the socket is bound, then
the demo credentials, so a script can start it with ``--port 0`` and read where it is. A
reader that goes away after that line (``| head -1``) does not stop it: stdout then goes to
/dev/null. The app's settings that ``a2pd check`` reports on (its permissions, refresh
tokens, the JWT flow, where a missing WebSocket permission is refused) have flags, so each
failure can be tried by hand. Exit codes: 0 clean stop, 78 bad arguments/config, 1 cannot
bind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys

from a2pd.emulator.config import DAEMON_PERMISSIONS, WS_REFUSALS, EmulatorConfig
from a2pd.emulator.errors import EmulatorConfigError
from a2pd.emulator.server import Emulator

EX_CONFIG = 78


def _parser() -> argparse.ArgumentParser:
    defaults = EmulatorConfig()
    parser = argparse.ArgumentParser(
        prog="a2pd emulator", description="Run the bundled RingCentral platform emulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--seed", type=int, default=0, help="seeds ids and traffic")
    parser.add_argument("--traffic", action="store_true",
                        help="generate realistic A2P traffic in the background")
    parser.add_argument("--rate", type=float, default=5.0,
                        help="background traffic, events per second (default 5)")
    parser.add_argument("--account-id", default=defaults.account_id)
    parser.add_argument("--client-id", default=defaults.client_id)
    parser.add_argument("--client-secret", default=defaults.client_secret)
    parser.add_argument("--jwt", default=defaults.jwt)
    parser.add_argument("--access-token-ttl", type=float, default=defaults.access_token_ttl)
    parser.add_argument("--ws-token-ttl", type=float, default=defaults.ws_token_ttl)
    parser.add_argument("--recovery-timeout", type=float, default=defaults.recovery_timeout)
    parser.add_argument("--idle-timeout", type=float, default=defaults.idle_timeout)
    parser.add_argument("--absolute-timeout", type=float, default=defaults.absolute_timeout)
    parser.add_argument("--ping-interval", type=float, default=30.0,
                        help="seconds between the server's pings (0: none)")
    parser.add_argument("--wsc-on-notifications", type=int, default=0)
    app = parser.add_argument_group(
        "the app's setup", "what `a2pd check` reports on: set one to see its FAIL line")
    app.add_argument("--app-permissions", type=_permissions,
                     default=",".join(sorted(defaults.app_permissions)),
                     metavar="NAME,NAME,...",
                     help="the app's permissions, comma-separated (\"\": none; default: "
                          "every one a2pd needs: %(default)s)")
    app.add_argument("--no-refresh-tokens", dest="issue_refresh_tokens",
                     action="store_false",
                     help="the app does not issue refresh tokens (the refresh grant is refused)")
    app.add_argument("--no-jwt-flow", dest="jwt_flow", action="store_false",
                     help="the app is not a JWT app (the JWT grant is refused: OAU-112)")
    app.add_argument("--ws-permission-refused-at", choices=WS_REFUSALS,
                     default=defaults.ws_permission_refused_at,
                     help="without WebSocketsSubscription, refuse the WS token (403 "
                          "InsufficientPermissions) or the subscription (403 SUB-528); "
                          "default %(default)s")
    app.add_argument("--max-subscriptions", type=int, default=defaults.max_subscriptions,
                     help="subscriptions a user and app may hold (then 403 SUB-505; "
                          "default %(default)s)")
    return parser


def _permissions(text: str) -> frozenset[str]:
    """``--app-permissions``: names a2pd knows (a typo would silently drop one)."""
    names = frozenset(name.strip() for name in text.split(",") if name.strip())
    unknown = sorted(names - DAEMON_PERMISSIONS)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown permission {', '.join(unknown)} (known: "
            f"{', '.join(sorted(DAEMON_PERMISSIONS))})")
    return names


def main(argv: list[str] | None = None) -> int:
    """Run the emulator from command-line arguments; the process exit code."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return 0 if exc.code in (0, None) else EX_CONFIG
    try:
        config = EmulatorConfig(
            host=args.host, port=args.port, seed=args.seed, account_id=args.account_id,
            extension_id=args.account_id, client_id=args.client_id,
            client_secret=args.client_secret, jwt=args.jwt,
            access_token_ttl=args.access_token_ttl, ws_token_ttl=args.ws_token_ttl,
            recovery_timeout=args.recovery_timeout, idle_timeout=args.idle_timeout,
            absolute_timeout=args.absolute_timeout, ping_interval=args.ping_interval or None,
            wsc_on_notifications=args.wsc_on_notifications,
            app_permissions=args.app_permissions,
            issue_refresh_tokens=args.issue_refresh_tokens, jwt_flow=args.jwt_flow,
            ws_permission_refused_at=args.ws_permission_refused_at,
            max_subscriptions=args.max_subscriptions)
    except EmulatorConfigError as exc:
        print(f"a2pd emulator: {exc}", file=sys.stderr)
        return EX_CONFIG
    if args.traffic and args.rate <= 0:
        print("a2pd emulator: --rate must be > 0", file=sys.stderr)
        return EX_CONFIG
    return asyncio.run(_serve(config, args.rate if args.traffic else None))


#: the name the daemon's CLI wiring may use
run = main


async def _serve(config: EmulatorConfig, traffic_rate: float | None) -> int:
    """Serve until SIGINT/SIGTERM; the exit code (1: the socket could not be bound)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        emulator = Emulator(config)
        async with contextlib.AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(emulator.running())
            except OSError as exc:  # only the bind: a failure once serving is not "listen"
                print(f"a2pd emulator: cannot listen on {config.host}:{config.port}: {exc}",
                      file=sys.stderr)
                return 1
            _say(f"emulator listening on {emulator.base_url}")
            _say(f"  ws url:        {emulator.ws_url}\n"
                 f"  account id:    {config.account_id}\n"
                 f"  client id:     {config.client_id}\n"
                 f"  client secret: {config.client_secret}\n"
                 f"  jwt:           {config.jwt}\n"
                 f"  control API:   {emulator.base_url}/_emulator/health")
            if traffic_rate is not None:
                emulator.traffic.start(rate=traffic_rate)
            await stop.wait()
            _say("emulator stopping")
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    return 0


def _say(text: str) -> None:
    """Print a line to stdout, flushed. Once its reader has gone (``| head -1``), stdout
    goes to /dev/null, as CPython's docs advise for SIGPIPE (so the flush at exit cannot
    fail either), and the emulator keeps serving: where it listens has been read."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
