"""``a2pd journal …`` and ``a2pd dead-letters …``: look into and act on the journal.

They open the journal file directly, so they work whether the daemon is stopped or running
(SQLite WAL lets a second process read, and write briefly). They need only the state
directory: from ``--state-dir``, or ``[state] directory`` of the config file (read without
validating the rest, so a config whose secrets are not available here still works).
"""

from __future__ import annotations

import difflib
import json
import sys
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from a2pd.errors import ConfigError, ConfigProblem, one_line
from a2pd.journal import DeadLetter, Journal
from a2pd.names import DEAD_LETTER_SOURCES

__all__ = [
    "LetterRequest",
    "configured_sinks",
    "dead_letters",
    "journal_stats",
    "state_dir",
]


def state_dir(config_path: str | None, explicit: str | None) -> Path:
    """The state directory named by ``--state-dir`` or the config file."""
    if explicit:
        return Path(explicit)
    if config_path is None:
        return Path("./state")
    try:
        data = tomllib.loads(Path(config_path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError([ConfigProblem("", f"cannot read: {exc}")], config_path) from exc
    directory = data.get("state", {}).get("directory", "./state")
    if not isinstance(directory, str):
        raise ConfigError([ConfigProblem("state.directory", "must be a string")], config_path)
    return Path(directory)


def _time(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds")


def _letter_summary(d: DeadLetter) -> dict[str, Any]:
    return {"id": d.id, "sink": d.sink, "uuid": d.uuid, "seq": d.seq, "reason": d.reason,
            "attempts": d.attempts, "first_attempt": _time(d.first_attempt),
            "last_attempt": _time(d.last_attempt), "created": _time(d.created),
            "size": d.size, "truncated": d.truncated}


async def journal_stats(directory: Path, as_json: bool) -> int:
    journal = await Journal.open_for_admin(directory / "journal.db")
    try:
        found = await journal.stats()
    finally:
        await journal.aclose()
    stats: dict[str, Any] = {
        **found, "oldest_received": _time(found["oldest_received"]),
        "gaps": [{**gap, "start": _time(gap["start"]), "opened": _time(gap["opened"])}
                 for gap in found["gaps"]]}
    if as_json:
        print(json.dumps(stats, indent=2))
        return 0
    print(f"journal        {stats['path']}")
    print(f"events         {stats['events']} (oldest {stats['oldest_received']})")
    print(f"last seq       {stats['last_seq']}")
    print(f"uuids kept     {stats['seen']} (deduplication window)")
    for sink, seq in sorted(stats["cursors"].items()):
        print(f"sink {sink:<12} cursor {seq}, {stats['lag'][sink]} behind")
    for sink, count in sorted(stats["dead_letters"].items()):
        print(f"dead letters   {sink}: {count}")
    for gap in stats["gaps"]:
        print(f"gap pending    events since {gap['start']} (opened {gap['opened']}), "
              "for the backfill")
    return 0


@dataclass(frozen=True)
class LetterRequest:
    """One ``a2pd dead-letters`` command line."""

    action: str  # list | show | replay | purge
    ids: list[int]
    all: bool
    sink: str | None
    as_json: bool
    yes: bool  # purge without asking
    configured_sinks: list[str]


def configured_sinks(config_path: str | None) -> list[str]:
    """The sink names of a config file, read without validating it; none when unreadable
    (``--state-dir`` was given and the config is not there)."""
    if config_path is None:
        return []
    try:
        data = tomllib.loads(Path(config_path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return []
    sinks = data.get("sinks")
    return [str(name) for name in sinks] if isinstance(sinks, dict) else []


def _of(sink: str | None) -> str:
    return f" of sink {sink}" if sink else ""


def _confirm(question: str) -> bool | None:
    """Ask on the terminal: True for yes, False for anything else (Ctrl-C and Ctrl-D too);
    None when stdin is not a terminal (a script must say ``--yes``)."""
    if not sys.stdin.isatty():
        return None
    try:
        answer = input(f"{question} [y/N] ")
    except (EOFError, KeyboardInterrupt):
        print(file=sys.stderr)
        return False
    return answer.strip().lower() in ("y", "yes")


async def dead_letters(directory: Path, request: LetterRequest) -> int:
    action, ids, sink = request.action, request.ids, request.sink
    if action in ("show", "replay", "purge") and not ids and not (request.all and
                                                                   action != "show"):
        what = "one or more ids" if action == "show" else "ids or --all"
        print(f"a2pd: dead-letters {action} needs {what}", file=sys.stderr)
        return 2
    if ids and request.all:
        print(f"a2pd: dead-letters {action}: give ids or --all, not both", file=sys.stderr)
        return 2
    journal = await Journal.open_for_admin(directory / "journal.db")
    try:
        if sink is not None:
            stats = await journal.stats()
            known = sorted({*request.configured_sinks, *stats["cursors"],
                            *stats["dead_letters"], *DEAD_LETTER_SOURCES})
            if sink not in known:
                close = difflib.get_close_matches(sink, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                print(f"a2pd: no sink named {one_line(sink)!r}{hint}; known: "
                      f"{', '.join(known) or 'none'}", file=sys.stderr)
                return 2
        if action == "list":
            letters = await journal.letters.entries(sink)
            if request.as_json:
                print(json.dumps([_letter_summary(d) for d in letters], indent=2))
            else:
                for d in letters:
                    # uuid and reason can come from a hostile notification: escaped, so they
                    # cannot break the line or reach the terminal as escape sequences
                    print(f"{d.id:>6}  {_time(d.created)}  {d.sink:<14} "
                          f"{one_line(d.uuid or '-'):<22} attempts={d.attempts}  "
                          f"{one_line(d.reason)}")
                print(f"{len(letters)} dead letter(s)", file=sys.stderr)
            return 0
        letters = [d for d in await journal.letters.entries(sink)
                   if request.all or d.id in ids]
        missing = sorted(set(ids) - {d.id for d in letters})
        if missing and action != "show":
            # nothing is done when any id is wrong: a typo never acts on the others alone
            print(f"a2pd: no dead letter{_of(sink)} with id {', '.join(map(str, missing))}; "
                  f"nothing {'requeued' if action == 'replay' else 'purged'}",
                  file=sys.stderr)
            return 1
        if action == "show":
            for d in letters:
                summary = _letter_summary(d)
                try:
                    summary["raw"] = d.raw.decode("utf-8")
                except UnicodeDecodeError:
                    summary["raw_hex"] = d.raw.hex()
                print(json.dumps(summary, indent=2, ensure_ascii=False))
            if missing:
                print(f"a2pd: no dead letter{_of(sink)} with id "
                      f"{', '.join(map(str, missing))}", file=sys.stderr)
                return 1
            return 0
        chosen = None if request.all else ids
        if action == "replay":
            count = await journal.letters.replay(chosen, sink)
            print(f"requeued {count} dead letter(s) for delivery")
            if count < len(letters):
                print(f"a2pd: {len(letters) - count} not requeued: they never reached a sink "
                      "(frame, notification, backfill) or their record was cut to the size "
                      "limit; `show` has what was kept", file=sys.stderr)
            return 0
        if not letters:
            print("purged 0 dead letter(s)")
            return 0
        if not request.yes:
            answer = _confirm(f"Delete {len(letters)} dead letter(s){_of(sink)} for good?")
            if answer is not True:
                reason = ("not confirmed" if answer is False else
                          "no terminal to ask on; add --yes")
                print(f"a2pd: not purged ({reason}): {len(letters)} dead letter(s) would be "
                      "deleted for good", file=sys.stderr)
                return 1
        count = await journal.letters.purge(chosen, sink)
        print(f"purged {count} dead letter(s)")
        return 0
    finally:
        await journal.aclose()
