"""The daemon's shared vocabulary: the small types and helpers every layer speaks.

Durations and paths as the config writes them, the strict model base of every config table
(the daemon's and each sink's), the one resolver and reader of secrets, the one reading of
a Retry-After header, the error code of a RingCentral error body and URLs fit for a log.

Imports nothing else of the daemon (tests/test_layers.py holds it to that): config, the
sinks, auth and backfill all build on it, so none of them reaches sideways into another
for these.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    model_validator,
)

__all__ = [
    "MAX_SECRET_FILE",
    "UNREAD_SECRET",
    "Duration",
    "DurationOrOff",
    "FoundSecret",
    "LocalPath",
    "Secret",
    "SecretUnreadable",
    "StrictModel",
    "error_code",
    "find_secret",
    "parse_duration",
    "parse_retry_after",
    "read_secret_file",
    "redact_url",
    "refuse_bool_numbers",
    "secrets_wanted",
]

# -- durations and paths ---------------------------------------------------------------------

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(value: Any) -> Any:
    """Seconds from ``"250ms"``, ``"30s"``, ``"5m"``, ``"1h"``, ``"7d"`` or a bare number in
    a string; anything not a string is left for the number check."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError("expected seconds or a duration such as '250ms', '30s', '5m', '1d'")
        return float(match.group(1)) * _UNITS[match.group(2) or "s"]
    return value


def _local_path(value: Any) -> Any:
    # the OS refuses NUL in a path with ValueError, far from here (and after start-up)
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("a path must not contain a NUL character")
    return value


#: a duration in seconds, more than 0
Duration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
#: a duration where 0 means "off"
DurationOrOff = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
#: a filesystem path (NUL refused at load time, not at first use)
LocalPath = Annotated[Path, BeforeValidator(_local_path)]


# -- the strict model base -------------------------------------------------------------------


def refuse_bool_numbers(model: type[BaseModel], data: Any) -> Any:
    """``data`` with ``true``/``false`` given for a number turned into text, so validation
    reports that key as not a number (pydantic's lax mode would read ``true`` as 1)."""
    if not isinstance(data, dict):
        return data
    fields = model.model_fields
    return {key: str(value).lower()
            if isinstance(value, bool) and key in fields
            and fields[key].annotation in (int, float) else value
            for key, value in data.items()}


class StrictModel(BaseModel):
    """A config table: frozen, unknown keys refused, ``true`` never read as a number."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, data: Any) -> Any:
        return refuse_bool_numbers(cls, data)


# -- secrets ---------------------------------------------------------------------------------

#: a secret file larger than this is refused unread (a path to /dev/zero, a log file)
MAX_SECRET_FILE = 64 * 1024
#: what a secret option holds when the config is checked without its secrets
UNREAD_SECRET = "(not read: a2pd validate --no-secrets)"  # noqa: S105 - a placeholder


class SecretUnreadable(ValueError):
    """A secret's source is set but gives no secret. ``source`` says which one: ``both``
    (inline and file given), ``env``, ``credential`` or ``file``. The text names the source,
    never the value."""

    def __init__(self, source: Literal["both", "env", "credential", "file"], text: str) -> None:
        super().__init__(text)
        self.source = source


def read_secret_file(path: Path) -> str:
    """A secret kept in a file, stripped; ``ValueError`` naming the path (never the value).
    Files over ``MAX_SECRET_FILE`` bytes are refused without reading the rest. The one
    reader of secret files: the platform's secrets and every sink's."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_SECRET_FILE + 1)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or 'error'}") from None
    if len(data) > MAX_SECRET_FILE:
        raise ValueError(f"{path} is larger than {MAX_SECRET_FILE} bytes")
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    if not text:
        raise ValueError(f"{path} is empty")
    return text


class FoundSecret(NamedTuple):
    """A secret and where it came from: ``$VAR``, ``systemd credential NAME``, a path or
    ``inline`` (for the log; never the value)."""

    value: str
    source: str


