"""Configuration: one TOML file → validated, frozen pydantic models.

Rules an operator can rely on:
- every problem is reported at once, each with its dotted key path (``sinks.archive.fsync``);
- unknown keys are errors (a typo never silently does nothing);
- durations are seconds as a number, or a string with a unit: ``"250ms"``, ``"30s"``, ``"5m"``,
  ``"1h"``, ``"7d"``;
- relative paths are relative to the working directory;
- secrets (client secret, JWT) come from, in order of precedence: the environment
  (``A2PD_CLIENT_SECRET``, ``A2PD_JWT``; overrides exist for secrets only), a systemd
  credential in ``$CREDENTIALS_DIRECTORY`` (``client_secret``, ``jwt``), a file named by
  ``*_file``, then the value inline in the file. The credential comes before the file: the
  service's unit loads the credential from that same file (``LoadCredential=``), which its
  dynamic user could not read itself, while a command run by hand reads the file. Secrets
  are ``SecretStr`` and never printed. A sink's ``Options`` model is validated with
  ``context={"env": env, "secrets": ...}``, so a sink resolves its own secrets (the Redis
  password) from the same environment, in the same order;
- ``secrets=False`` checks everything but the secrets' values (``a2pd validate --no-secrets``):
  where a secret comes from is still checked, but nothing is read.

This module reads files and the environment, nothing else.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)

from a2pd.errors import ConfigError, ConfigProblem
from a2pd.names import DIRECTIONS, KINDS, RESERVED_SINK_NAMES
from a2pd.router import ROUTABLE_FIELDS, Route, Router
from a2pd.sinks import SinkOptions, UnknownSinkType, sink_class, sink_types
from a2pd.vocab import (
    Duration,
    DurationOrOff,
    LocalPath,
    SecretUnreadable,
    StrictModel,
    find_secret,
)

__all__ = [
    "DEFAULT_EVENT_FILTERS",
    "SECRET_ENV",
    "BackfillConfig",
    "ConnectionConfig",
    "DefaultRouteConfig",
    "DeliveryConfig",
    "JournalConfig",
    "LogConfig",
    "OpsConfig",
    "PlatformConfig",
    "RouteConfig",
    "Settings",
    "SinkSpec",
    "StateConfig",
    "SubscriptionConfig",
    "from_dict",
    "load",
    "loads",
    "parse_listen",
]

SECRET_ENV = {"client_secret": "A2PD_CLIENT_SECRET", "jwt": "A2PD_JWT"}

DEFAULT_EVENT_FILTERS = (
    "/restapi/v1.0/account/~/a2p-sms/batches",
    "/restapi/v1.0/account/~/a2p-sms/messages?direction=Inbound",
    "/restapi/v1.0/account/~/a2p-sms/messages?direction=Outbound",
    "/restapi/v1.0/account/~/a2p-sms/opt-outs",
)

#: routable fields whose values form a closed set
_CLOSED_VALUES = {
    "kind": frozenset(KINDS),
    "direction": frozenset(DIRECTIONS),
    "active": frozenset({"true", "false"}),
}


class PlatformConfig(StrictModel):
    """Where the RingCentral platform is and who we are to it."""

    server: str = "https://platform.ringcentral.com"
    client_id: str = Field(min_length=1)
    client_secret: SecretStr | None = None
    client_secret_file: LocalPath | None = None
    jwt: SecretStr | None = None
    jwt_file: LocalPath | None = None
    http_timeout: Duration = 30.0
    #: refresh the access token once this fraction of its lifetime has passed
    refresh_at: float = Field(default=0.5, gt=0.0, lt=1.0)
    #: revoke the OAuth session on a clean stop (off: a restart can then recover the session)
    revoke_on_stop: bool = False

    @field_validator("server")
    @classmethod
    def _server_url(cls, value: str) -> str:
        # the reasons never quote the value: it may hold credentials (user:password@)
        if not value.isprintable() or any(ch.isspace() for ch in value):
            raise ValueError("must be a URL without spaces or control characters")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL")
        try:
            parts.port  # noqa: B018 - parsing the port is the check
        except ValueError:
            raise ValueError("has an invalid port") from None
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not carry credentials (user:password@)")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query string or fragment")
        return value.rstrip("/")


class SubscriptionConfig(StrictModel):
    """The event filters of the one subscription a2pd holds."""

    event_filters: list[str] = Field(default_factory=lambda: list(DEFAULT_EVENT_FILTERS),
                                     min_length=1)

    @field_validator("event_filters")
    @classmethod
    def _filters(cls, value: list[str]) -> list[str]:
        for i, item in enumerate(value):
            if not item.startswith("/restapi/"):
                raise ValueError(f"item {i} is not an event filter path (must start /restapi/)")
        if len(set(value)) != len(value):
            raise ValueError("the same filter is listed twice")
        return value


class ConnectionConfig(StrictModel):
    """WebSocket keep-alive, timeouts and reconnect pacing (PROTOCOL.md §3, §8)."""

    heartbeat_interval: Duration = 60.0
    #: also send a Heartbeat when nothing was sent for this long (below the 30 min idle timeout)
    keepalive_interval: Duration = 600.0
    heartbeat_timeout: Duration = 30.0
    connect_timeout: Duration = 30.0
    request_timeout: Duration = 30.0
    backoff_initial: Duration = 1.0
    backoff_max: Duration = 120.0
    #: never ask for a WebSocket token more often than this (Auth rate group: 5/min/user)
    wstoken_min_interval: Duration = 15.0
    max_frame_bytes: int = Field(default=4 * 1024 * 1024, ge=64 * 1024)
    #: frames read off the socket while the journal cannot take them (a stalled disk, a full
    #: journal with full_policy "block"): reading on keeps the gateway's pings answered (it
    #: drops a client that does not pong within 10 s). Past this, reading pauses.
    receive_buffer_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024)
    #: a frame's handling that has waited this long is a stall: from then on the socket is
    #: read on into memory (up to receive_buffer_bytes); well below the 10 s pong deadline
    stall_read_after: Duration = 1.0
    #: a connection that lived at least this long resets the backoff
    stable_after: Duration = 60.0


class StateConfig(StrictModel):
    """Where a2pd keeps what must survive it: the journal (events, cursors, dead letters)."""

    directory: LocalPath = Path("./state")
    #: keep OAuth tokens and the newest wsc (encrypted) so a restart inside the gateway's
    #: recovery window recovers the session and gets what was sent meanwhile
    persist_session: bool = True


class JournalConfig(StrictModel):
    """The durable journal between the socket and the sinks (SQLite, WAL)."""

    #: commits start at most this often: an event after a quiet spell is committed at
    #: once, events arriving within the interval share the next commit (fewer WAL pages per
    #: event); 0: a commit starts as soon as the previous one is done. An event counts as
    #: received once committed; a crash loses only uncommitted appends, which session
    #: recovery replays
    commit_interval: DurationOrOff = 0.005
    #: commit sooner when this many appends are waiting
    commit_max: int = Field(default=1000, ge=1)
    #: fsync at every commit (SQLite synchronous=FULL); off: NORMAL, safe against a process
    #: crash, may lose the last commits on power loss
    fsync: bool = False
    #: bound on journaled events (0: no bound)
    max_events: int = Field(default=1_000_000, ge=0)
    #: events older than this are removed even if a sink has not delivered them (0: never)
    max_age: DurationOrOff = 7 * 24 * 3600.0
    #: when max_events is reached: block (stop reading the socket until sinks catch up) or
    #: drop_oldest (drop the oldest undelivered events, counted and logged as errors)
    full_policy: Literal["block", "drop_oldest"] = "block"
    #: how long a notification uuid is remembered to drop replays and duplicates
    dedup_window: Duration = 24 * 3600.0
    #: how often delivered events are compacted away
    compact_interval: Duration = 1.0


class BackfillConfig(StrictModel):
    """Rebuilding an unrecovered gap from the A2P REST lists (PROTOCOL.md §5.4, §8 step 7)."""

    enabled: bool = True
    #: the window starts this long before the last notification received before the gap
    #: (a state change is stamped before its notification leaves the platform)
    margin: DurationOrOff = 60.0
    #: records asked for per list page (the platform's maximum and default is 1000)
    per_page: int = Field(default=1000, ge=1, le=1000)
    #: a longer gap is cut to its newest part (the lists' default window is 24 h)
    max_window: Duration = 24 * 3600.0
    #: first delay after a failed list call (doubles, capped at retry_max; a 429's
    #: Retry-After is obeyed)
    retry_initial: Duration = 1.0
    retry_max: Duration = 60.0


class DeliveryConfig(StrictModel):
    """How events move from the journal to the sinks."""

    #: most events handed to a sink in one send()
    batch_max: int = Field(default=512, ge=1)
    retry_initial: Duration = 0.5
    retry_max: Duration = 30.0
    #: give up on an event after this many failed attempts and dead-letter it (0: never)
    max_attempts: int = Field(default=0, ge=0)
    #: on SIGTERM/SIGINT, how long sinks get to deliver what is queued
    shutdown_timeout: Duration = 10.0
    #: sinks removed from this file whose undelivered events may be dropped (a start or
    #: reload that removes a sink with a backlog is refused otherwise; a sink's
    #: ``takes_over`` hands the backlog on instead)
    drop_backlog: list[str] = Field(default_factory=list)


class OpsConfig(StrictModel):
    """The ops HTTP endpoint: /metrics, /healthz, /readyz, /status."""

    #: "host:port" to listen on ("" turns the endpoint off); loopback by default
    listen: str = "127.0.0.1:9108"
    #: /readyz fails when a sink's current delivery has been failing/running this long
    ready_max_lag: Duration = 60.0
    #: how often the STATUS= line for systemd is refreshed
    status_interval: Duration = 10.0

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        if value and parse_listen(value) is None:
            raise ValueError("use host:port (e.g. 127.0.0.1:9108, [::1]:9108) or \"\" for off")
        return value

    @property
    def address(self) -> tuple[str, int] | None:
        return parse_listen(self.listen) if self.listen else None


def parse_listen(value: str) -> tuple[str, int] | None:
    """``host:port`` (IPv6 in brackets) → (host, port), or None if it is not one."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class LogConfig(StrictModel):
    """Log level and format (JSON lines under systemd, console on a terminal)."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class RouteConfig(StrictModel):
    """One ``[[routes]]`` entry."""

    name: str = Field(min_length=1)
    sinks: list[str] = Field(min_length=1)
    match: dict[str, str | bool | list[str | bool]] = Field(default_factory=dict)
    stop: bool = False

    @field_validator("match")
    @classmethod
    def _fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if key not in ROUTABLE_FIELDS:
                raise ValueError(f"unknown field {key!r} (known: {', '.join(ROUTABLE_FIELDS)})")
        return value


class DefaultRouteConfig(StrictModel):
    """Where events no route matched go."""

    sinks: list[str] = Field(default_factory=list)


class _RawSettings(StrictModel):
    platform: PlatformConfig
    subscription: SubscriptionConfig = SubscriptionConfig()
    connection: ConnectionConfig = ConnectionConfig()
    state: StateConfig = StateConfig()
    journal: JournalConfig = JournalConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    backfill: BackfillConfig = BackfillConfig()
    log: LogConfig = LogConfig()
    ops: OpsConfig = OpsConfig()
    sinks: dict[str, dict[str, Any]] = Field(min_length=1)
    routes: list[RouteConfig] = Field(default_factory=list)
    default_route: DefaultRouteConfig = DefaultRouteConfig()


@dataclass(frozen=True, slots=True)
class SinkSpec:
    """A configured sink: its name, type and validated options."""

    name: str
    type: str
    options: SinkOptions
    #: removed or renamed sinks whose undelivered events this sink delivers instead
    takes_over: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a2pd runs from, secrets resolved."""

    platform: PlatformConfig
    client_secret: SecretStr
    jwt: SecretStr
    subscription: SubscriptionConfig
    connection: ConnectionConfig
    state: StateConfig
    journal: JournalConfig
    delivery: DeliveryConfig
    log: LogConfig
    ops: OpsConfig
    sinks: dict[str, SinkSpec]
    router: Router
    source: str
    backfill: BackfillConfig
    #: where each platform secret came from, for the log and ``a2pd check`` (never the value):
    #: ``$A2PD_JWT``, ``systemd credential jwt``, ``/etc/a2pd/jwt`` or ``inline``
    secret_sources: dict[str, str] = dataclass_field(default_factory=dict)


