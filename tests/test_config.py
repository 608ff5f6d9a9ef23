"""Configuration: every problem with its key path, unknown keys refused, secret sources."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from a2pd import config
from a2pd.errors import ConfigError
from a2pd.sinks.file import FileOptions

GOOD = """
[platform]
server = "http://127.0.0.1:1"
client_id = "id"
client_secret = "inline-secret"
jwt = "inline-jwt"

[sinks.out]
type = "stdout"

[sinks.files]
type = "file"
directory = "/tmp/a2pd-test-events"
fsync = "always"

[[routes]]
name = "failures"
match = { kind = "outbound", status = ["DeliveryFailed"] }
sinks = ["files"]

[default_route]
sinks = ["out"]
"""


def keys(exc: ConfigError) -> list[str]:
    return [p.key for p in exc.problems]


def test_good_config_loads() -> None:
    """A valid file gives Settings with sinks, routes and defaults filled in."""
    settings = config.loads(GOOD, env={})
    assert settings.platform.client_id == "id"
    assert settings.client_secret.get_secret_value() == "inline-secret"
    assert set(settings.sinks) == {"out", "files"}
    assert isinstance(settings.sinks["files"].options, FileOptions)
    assert settings.router.default == ("out",)
    assert settings.subscription.event_filters == list(config.DEFAULT_EVENT_FILTERS)
    assert settings.connection.heartbeat_interval == 60.0


def test_durations_accept_units() -> None:
    """Durations take numbers or strings with ms/s/m/h."""
    text = GOOD + '\n[connection]\nheartbeat_interval = "2m"\nheartbeat_timeout = "1500ms"\n'
    settings = config.loads(text, env={})
    assert settings.connection.heartbeat_interval == 120.0
    assert settings.connection.heartbeat_timeout == 1.5


def test_every_problem_is_reported_with_its_key() -> None:
    """Unknown keys, wrong types, bad sink options and dangling routes are all listed."""
    text = GOOD.replace('fsync = "always"', 'fsync = "sometimes"\ncolour = 1') + """
[connection]
heartbeat_interval = "soon"
retries = 3

