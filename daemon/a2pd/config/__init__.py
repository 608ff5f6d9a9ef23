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

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError

from a2pd.config.problems import did_you_mean, masked, problems_of
from a2pd.config.sections import (
    DEFAULT_EVENT_FILTERS,
    BackfillConfig,
    ConnectionConfig,
    DefaultRouteConfig,
    DeliveryConfig,
    Document,
    JournalConfig,
    LogConfig,
    OpsConfig,
    PlatformConfig,
    RouteConfig,
    StateConfig,
    SubscriptionConfig,
    parse_listen,
)
from a2pd.errors import ConfigError, ConfigProblem
from a2pd.names import DIRECTIONS, KINDS, RESERVED_SINK_NAMES
from a2pd.router import Route, Router
from a2pd.sinks import SinkOptions, UnknownSinkType, sink_class, sink_types
from a2pd.vocab import SecretUnreadable, find_secret

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

#: routable fields whose values form a closed set
_CLOSED_VALUES = {
    "kind": frozenset(KINDS),
    "direction": frozenset(DIRECTIONS),
    "active": frozenset({"true", "false"}),
}


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
        raw = Document.model_validate(data)
    except ValidationError as exc:
        problems.extend(problems_of(exc, Document))
        # Still check the sink tables so one run reports everything it can.
        sinks_data = data.get("sinks")
        if isinstance(sinks_data, dict):
            _build_sinks(sinks_data, problems, env, sink_secrets)
        raise ConfigError(masked(problems, known_secrets), source) from None

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
        raise ConfigError(masked(problems, known_secrets), source)
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
                                          str(exc) + did_you_mean(type_name, sink_types())))
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
            problems.extend(problems_of(exc, cls.Options, key))
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


def _build_router(raw: Document, problems: list[ConfigProblem]) -> Router:
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
                                              + did_you_mean(sink, raw.sinks)))
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
                                          + did_you_mean(sink, raw.sinks)))
    if not raw.routes and not raw.default_route.sinks:
        problems.append(ConfigProblem("default_route.sinks",
                                      "no routes and no default route: events would go nowhere"))
    return Router(tuple(routes), tuple(raw.default_route.sinks))


def _as_strings(value: str | bool | list[str | bool]) -> list[str]:
    items = value if isinstance(value, list) else [value]
    return [("true" if v else "false") if isinstance(v, bool) else v for v in items]
