"""The ``a2pd`` command line.

    a2pd run [-c CONFIG]        run the daemon (CONFIG defaults to $A2PD_CONFIG or
                                /etc/a2pd/a2pd.toml)
    a2pd validate CONFIG        print OK, or every problem with its key path (exit 78)
    a2pd status [-c CONFIG]     a running daemon's state, rates, sinks and recent problems
    a2pd demo [--duration S]    the bundled emulator + the daemon on the embedded demo config
    a2pd emulator [...]         the RingCentral platform emulator on its own
    a2pd version

Exit codes: 0 clean stop, 1 crash, 77 credentials/permission refused by the platform,
78 bad configuration (systemd: RestartPreventExitStatus=77 78).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Callable, Sequence

import anyio

from a2pd import __version__
from a2pd.errors import (
    EXIT_CONFIG,
    EXIT_CRASH,
    EXIT_OK,
    ConfigError,
    FatalPlatformError,
    StateDirInUse,
)
from a2pd.journal import JournalError

DEFAULT_CONFIG = "/etc/a2pd/a2pd.toml"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="a2pd", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("-c", "--config", default=os.environ.get("A2PD_CONFIG", DEFAULT_CONFIG))

    validate = sub.add_parser("validate", help="check a config file")
    validate.add_argument("config")

    demo = sub.add_parser("demo", help="run the daemon against the bundled emulator")
    demo.add_argument("-c", "--config", default=None,
                      help="a config to use instead of the embedded demo config")
    demo.add_argument("--rate", type=float, default=20.0,
                      help="most demo events per second (flows follow their own timeline)")
    demo.add_argument("--duration", type=float, default=None,
                      help="stop after this many seconds (default: run until Ctrl-C)")
    demo.add_argument("--seed", type=int, default=1)

    emulator = sub.add_parser("emulator", help="run the RingCentral platform emulator",
                              add_help=False)
    emulator.add_argument("args", nargs=argparse.REMAINDER)

    journal = sub.add_parser("journal", help="inspect the journal")
    journal.add_argument("action", choices=["stats"])
    _state_args(journal)
    journal.add_argument("--json", action="store_true")

    letters = sub.add_parser("dead-letters", help="list, show, replay or purge dead letters")
    letters.add_argument("action", choices=["list", "show", "replay", "purge"])
    letters.add_argument("ids", nargs="*", type=int, help="dead letter ids")
    letters.add_argument("--all", action="store_true", help="every dead letter (replay/purge)")
    letters.add_argument("--sink", default=None, help="only this sink's dead letters")
    letters.add_argument("--json", action="store_true")
    _state_args(letters)

    status = sub.add_parser("status", help="show a running daemon's state (ops endpoint)")
    status.add_argument("-c", "--config", default=os.environ.get("A2PD_CONFIG", DEFAULT_CONFIG))
    status.add_argument("--url", default=None,
                        help="the ops endpoint (default: from the config and state directory)")
    status.add_argument("--json", action="store_true", help="print the raw JSON")

    check = sub.add_parser("check", help="check the RingCentral account and app a config uses")
    check.add_argument("-c", "--config", default=os.environ.get("A2PD_CONFIG", DEFAULT_CONFIG))

    sub.add_parser("version", help="print the version")
    return parser


def _state_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", default=os.environ.get("A2PD_CONFIG"),
                        help="config file whose [state] directory to use")
    parser.add_argument("--state-dir", default=None, help="the state directory itself")


def main(argv: Sequence[str] | None = None) -> int:
    # every file a2pd writes is private to its user, whatever the umask it was started
    # with (the journal and the sinks' files hold message text and phone numbers)
    os.umask(0o077)
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"a2pd {__version__}")
        return EXIT_OK
    if args.command == "emulator":
        from a2pd.emulator.cli import main as emulator_main

        return int(emulator_main(list(args.args)))
    if args.command == "validate":
        return _validate(args.config)
    if args.command == "run":
        return _run(args.config)
    if args.command in ("journal", "dead-letters"):
        return _admin(args)
    if args.command == "status":
        return _status(args)
    if args.command == "check":
        from a2pd.check import main as check_main

        return _guard(lambda: check_main(args.config))
    if args.command == "demo":
        from a2pd.demo import run_demo

        return _guard(lambda: anyio.run(run_demo, args.config, args.rate, args.duration,
                                        args.seed))
    return EXIT_CRASH


def _status(args: argparse.Namespace) -> int:
    import json

    import httpx

    from a2pd import status

    try:
        url = args.url or status.endpoint(args.config)
    except ConfigError as exc:
        _print_config_error(exc)
        return EXIT_CONFIG
    try:
        state = status.fetch(url)
    except httpx.HTTPError as exc:
        print(f"a2pd: no daemon answers at {url}: {exc}", file=sys.stderr)
        return status.EXIT_UNAVAILABLE
    print(json.dumps(state, indent=2) if args.json else status.render(state))
    return EXIT_OK if state["ready"] else status.EXIT_NOT_READY


def _admin(args: argparse.Namespace) -> int:
    from a2pd import admin

    try:
        directory = admin.state_dir(args.config, args.state_dir)
    except ConfigError as exc:
        _print_config_error(exc)
        return EXIT_CONFIG
    if args.command == "journal":
        return _guard(lambda: anyio.run(admin.journal_stats, directory, args.json))
    return _guard(lambda: anyio.run(admin.dead_letters, directory, args.action, args.ids,
                                    args.all, args.sink, args.json))


def _print_config_error(exc: ConfigError) -> None:
    print(f"a2pd: invalid configuration {exc.source}".rstrip(), file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)


def _validate(path: str) -> int:
    from a2pd import config

    try:
        config.load(path)
    except ConfigError as exc:
        _print_config_error(exc)
        return EXIT_CONFIG
    print(f"{path}: OK")
    return EXIT_OK


def _run(path: str) -> int:
    from a2pd import config
    from a2pd import logging as a2pd_logging

    try:
        settings = config.load(path)
    except ConfigError as exc:
        _print_config_error(exc)
        return EXIT_CONFIG
    a2pd_logging.configure(settings.log.level, settings.log.format)

    async def serve() -> None:
        from a2pd.app import Daemon

        tune_gc()
        await Daemon(settings, config_path=path).run()

    return _guard(lambda: anyio.run(serve))


def tune_gc() -> None:
    """Fewer, cheaper collections for a long-running daemon: everything that exists once the
    modules are loaded (pydantic's schemas, the code) lives for the process' life, so it is
    moved out of the collector's sight (``gc.freeze``), and the youngest generation is
    collected after 10,000 allocations instead of 700. A full collection had to walk every
    object, taking 20-40 ms of the event loop at a time on a 2-CPU VM, which showed as
    delivery latency (bench/results/README.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


def _guard(body: Callable[[], int | None]) -> int:
    """Run ``body`` and turn our errors into one clear line and an exit code."""
    try:
        code = body()
    except ConfigError as exc:
        _print_config_error(exc)
        return EXIT_CONFIG
    except (FatalPlatformError, JournalError, StateDirInUse) as exc:
        print(f"a2pd: stopped: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK if code is None else code
