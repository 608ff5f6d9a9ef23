"""Bad configurations: each is exit 78 naming the key with a one-line reason, no traceback,
no secret echoed. Hand-written cases run the real CLI (`validate`, some also `run`);
hypothesis-generated documents go through ``config.loads`` (a subprocess each is too slow).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from a2pd import config
from a2pd.errors import ConfigError, ConfigProblem

SECRET = "sk_live_51HqLyjWDarjtT1zdp7dcXDEADBEEF"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MDAxMjM0NTY3ODkifQ.c2VjcmV0LXNpZ25hdHVyZQ"

BASE: dict[str, Any] = {
    "platform": {"server": "https://platform.ringcentral.com", "client_id": "id",
                 "client_secret": SECRET, "jwt": JWT},
    "connection": {"heartbeat_interval": "60s", "max_frame_bytes": 4194304},
    "state": {"directory": "/tmp/a2pd-hostile-state"},
    "journal": {"commit_interval": "50ms", "full_policy": "block"},
    "delivery": {"batch_max": 512},
    "log": {"level": "info"},
    "sinks": {"archive": {"type": "file", "directory": "/tmp/a2pd-hostile-events",
                          "path": "{kind}/{date}.jsonl"},
              "out": {"type": "stdout"}},
    "routes": [{"name": "failures", "match": {"kind": "outbound"}, "sinks": ["archive"]}],
    "default_route": {"sinks": ["out"]},
}


def toml_value(value: Any) -> str:
    """A TOML literal for ``value`` (inline tables and arrays; JSON strings are TOML basic
    strings once non-BMP characters are written as themselves)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)} = {toml_value(v)}"
                               for k, v in value.items()) + "}"
    raise TypeError(type(value))


def to_toml(doc: dict[str, Any]) -> str:
    """Top-level keys as `key = value` lines (inline tables): enough for any document."""
    return "\n".join(f"{json.dumps(k, ensure_ascii=False)} = {toml_value(v)}"
                     for k, v in doc.items()) + "\n"


def assert_clear(exc: ConfigError, *secrets: str) -> None:
    """Every problem is one line with a reason, and no secret appears anywhere."""
    assert exc.problems
    text = str(exc)
    assert "\n" not in text
    for problem in exc.problems:
        assert problem.reason
        assert problem.reason.isprintable()
        assert problem.key.isprintable()
    for secret in secrets:
        assert secret not in text


def test_the_base_document_is_valid() -> None:
    """The document the generated cases mutate is itself valid (guards the generator)."""
    settings_ = config.loads(to_toml(BASE), env={})
    assert settings_.client_secret.get_secret_value() == SECRET


# -- generated documents ----------------------------------------------------------------------

toml_scalars = st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1) | \
    st.floats() | st.text(st.characters(codec="utf-8"), max_size=30) | \
    st.sampled_from([SECRET, JWT, "", "-1s", "1e999", "http://", "ftp://x", "http://a b",
                     "https://user:pw@host", "http://h:99999", "/dev/zero", "a\x00b", "~",
                     "{kind}/../x", "\n", "block", "file", "stdout", "sinks", "archive"])
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.text(st.characters(codec="utf-8"), max_size=10), inner, max_size=3),
    max_leaves=8,
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(doc, dict):
        for key, value in doc.items():
            found.extend(_paths(value, (*prefix, key)))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            found.extend(_paths(value, (*prefix, i)))
    return found


PATHS = _paths(BASE)


@st.composite
def mutated_documents(draw: st.DrawFn) -> dict[str, Any]:
    """The base document with a few keys replaced, removed, or added."""
    doc = json.loads(json.dumps(BASE))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(PATHS))
        parent: Any = doc
        try:
            for part in path[:-1]:
                parent = parent[part]
            last = path[-1]
            action = draw(st.sampled_from(["replace", "remove", "add"]))
            if action == "replace":
                parent[last] = draw(toml_values)
            elif action == "remove" and isinstance(parent, dict):
                parent.pop(last, None)
            elif isinstance(parent, dict):
                parent[draw(st.text(st.characters(codec="utf-8"), min_size=1,
                                    max_size=12))] = draw(toml_values)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this path
    return doc


@given(mutated_documents())
def test_generated_configs_load_or_fail_clearly(doc: dict[str, Any]) -> None:
    """Any mutation of a valid document loads, or raises ConfigError whose problems are
    one line each, with a key path, and never quote a secret."""
    try:
        config.loads(to_toml(doc), env={})
    except ConfigError as exc:
        assert_clear(exc, SECRET, JWT)
        for problem in exc.problems:
            if not problem.reason.startswith("not valid TOML"):
                assert problem.key


@settings(max_examples=100)
@given(st.sampled_from(["platform", "connection", "journal", "delivery", "log", "state",
                        "subscription"]),
       st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1,
               max_size=12), st.sampled_from([SECRET, JWT]))
def test_a_secret_in_any_wrong_place_is_never_echoed(section: str, key: str,
                                                     secret: str) -> None:
    """A secret pasted as the value of an unknown or wrong-typed key is masked."""
    doc = json.loads(json.dumps(BASE))
    table = doc.setdefault(section, {})
    target = key if key not in table else key + "x"
    table[target] = secret
    table["event_filters" if section == "subscription" else target] = [secret]
    with pytest.raises(ConfigError) as info:
        config.loads(to_toml(doc), env={})
    assert_clear(info.value, SECRET, JWT)


def test_problems_are_one_line_whatever_the_key() -> None:
    """A key holding a newline or NUL is shown escaped (regression: a quoted TOML key with
    a newline split the error over lines)."""
    problem = ConfigProblem('sinks.a\nb\x00c', "reason\r\nmore")
    assert str(problem) == "sinks.a\\nb\\x00c: reason\\r\\nmore"


