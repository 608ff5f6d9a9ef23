"""``python -m a2pd.emulator`` / ``a2pd emulator``: run the emulator until SIGINT/SIGTERM.

Prints ``emulator listening on http://HOST:PORT`` (flushed) once the socket is bound, then
the demo credentials, so a script can start it with ``--port 0`` and read where it is.
Exit codes: 0 clean stop, 78 bad arguments/config, 1 cannot bind.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from a2pd.emulator.config import EmulatorConfig
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
    return parser


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
            wsc_on_notifications=args.wsc_on_notifications)
    except EmulatorConfigError as exc:
        print(f"a2pd emulator: {exc}", file=sys.stderr)
        return EX_CONFIG
    if args.traffic and args.rate <= 0:
        print("a2pd emulator: --rate must be > 0", file=sys.stderr)
        return EX_CONFIG
    try:
        asyncio.run(_serve(config, args.rate if args.traffic else None))
    except OSError as exc:
        print(f"a2pd emulator: cannot listen on {args.host}:{args.port}: {exc}",
              file=sys.stderr)
        return 1
    return 0


#: the name the daemon's CLI wiring may use
run = main


async def _serve(config: EmulatorConfig, traffic_rate: float | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        emulator = Emulator(config)
        async with emulator.running():
            print(f"emulator listening on {emulator.base_url}", flush=True)
            print(f"  ws url:        {emulator.ws_url}\n"
                  f"  account id:    {config.account_id}\n"
                  f"  client id:     {config.client_id}\n"
                  f"  client secret: {config.client_secret}\n"
                  f"  jwt:           {config.jwt}\n"
                  f"  control API:   {emulator.base_url}/_emulator/health", flush=True)
            if traffic_rate is not None:
                emulator.traffic.start(rate=traffic_rate)
            await stop.wait()
            print("emulator stopping", flush=True)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
