"""Templates that name where an event goes: file paths (``{kind}/{date}.jsonl``) and Redis
stream names (``a2p:{kind}``). A template names known fields only; each value substituted is
reduced to characters safe in one path component, so a hostile field (``../../etc``, NUL, a
very long string) never changes what a template can name.
"""

from __future__ import annotations

import hashlib
import os
import re
import string
from collections.abc import Sequence
from datetime import UTC, datetime

from a2pd.events import Event, field_values

__all__ = [
    "TEMPLATE_FIELDS",
    "check_template",
    "fit_name",
    "safe_component",
    "template_fields",
    "template_values",
]

TEMPLATE_FIELDS = ("kind", "date", "hour", "month", "year", "from", "to", "batchId",
                   "direction", "status", "subscriptionId", "ownerId")
_SAFE = re.compile(r"[^A-Za-z0-9+._-]")
_MAX_COMPONENT = 100
#: NAME_MAX on Linux filesystems; a longer name is ENAMETOOLONG, which a retry cannot fix
_MAX_NAME_BYTES = 255

_TIME_FIELDS = {"date": "%Y-%m-%d", "hour": "%H", "month": "%Y-%m", "year": "%Y"}


def template_fields(template: str) -> tuple[str, ...]:
    """The field names a (validated) path template uses, each once."""
    return tuple(dict.fromkeys(name for _, name, _, _ in string.Formatter().parse(template)
                               if name))


def template_values(event: Event, now: datetime | None = None,
                    names: Sequence[str] = TEMPLATE_FIELDS) -> dict[str, str]:
    """The values a path template can use for ``event`` (only ``names``), already safe."""
    values: dict[str, str] = {}
    stamp: datetime | None = None
    for name in names:
        time_format = _TIME_FIELDS.get(name)
        if time_format is not None:
            if stamp is None:
                stamp = (event.time or now or datetime.now(UTC)).astimezone(UTC)
            values[name] = stamp.strftime(time_format)
            continue
        found = field_values(event, name)
        values[name] = safe_component(found[0]) if found else "unknown"
    return values


def check_template(value: str) -> None:
    """A ``{field}`` template (file paths, stream names) names only known fields, plainly;
    ``ValueError`` otherwise."""
    try:
        parsed = list(string.Formatter().parse(value))
    except ValueError as exc:
        raise ValueError(f"bad template: {exc}") from None
    for _literal, name, spec, conv in parsed:
        if name is None:
            continue
        if name not in TEMPLATE_FIELDS:
            raise ValueError(f"unknown field {{{name}}} (known: {', '.join(TEMPLATE_FIELDS)})")
        if spec or conv:
            raise ValueError(f"{{{name}}} takes no format spec or conversion")


def safe_component(value: str) -> str:
    """Make one substituted value safe as (part of) a single path component."""
    cleaned = _SAFE.sub("_", value)[:_MAX_COMPONENT]
    if cleaned in ("", ".", ".."):
        return "_" * max(1, len(cleaned))
    return cleaned


def fit_name(name: str) -> str:
    """``name`` if it fits in NAME_MAX bytes, else its start, ``~`` and a hash of the whole,
    keeping a short extension (distinct long names stay distinct)."""
    encoded = name.encode("utf-8")
    if len(encoded) <= _MAX_NAME_BYTES:
        return name
    digest = hashlib.blake2b(encoded, digest_size=8).hexdigest()
    stem, ext = os.path.splitext(name)
    if len(ext.encode("utf-8")) > 16:
        stem, ext = name, ""
    room = _MAX_NAME_BYTES - len(ext.encode("utf-8")) - len(digest) - 1
    head = stem.encode("utf-8")[:room].decode("utf-8", "ignore")
    return f"{head}~{digest}{ext}"