def load(path: str | os.PathLike[str], env: Mapping[str, str] | None = None, *,
         secrets: bool = True, sink_secrets: bool | None = None) -> Settings:
    """Read and validate a config file; raise ``ConfigError`` listing every problem.
    ``secrets=False``: leave the secrets unread (the Settings then carry empty ones and are
    good only for a check, never to run). ``sink_secrets`` (default: ``secrets``) for the
    sinks' secrets alone: ``a2pd check`` reads the platform's and never uses a sink."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        problem = ConfigProblem("", f"cannot read: {exc.strerror or exc}")
        raise ConfigError([problem], source) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigProblem("", "not UTF-8 text")], source) from exc
    return loads(text, source=source, env=env, secrets=secrets, sink_secrets=sink_secrets)


def loads(text: str, *, source: str = "<config>", env: Mapping[str, str] | None = None,
          overrides: Mapping[str, Any] | None = None, secrets: bool = True,
          sink_secrets: bool | None = None) -> Settings:
    """Validate TOML text. ``overrides`` replaces whole top-level keys of sections (``{"platform":
    {"server": ...}}`` merges into ``[platform]``), used by ``a2pd demo``."""
    env = os.environ if env is None else env
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigProblem("", f"not valid TOML: {exc}")], source) from exc
    for section, values in (overrides or {}).items():
        merged = dict(data.get(section, {}))
        merged.update(values)
        data[section] = merged
    return from_dict(data, source=source, env=env, secrets=secrets, sink_secrets=sink_secrets)


def from_dict(data: dict[str, Any], *, source: str, env: Mapping[str, str],
              secrets: bool = True, sink_secrets: bool | None = None) -> Settings:
    """Validate an already-parsed config document."""
    if sink_secrets is None:
        sink_secrets = secrets
    problems: list[ConfigProblem] = []
    sources: dict[str, str] = {}
    known_secrets = _secret_values(data, env)
    try:
        raw = _RawSettings.model_validate(data)
    except ValidationError as exc:
        problems.extend(_problems(exc))
        # Still check the sink tables so one run reports everything it can.
        sinks_data = data.get("sinks")
        if isinstance(sinks_data, dict):
            _build_sinks(sinks_data, problems, env, sink_secrets)
        raise ConfigError(_masked(problems, known_secrets), source) from None

    if secrets:
        client_secret = _secret(raw.platform, "client_secret", env, problems, sources)
        jwt = _secret(raw.platform, "jwt", env, problems, sources)
    else:
        client_secret = jwt = SecretStr("")
        for name in SECRET_ENV:
            if getattr(raw.platform, name) is not None and \
                    getattr(raw.platform, f"{name}_file") is not None:
                problems.append(ConfigProblem(f"platform.{name}",
                                              f"set either {name} or {name}_file, not both"))
    known_secrets.extend(s.get_secret_value() for s in (client_secret, jwt) if s is not None)
    sinks = _build_sinks(raw.sinks, problems, env, sink_secrets)
    router = _build_router(raw, problems)
    if problems:
        raise ConfigError(_masked(problems, known_secrets), source)
    assert client_secret is not None
    assert jwt is not None
    return Settings(
        platform=raw.platform,
        client_secret=client_secret,
        jwt=jwt,
        subscription=raw.subscription,
        connection=raw.connection,
        state=raw.state,
        journal=raw.journal,
        delivery=raw.delivery,
        log=raw.log,
        ops=raw.ops,
        sinks=sinks,
        router=router,
        source=source,
        backfill=raw.backfill,
        secret_sources=sources,
    )


def _secret_values(data: dict[str, Any], env: Mapping[str, str]) -> list[str]:
    """Every secret the document or the environment gives, to keep out of error messages."""
    values = [env.get(name, "").strip() for name in SECRET_ENV.values()]
    platform = data.get("platform")
    if isinstance(platform, dict):
        values.extend(str(platform[name]).strip() for name in SECRET_ENV
                      if isinstance(platform.get(name), str))
    return [value for value in values if len(value) >= 4]


def _masked(problems: list[ConfigProblem], secrets: list[str]) -> list[ConfigProblem]:
    """``problems`` with any secret value replaced by ``***`` (a validator may quote a value,
    and a secret pasted into the wrong key is still a secret)."""
    secrets = [secret for secret in secrets if secret]
    if not secrets:
        return problems
    longest_first = sorted(set(secrets), key=len, reverse=True)
    masked = []
    for problem in problems:
        key, reason = problem.key, problem.reason
        for secret in longest_first:
            key = key.replace(secret, "***")
            reason = reason.replace(secret, "***")
        masked.append(ConfigProblem(key, reason))
    return masked


def _problems(exc: ValidationError, prefix: str = "", *,
              model: type[BaseModel] | None = None) -> list[ConfigProblem]:
    """One problem per validation error. An unknown key gets a "did you mean" from the keys
    its table accepts in ``model`` (a sink's options), else in the whole document's model."""
    found = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = [str(p) for p in err["loc"]]
        key = ".".join([prefix, *loc] if prefix else loc)
        # a validator's ValueError reads "Value error, <our text>": the prefix says nothing
        reason = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            reason = "unknown key" + _did_you_mean(loc[-1], _known_keys(
                model or _RawSettings, err["loc"][:-1]))
        elif err["type"] == "missing":
            reason = "required key is missing"
        found.append(ConfigProblem(key, reason))
    return found


def _known_keys(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The keys the table at ``loc`` inside ``model`` accepts (empty when unknown)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            return []
        current = _model_in(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or name for name, f in current.model_fields.items()]
    return []


def _model_in(annotation: Any) -> Any:
    """The BaseModel inside an annotation such as ``list[RouteConfig]`` or ``X | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _did_you_mean(word: str, known: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``known``, or ``""``."""
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _secret(platform: PlatformConfig, name: str, env: Mapping[str, str],
            problems: list[ConfigProblem], sources: dict[str, str]) -> SecretStr | None:
    """The secret ``name`` from its first source (``sources[name]`` says which)."""
    key = f"platform.{name}"
    env_name = SECRET_ENV[name]
    inline: SecretStr | None = getattr(platform, name)
    try:
        found = find_secret(name, env, env_var=env_name, credential=name,
                            file=getattr(platform, f"{name}_file"),
                            inline=inline.get_secret_value() if inline is not None else None)
    except SecretUnreadable as exc:
        where = {"credential": f"{key} (systemd credential)", "file": f"{key}_file"}
        problems.append(ConfigProblem(where.get(exc.source, key), str(exc)))
        return None
    if found is None:
        problems.append(ConfigProblem(
            key,
            f"missing: set ${env_name}, a systemd credential named {name!r}, {name}_file, or "
            f"{name}"))
        return None
    sources[name] = found.source
    return SecretStr(found.value)


def _build_sinks(tables: dict[str, Any], problems: list[ConfigProblem],
                 env: Mapping[str, str], secrets: bool = True) -> dict[str, SinkSpec]:
    specs: dict[str, SinkSpec] = {}
    for name, table in tables.items():
        key = f"sinks.{name}"
        if not re.match(r"^[A-Za-z0-9_-]+$", name):
            problems.append(ConfigProblem(key, "sink names use letters, digits, '_' and '-'"))
            continue
        if name in RESERVED_SINK_NAMES:
            problems.append(ConfigProblem(key, f"{name!r} is reserved (a dead-letter source)"))
            continue
        if not isinstance(table, dict):
            problems.append(ConfigProblem(key, "must be a table"))
            continue
        type_name = table.get("type")
        if not isinstance(type_name, str):
            problems.append(ConfigProblem(f"{key}.type", "required key is missing"))
            continue
        try:
            cls = sink_class(type_name)
        except UnknownSinkType as exc:
            problems.append(ConfigProblem(f"{key}.type",
                                          str(exc) + _did_you_mean(type_name, sink_types())))
            continue
        takes_over = table.get("takes_over", [])
        if isinstance(takes_over, str):
            takes_over = [takes_over]
        if not isinstance(takes_over, list) or not all(
                isinstance(old, str) and re.match(r"^[A-Za-z0-9_-]+$", old) and old != name
                for old in takes_over):
            problems.append(ConfigProblem(f"{key}.takes_over",
                                          "a list of other sinks' names"))
            takes_over = []
        options = {k: v for k, v in table.items() if k not in ("type", "takes_over")}
        try:
            # the context lets an Options model resolve secrets from the same environment
            context = {"env": env, "secrets": secrets}
            specs[name] = SinkSpec(name, type_name,
                                   cls.Options.model_validate(options, context=context),
                                   tuple(takes_over))
        except ValidationError as exc:
            problems.extend(_problems(exc, key, model=cls.Options))
    claimed: dict[str, str] = {}
    for name, spec in specs.items():
        for old in spec.takes_over:
            if old in tables:
                problems.append(ConfigProblem(
                    f"sinks.{name}.takes_over",
                    f"{old!r} is still configured (remove it to hand its events over)"))
            elif old in claimed:
                problems.append(ConfigProblem(
                    f"sinks.{name}.takes_over", f"{old!r} is taken over by {claimed[old]!r} too"))
            claimed[old] = name
    return specs


def _build_router(raw: _RawSettings, problems: list[ConfigProblem]) -> Router:
    routes = []
    seen: set[str] = set()
    for i, rc in enumerate(raw.routes):
        key = f"routes[{i}]"
        if rc.name in seen:
            problems.append(ConfigProblem(f"{key}.name", f"duplicate route name {rc.name!r}"))
        seen.add(rc.name)
        for sink in rc.sinks:
            if sink not in raw.sinks:
                problems.append(ConfigProblem(f"{key}.sinks", f"no sink named {sink!r}"
                                              + _did_you_mean(sink, raw.sinks)))
        match = {field: frozenset(_as_strings(v)) for field, v in rc.match.items()}
        for field, accepted in match.items():
            if not accepted:
                problems.append(ConfigProblem(f"{key}.match.{field}",
                                              "an empty list matches nothing"))
            allowed = _CLOSED_VALUES.get(field)
            if allowed is not None and not accepted <= allowed:
                bad = ", ".join(sorted(accepted - allowed))
                problems.append(ConfigProblem(
                    f"{key}.match.{field}",
                    f"unknown value {bad} (known: {', '.join(sorted(allowed))})"))
        routes.append(Route(rc.name, tuple(rc.sinks), match, rc.stop))
    for sink in raw.default_route.sinks:
        if sink not in raw.sinks:
            problems.append(ConfigProblem("default_route.sinks", f"no sink named {sink!r}"
                                          + _did_you_mean(sink, raw.sinks)))
    if not raw.routes and not raw.default_route.sinks:
        problems.append(ConfigProblem("default_route.sinks",
                                      "no routes and no default route: events would go nowhere"))
    return Router(tuple(routes), tuple(raw.default_route.sinks))


def _as_strings(value: str | bool | list[str | bool]) -> list[str]:
    items = value if isinstance(value, list) else [value]
    return [("true" if v else "false") if isinstance(v, bool) else v for v in items]