def find_secret(name: str, env: Mapping[str, str], *, env_var: str | None = None,
                credential: str | None = None, file: Path | None = None,
                inline: str | None = None) -> FoundSecret | None:
    """The secret ``name`` from the first of its sources that is set, in the one order every
    secret follows: the environment variable ``env_var``, the systemd credential
    ``credential`` (a file in ``$CREDENTIALS_DIRECTORY``, when it exists), the file
    ``file``, the ``inline`` value. None when no source is set; ``SecretUnreadable`` when
    the first one set gives nothing (empty, unreadable, too large) or when both ``inline``
    and ``file`` are given."""
    if inline is not None and file is not None:
        raise SecretUnreadable("both", f"set either {name} or {name}_file, not both")
    if env_var is not None and env_var in env:
        value = env[env_var].strip()
        if not value:
            raise SecretUnreadable("env", f"${env_var} is set but empty")
        return FoundSecret(value, f"${env_var}")
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if credential is not None and cred_dir and (Path(cred_dir) / credential).exists():
        return FoundSecret(_read(Path(cred_dir) / credential, "credential"),
                           f"systemd credential {credential}")
    if file is not None:
        return FoundSecret(_read(file, "file"), str(file))
    if inline is not None:
        return FoundSecret(inline, "inline")
    return None


def _read(path: Path, source: Literal["credential", "file"]) -> str:
    try:
        return read_secret_file(path)
    except ValueError as exc:
        raise SecretUnreadable(source, str(exc)) from None


def secrets_wanted(info: ValidationInfo) -> bool:
    """False when the config is being checked without reading its secrets
    (``a2pd validate --no-secrets``): an Options model then leaves its secrets unread."""
    context = info.context if isinstance(info.context, Mapping) else {}
    return context.get("secrets", True) is not False


def _context_env(info: ValidationInfo) -> Mapping[str, str]:
    context = info.context if isinstance(info.context, Mapping) else {}
    env = context.get("env")
    return env if isinstance(env, Mapping) else os.environ


def _secret_option(value: Any, info: ValidationInfo) -> Any:
    """A secret option: a string, or a table naming exactly one source — ``{ env = "VAR" }``,
    ``{ file = "/abs/path" }`` or ``{ credential = "name" }`` (a systemd credential in
    $CREDENTIALS_DIRECTORY). Errors name the source, never the value."""
    if not isinstance(value, dict):
        return value
    unknown = set(value) - {"env", "file", "credential"}
    if unknown or len(value) != 1:
        raise ValueError("give a string or exactly one of env, file, credential")
    [(source, where)] = value.items()
    if not isinstance(where, str) or not where:
        raise ValueError(f"{source} must be a non-empty string")
    if source == "file" and not Path(where).is_absolute():
        raise ValueError(f"{where} must be an absolute path")
    if not secrets_wanted(info):
        return UNREAD_SECRET
    env = _context_env(info)
    if source == "env":
        found = find_secret(where, env, env_var=where)
        if found is None:
            raise ValueError(f"${where} is not set")
    elif source == "file":
        return _read(Path(where), "file")
    else:
        if not env.get("CREDENTIALS_DIRECTORY"):
            raise ValueError("$CREDENTIALS_DIRECTORY is not set (systemd LoadCredential=)")
        found = find_secret(where, env, credential=where)
        if found is None:
            raise ValueError(f"no systemd credential {where!r} in $CREDENTIALS_DIRECTORY")
    return found.value


#: a secret sink option (tokens, passwords, signing keys): inline or from env/file/credential
Secret = Annotated[SecretStr, BeforeValidator(_secret_option)]


# -- HTTP and the platform's answers ---------------------------------------------------------

_DELTA_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds (ASCII digits; a fraction is
    tolerated) or an HTTP-date (``now`` is the wall clock); a date in the past is 0. None
    when the header is absent or says nothing usable: the caller picks its own default and
    cap."""
    if value is None:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):  # not float(): "nan", "-5", "1e9", "²" are no delays
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now)


def error_code(body: Any) -> str | None:
    """The error code of a RingCentral error body (REST, OAuth or over the socket):
    ``errorCode``, else OAuth's ``error``, else the first of ``errors[].errorCode``."""
    if not isinstance(body, dict):
        return None
    for key in ("errorCode", "error"):
        code = body.get(key)
        if isinstance(code, str):
            return code
    errors = body.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        inner = errors[0].get("errorCode")
        return inner if isinstance(inner, str) else None
    return None


def redact_url(url: str) -> str:
    """``url`` without user info or query (either may carry a credential), for logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
