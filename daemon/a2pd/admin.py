"""``a2pd journal …`` and ``a2pd dead-letters …``: look into and act on the journal.

They open the journal file directly, so they work whether the daemon is stopped or running
(SQLite WAL lets a second process read, and write briefly). They need only the state
directory: from ``--state-dir``, or ``[state] directory`` of the config file (read without
validating the rest, so a config whose secrets are not available here still works).
"""

from __future__ import annotations

import json
import sys
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from a2pd.errors import ConfigError, ConfigProblem, one_line
from a2pd.journal import DeadLetter, Journal


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
        stats = await journal.stats()
    finally:
        await journal.aclose()
    stats["oldest_received"] = _time(stats["oldest_received"])
    for gap in stats["gaps"]:
        gap["start"], gap["opened"] = _time(gap["start"]), _time(gap["opened"])
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


async def dead_letters(directory: Path, action: str, ids: list[int], all_: bool,
                       sink: str | None, as_json: bool) -> int:
    journal = await Journal.open_for_admin(directory / "journal.db")
    try:
        if action == "list":
            letters = await journal.dead_letters(sink)
            if as_json:
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
        if action == "show":
            letters = [d for d in await journal.dead_letters(sink) if d.id in ids]
            if not letters:
                print(f"a2pd: no dead letter with id {ids}", file=sys.stderr)
                return 1
            for d in letters:
                summary = _letter_summary(d)
                try:
                    summary["raw"] = d.raw.decode("utf-8")
                except UnicodeDecodeError:
                    summary["raw_hex"] = d.raw.hex()
                print(json.dumps(summary, indent=2, ensure_ascii=False))
            return 0
        if not ids and not all_:
            print(f"a2pd: dead-letters {action} needs ids or --all", file=sys.stderr)
            return 2
        chosen = None if all_ else ids
        if action == "replay":
            count = await journal.replay_dead_letters(chosen, sink)
            print(f"requeued {count} dead letter(s) for delivery")
        else:
            count = await journal.purge_dead_letters(chosen, sink)
            print(f"purged {count} dead letter(s)")
        return 0
    finally:
        await journal.aclose()
