"""The ``a2pd`` command line.

    a2pd run [-c CONFIG]        run the daemon (every CONFIG defaults to $A2PD_CONFIG, else
                                /etc/a2pd/a2pd.toml)
    a2pd validate [-c] CONFIG   print OK, or every problem with its key path (exit 78)
    a2pd check [-c CONFIG]      log in, subscribe, call the A2P API: what works, what to fix
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
from typing import Any

import anyio

from a2pd import __version__
from a2pd.errors import (
    EXIT_CONFIG,
    EXIT_CRASH,
    EXIT_OK,
    ConfigError,
    FatalPlatformError,
    JournalError,
    StateDirInUse,
)
from a2pd.logging import print_error

__all__ = [
    "DEFAULT_CONFIG",
    "EXIT_INTERRUPTED",
    "EXIT_PIPE",
    "main",
    "parse",
    "tune_gc",
]

DEFAULT_CONFIG = "/etc/a2pd/a2pd.toml"
#: what a command exits with when its output pipe closed early (``a2pd … | head``): the
#: status a shell reports for a process ended by SIGPIPE
EXIT_PIPE = 141
#: a check stopped with Ctrl-C (128 + SIGINT, as a shell reports it): not "all is well"
EXIT_INTERRUPTED = 130


def _default_config() -> str:
    return os.environ.get("A2PD_CONFIG", DEFAULT_CONFIG)


def _config_arg(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("-c", "--config", default=None,
                        help=f"{help_text} (default: $A2PD_CONFIG, else {DEFAULT_CONFIG})")


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and each command's own parser (see ``main``)."""
    parser = argparse.ArgumentParser(
        prog="a2pd", description="a2pd: RingCentral High Volume SMS event notifications, "
        "journaled and routed to sinks. `a2pd COMMAND --help` for each command.")
    parser.add_argument("--version", action="version", version=f"a2pd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands: dict[str, argparse.ArgumentParser] = {}

    def command(name: str, help_text: str, **kwargs: Any) -> argparse.ArgumentParser:
        commands[name] = sub.add_parser(name, help=help_text, description=help_text, **kwargs)
        return commands[name]

    run = command("run", "run the daemon")
    _config_arg(run, "the config file")

    validate = command("validate", "check a config file: OK, or every problem (exit 78)")
    validate.add_argument("path", nargs="?", metavar="CONFIG",
                          help="the config file (or -c CONFIG)")
    _config_arg(validate, "the config file")
    validate.add_argument("--no-secrets", action="store_true",
                          help="check everything but the secrets' values (where they come "
                               "from is still checked; nothing is read)")

    check = command("check", "check the RingCentral account and app a config uses")
    _config_arg(check, "the config file")

    demo = command("demo", "run the daemon against the bundled emulator")
    demo.add_argument("-c", "--config", default=None,
                      help="a config to use instead of the embedded demo config")
    demo.add_argument("--rate", type=float, default=20.0,
                      help="most demo events per second (flows follow their own timeline)")
    demo.add_argument("--duration", type=float, default=None,
                      help="stop after this many seconds (default: run until Ctrl-C)")
    demo.add_argument("--seed", type=int, default=1)

    # the emulator has its own parser (a2pd.emulator.cli): `main` hands it the arguments
    # before this parser sees them; this entry is for the command list in --help
    command("emulator", "run the RingCentral platform emulator (a2pd emulator --help)",
            add_help=False)

    journal = command("journal", "inspect the journal")
    journal.add_argument("action", choices=["stats"])
    _state_args(journal)
    journal.add_argument("--json", action="store_true")

    letters = command("dead-letters", "list, show, replay or purge dead letters")
    letters.add_argument("action", choices=["list", "show", "replay", "purge"])
    letters.add_argument("ids", nargs="*", type=_letter_id, metavar="ID",
                         help="dead letter ids (as `list` shows them)")
    letters.add_argument("--all", action="store_true", help="every dead letter (replay/purge)")
    letters.add_argument("--sink", default=None, help="only this sink's dead letters")
    letters.add_argument("--json", action="store_true")
    letters.add_argument("-y", "--yes", action="store_true",
                         help="purge without asking")
    _state_args(letters)

    status = command("status", "show a running daemon's state (ops endpoint)")
    _config_arg(status, "the config file")
    status.add_argument("--url", default=None,
                        help="the ops endpoint (default: from the config and state directory)")
    status.add_argument("--json", action="store_true", help="print the raw JSON")

    command("version", "print the version")
    return parser, commands


def _letter_id(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a dead letter id (1, 2, ...)")
    return int(text)


def _state_args(parser: argparse.ArgumentParser) -> None:
    _config_arg(parser, "config file whose [state] directory to use")
    parser.add_argument("--state-dir", default=None, help="the state directory itself")


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parse a command line. A command's own options and arguments may come in any order
    (``dead-letters show -c FILE 1`` as well as ``dead-letters show 1 -c FILE``): the command
    word picks its parser, which parses the rest intermixed."""
    parser, commands = _parser()
    if argv and argv[0] in commands and argv[0] != "emulator":
        args = commands[argv[0]].parse_intermixed_args(argv[1:])
        args.command = argv[0]
    else:
        args = parser.parse_args(argv)
    if getattr(args, "config", None) is None and args.command not in ("demo", "validate"):
        args.config = _default_config()
    if args.command == "validate":
        if args.path and args.config:
            commands["validate"].error("give the config file once: CONFIG or -c CONFIG")
        args.config = args.path or args.config or _default_config()
    return args


def main(argv: Sequence[str] | None = None) -> int:
    # every file a2pd writes is private to its user, whatever the umask it was started
    # with (the journal and the sinks' files hold message text and phone numbers)
    os.umask(0o077)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "emulator":
        from a2pd.emulator.cli import main as emulator_main

        return int(emulator_main(argv[1:]))
    args = parse(argv)
    try:
        return _command(args)
    except BrokenPipeError:
        # the reader went away (`a2pd dead-letters list --json | head`): no traceback, and
        # no second error when Python flushes stdout at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PIPE


def _command(args: argparse.Namespace) -> int:
    if args.command == "version":
        print(f"a2pd {__version__}")
        return EXIT_OK
    if args.command == "validate":
        return _validate(args.config, secrets=not args.no_secrets)
    if args.command == "run":
        return _run(args.config)
    if args.command in ("journal", "dead-letters"):
        return _admin(args)
    if args.command == "status":
        return _status(args)
    if args.command == "check":
        from a2pd.check import main as check_main

        return _guard(lambda: check_main(args.config), interrupted=EXIT_INTERRUPTED)
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
    scheme = url.partition("://")[0]
    if scheme not in ("http", "https"):
        print(f"a2pd status: --url must be an http(s):// URL, not {url!r}", file=sys.stderr)
        return 2
    try:
        state = status.fetch(url)
    except httpx.InvalidURL as exc:
        print(f"a2pd status: not a usable URL {url!r}: {exc}", file=sys.stderr)
        return 2
    except httpx.HTTPError as exc:
        print(f"a2pd: no daemon answers at {url}: {exc}", file=sys.stderr)
        return status.EXIT_UNAVAILABLE
    except (ValueError, KeyError, TypeError) as exc:
        print(f"a2pd: what answers at {url} is not an a2pd ops endpoint "
              f"({type(exc).__name__})", file=sys.stderr)
        return status.EXIT_UNAVAILABLE
    try:
        text = json.dumps(state, indent=2) if args.json else status.render(state)
        ready = bool(state["ready"])
    except (KeyError, TypeError, ValueError) as exc:
        print(f"a2pd: what answers at {url} is not an a2pd ops endpoint "
              f"({type(exc).__name__})", file=sys.stderr)
        return status.EXIT_UNAVAILABLE
    print(text)
    return EXIT_OK if ready else status.EXIT_NOT_READY


def _admin(args: argparse.Namespace) -> int:
    from a2pd import admin

    try:
        directory = admin.state_dir(args.config, args.state_dir)
    except ConfigError as exc:
        _print_config_error(exc)
        return EXIT_CONFIG
    if args.command == "journal":
        return _guard(lambda: anyio.run(admin.journal_stats, directory, args.json))
    request = admin.LetterRequest(action=args.action, ids=args.ids, all=args.all,
                                  sink=args.sink, as_json=args.json, yes=args.yes,
                                  configured_sinks=admin.configured_sinks(args.config))
    return _guard(lambda: anyio.run(admin.dead_letters, directory, request))


def _print_config_error(exc: ConfigError) -> None:
    print_error(f"a2pd: invalid configuration {exc.source}".rstrip())
    for problem in exc.problems:
        print_error(f"  {problem}")


def _validate(path: str, *, secrets: bool) -> int:
    from a2pd import config

    try:
        config.load(path, secrets=secrets)
    except ConfigError as exc:
        _print_config_error(exc)
        return EXIT_CONFIG
    print(f"{path}: OK" + ("" if secrets else " (secrets not read)"))
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


def _guard(body: Callable[[], int | None], *, interrupted: int = EXIT_OK) -> int:
    """Run ``body`` and turn our errors into one clear line and an exit code. Ctrl-C is a
    clean stop for the daemon; ``interrupted`` is the exit code it gives otherwise. An error
    raised inside a task group arrives wrapped in an exception group: it is unwrapped (the
    first of ours decides), so it too is one line and its exit code, never a traceback."""
    try:
        code = body()
    except BaseExceptionGroup as group:
        ours = group.subgroup(lambda exc: isinstance(exc, _OURS))
        if ours is None:
            raise
        return _explain(_first(ours), interrupted)
    except _OURS as exc:
        return _explain(exc, interrupted)
    return EXIT_OK if code is None else code


_OURS = (ConfigError, FatalPlatformError, JournalError, StateDirInUse, KeyboardInterrupt)


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def _explain(exc: BaseException, interrupted: int) -> int:
    if isinstance(exc, ConfigError):
        _print_config_error(exc)
        return EXIT_CONFIG
    if isinstance(exc, FatalPlatformError | JournalError | StateDirInUse):
        print_error(f"a2pd: stopped: {exc}")
        return exc.exit_code
    return interrupted