# -- the real CLI -----------------------------------------------------------------------------

GOOD_TOML = to_toml(BASE)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "a2pd", *args], capture_output=True,
                          text=True, timeout=60, check=False, env=env)


def with_changes(doc_changes: dict[tuple[str, ...], Any]) -> dict[str, Any]:
    doc = json.loads(json.dumps(BASE))
    for path, value in doc_changes.items():
        parent = doc
        for part in path[:-1]:
            parent = parent.setdefault(part, {})
        if value is REMOVE:
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = value
    return doc


REMOVE = object()

#: (case, document changes or raw text, the key path the error names, words of the reason)
CLI_CASES: list[tuple[str, Any, str, str]] = [
    ("wrong type", {("connection", "heartbeat_interval"): True},
     "connection.heartbeat_interval", "expected seconds or a duration"),
    ("boolean for a number", {("delivery", "batch_max"): True}, "delivery.batch_max",
     "valid integer"),
    ("secret in a wrong-typed field", {("journal", "commit_max"): SECRET},
     "journal.commit_max", "valid integer"),
    ("unknown key", {("platform", "colour"): "blue"}, "platform.colour", "unknown key"),
    ("unknown section", {("metrics",): {"port": 9}}, "metrics", "unknown key"),
    ("bad URL scheme", {("platform", "server"): "ftp://platform"}, "platform.server",
     "http:// or https:// URL"),
    ("URL with a space", {("platform", "server"): "https://plat form.com"},
     "platform.server", "without spaces"),
    ("URL with credentials", {("platform", "server"): f"https://u:{SECRET}@h"},
     "platform.server", "credentials"),
    ("URL with a bad port", {("platform", "server"): "https://h:99999"}, "platform.server",
     "invalid port"),
    ("missing secret", {("platform", "jwt"): REMOVE}, "platform.jwt", "A2PD_JWT"),
    ("missing secret file", {("platform", "client_secret"): REMOVE,
                             ("platform", "client_secret_file"): "/nonexistent/secret"},
     "platform.client_secret_file", "cannot read"),
    ("secret file is a directory", {("platform", "client_secret"): REMOVE,
                                    ("platform", "client_secret_file"): "/"},
     "platform.client_secret_file", "cannot read"),
    ("secret file is a device", {("platform", "client_secret"): REMOVE,
                                 ("platform", "client_secret_file"): "/dev/zero"},
     "platform.client_secret_file", "larger than"),
    ("NUL in a path", {("state", "directory"): "/tmp/a\x00b"}, "state.directory", "NUL"),
    ("NUL in a secret file path", {("platform", "client_secret"): REMOVE,
                                   ("platform", "client_secret_file"): "/tmp/a\x00b"},
     "platform.client_secret_file", "NUL"),
    ("route to an unknown sink", {("routes",): [{"name": "r", "sinks": ["nowhere"]}]},
     "routes[0].sinks", "no sink named 'nowhere'"),
    ("default route to an unknown sink", {("default_route", "sinks"): ["ghost"]},
     "default_route.sinks", "no sink named 'ghost'"),
    ("sink name with a newline", {("sinks", "bad\nname"): {"type": "stdout"}},
     "sinks.bad\\nname", "letters, digits"),
    ("duplicate sink", GOOD_TOML + '\n[sinks.archive]\ntype = "stdout"\n', "",
     "not valid TOML"),
    ("duplicate route name", {("routes",): [{"name": "r", "sinks": ["out"]},
                                            {"name": "r", "sinks": ["out"]}]},
     "routes[1].name", "duplicate route name"),
    ("bad event filter", {("subscription", "event_filters"): [SECRET]},
     "subscription.event_filters", "not an event filter path"),
    ("not UTF-8", b"\xff\xfe[platform]", "", "not UTF-8"),
]


@pytest.mark.parametrize(("case", "change", "key", "reason"), CLI_CASES,
                         ids=[c[0] for c in CLI_CASES])
def test_validate_exits_78_with_the_key_and_one_line(tmp_path: Path, case: str, change: Any,
                                                     key: str, reason: str) -> None:
    """`a2pd validate` on each bad config: exit 78, the key and a one-line reason, no
    traceback, no secret."""
    path = tmp_path / "a2pd.toml"
    if isinstance(change, bytes):
        path.write_bytes(change)
    elif isinstance(change, str):
        path.write_text(change)
    else:
        path.write_text(to_toml(with_changes(change)))
    result = run_cli("validate", str(path))
    assert result.returncode == 78, result.stderr
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stderr + result.stdout
    assert JWT not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert lines[0].startswith("a2pd: invalid configuration")
    problems = [line.strip() for line in lines[1:]]
    expected = f"{key}: " if key else ""
    matching = [p for p in problems if p.startswith(expected) and reason in p]
    assert matching, (case, problems)


@pytest.mark.parametrize("case", ["wrong type", "NUL in a path", "URL with credentials",
                                  "secret file is a device"])
def test_run_exits_78_before_starting(tmp_path: Path, case: str) -> None:
    """`a2pd run` refuses the same configs the same way, before touching anything."""
    [(_, change, key, reason)] = [c for c in CLI_CASES if c[0] == case]
    path = tmp_path / "a2pd.toml"
    path.write_text(to_toml(with_changes(change)))
    result = run_cli("run", "-c", str(path))
    assert result.returncode == 78, result.stderr
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stderr + result.stdout
    assert any(line.strip().startswith(f"{key}: ") and reason in line
               for line in result.stderr.splitlines())