[[routes]]
name = "failures"
sinks = ["nowhere"]
"""
    with pytest.raises(ConfigError) as info:
        config.loads(text, env={})
    found = keys(info.value)
    assert "connection.heartbeat_interval" in found
    assert "connection.retries" in found
    assert "sinks.files.fsync" in found
    assert "sinks.files.colour" in found


def test_cross_references_are_checked() -> None:
    """Routes must name existing sinks and route names must be unique."""
    text = GOOD + '\n[[routes]]\nname = "failures"\nsinks = ["nowhere"]\n'
    with pytest.raises(ConfigError) as info:
        config.loads(text, env={})
    reasons = {str(p) for p in info.value.problems}
    assert "routes[1].name: duplicate route name 'failures'" in reasons
    assert "routes[1].sinks: no sink named 'nowhere'" in reasons


def test_route_values_and_reserved_names_are_checked() -> None:
    """Closed-set match values must be known, an empty list is refused (it matches nothing),
    and a sink may not take a name that dead letters use for their source."""
    text = GOOD.replace('match = { kind = "outbound", status = ["DeliveryFailed"] }',
                        'match = { kind = ["outbound", "sms"], direction = "inbound", to = [] }')
    text = text.replace("[sinks.out]", "[sinks.frame]").replace('sinks = ["out"]',
                                                                'sinks = ["frame"]')
    with pytest.raises(ConfigError) as info:
        config.loads(text, env={})
    reasons = {p.key: p.reason for p in info.value.problems}
    assert "sms" in reasons["routes[0].match.kind"]
    assert "outbound" not in reasons["routes[0].match.kind"].split("(")[0]
    assert "Inbound" in reasons["routes[0].match.direction"]  # the known values are listed
    assert reasons["routes[0].match.to"] == "an empty list matches nothing"
    assert "reserved" in reasons["sinks.frame"]


def test_journal_max_age_zero_means_off() -> None:
    """``max_age = 0`` keeps undelivered events however old; a duration bounds them."""
    assert config.loads(GOOD + "\n[journal]\nmax_age = 0\n", env={}).journal.max_age == 0
    assert config.loads(GOOD + '\n[journal]\nmax_age = "2h"\n',
                        env={}).journal.max_age == 7200.0


def test_unknown_sink_type_names_the_key() -> None:
    """An unknown sink type is reported at sinks.NAME.type with the known types."""
    with pytest.raises(ConfigError) as info:
        config.loads(GOOD.replace('type = "stdout"', 'type = "kafka"'), env={})
    assert keys(info.value) == ["sinks.out.type"]
    assert "stdout" in info.value.problems[0].reason


def test_file_sink_template_is_checked() -> None:
    """Path templates must be relative, use known fields and no '..'."""
    for bad in ("/abs/{kind}.jsonl", "../{kind}.jsonl", "{nope}.jsonl", "{kind!r}.jsonl"):
        with pytest.raises(ConfigError) as info:
            config.loads(GOOD.replace('fsync = "always"', f'path = "{bad}"'), env={})
        assert keys(info.value) == ["sinks.files.path"], bad


def test_missing_secret_says_where_to_put_it() -> None:
    """A missing JWT names the key and every source."""
    with pytest.raises(ConfigError) as info:
        config.loads(GOOD.replace('jwt = "inline-jwt"\n', ""), env={})
    [problem] = info.value.problems
    assert problem.key == "platform.jwt"
    assert "A2PD_JWT" in problem.reason
    assert "jwt_file" in problem.reason


def test_secret_precedence(tmp_path: Path) -> None:
    """Environment beats *_file, which beats a systemd credential, which beats inline."""
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "jwt").write_text("from-credential")
    text = GOOD.replace('client_secret = "inline-secret"', f'client_secret_file = "{secret_file}"')
    settings = config.loads(text, env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert settings.client_secret.get_secret_value() == "from-file"
    assert settings.jwt.get_secret_value() == "from-credential"
    settings = config.loads(text, env={"A2PD_CLIENT_SECRET": "from-env", "A2PD_JWT": "j"})
    assert settings.client_secret.get_secret_value() == "from-env"
    assert settings.jwt.get_secret_value() == "j"


def test_empty_secret_in_the_environment_is_an_error() -> None:
    """``A2PD_JWT=`` (set but empty) is a mistake to report, not a fallback to other sources."""
    with pytest.raises(ConfigError) as info:
        config.loads(GOOD, env={"A2PD_JWT": "  "})
    [problem] = info.value.problems
    assert problem.key == "platform.jwt"
    assert "empty" in problem.reason


def test_unreadable_secret_file(tmp_path: Path) -> None:
    """A secret file that cannot be read is a problem at platform.*_file."""
    text = GOOD.replace('client_secret = "inline-secret"',
                        f'client_secret_file = "{tmp_path / "missing"}"')
    with pytest.raises(ConfigError) as info:
        config.loads(text, env={})
    assert keys(info.value) == ["platform.client_secret_file"]


def test_secret_is_never_in_errors_or_repr() -> None:
    """Neither problems nor the settings repr show a secret."""
    settings = config.loads(GOOD, env={})
    assert "inline-secret" not in repr(settings)
    with pytest.raises(ConfigError) as info:
        config.loads(GOOD.replace('server = "http://127.0.0.1:1"', "server = 5"), env={})
    assert "inline-secret" not in str(info.value)


def test_not_toml_is_a_config_error() -> None:
    """A syntax error is reported with its line."""
    with pytest.raises(ConfigError) as info:
        config.loads("[platform\n", env={})
    assert "line 1" in str(info.value)


def test_example_and_demo_configs_validate() -> None:
    """config/example.toml and config/demo.toml are valid (demo.toml is the packaged one)."""
    root = Path(__file__).parent.parent
    env = {"A2PD_CLIENT_SECRET": "s", "A2PD_JWT": "j"}
    config.load(root / "config" / "example.toml", env=env)
    config.load(root / "config" / "demo.toml", env={})
    assert (root / "config" / "demo.toml").resolve() == \
        (root / "daemon" / "a2pd" / "data" / "demo.toml").resolve()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "a2pd", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def test_validate_command_ok(tmp_path: Path) -> None:
    """`a2pd validate` prints OK and exits 0 for a good file."""
    path = tmp_path / "a2pd.toml"
    path.write_text(GOOD)
    result = run_cli("validate", str(path))
    assert result.returncode == 0
    assert "OK" in result.stdout


@pytest.mark.parametrize("command", ["validate", "run"])
def test_bad_config_exits_78_naming_the_key(tmp_path: Path, command: str) -> None:
    """`a2pd validate` and `a2pd run` exit 78 naming every bad key, with no traceback."""
    path = tmp_path / "a2pd.toml"
    path.write_text(GOOD.replace('fsync = "always"', 'fsync = "sometimes"'))
    args = [command, str(path)] if command == "validate" else [command, "-c", str(path)]
    result = run_cli(*args)
    assert result.returncode == 78
    assert "sinks.files.fsync" in result.stderr
    assert "Traceback" not in result.stderr
    assert "inline-secret" not in result.stderr + result.stdout
