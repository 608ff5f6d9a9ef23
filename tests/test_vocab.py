"""The shared vocabulary (daemon/a2pd/vocab.py): one secret order for every secret, one
reading of Retry-After, durations, the strict table base."""

from __future__ import annotations

from email.utils import formatdate
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from a2pd.vocab import (
    MAX_SECRET_FILE,
    Duration,
    Secret,
    SecretUnreadable,
    StrictModel,
    error_code,
    find_secret,
    parse_retry_after,
)


def test_a_secret_comes_from_its_first_source_set(tmp_path: Path) -> None:
    """env, then systemd credential, then file, then inline; each says where it came from."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "jwt").write_text("from-credential\n")
    file = tmp_path / "jwt"
    file.write_text(" from-file \n")
    everything = {"A2PD_JWT": " from-env ", "CREDENTIALS_DIRECTORY": str(creds)}
    kinds = {"env_var": "A2PD_JWT", "credential": "jwt", "file": file}
    assert find_secret("jwt", everything, **kinds) == ("from-env", "$A2PD_JWT")
    assert find_secret("jwt", {"CREDENTIALS_DIRECTORY": str(creds)}, **kinds) == \
        ("from-credential", "systemd credential jwt")
    # a credential directory without this credential: the next source
    assert find_secret("jwt", {"CREDENTIALS_DIRECTORY": str(tmp_path / "none")}, **kinds) \
        == ("from-file", str(file))
    assert find_secret("jwt", {}, env_var="A2PD_JWT", inline="in-line") == \
        ("in-line", "inline")
    assert find_secret("jwt", {}, env_var="A2PD_JWT") is None


@pytest.mark.parametrize(("env", "kinds", "source", "text"), [
    ({"A2PD_JWT": "  "}, {"env_var": "A2PD_JWT"}, "env", "$A2PD_JWT is set but empty"),
    ({}, {"file": Path("/nonexistent/jwt")}, "file", "cannot read /nonexistent/jwt"),
    ({}, {"file": Path("/dev/zero")}, "file", f"larger than {MAX_SECRET_FILE} bytes"),
    ({}, {"file": Path("/x"), "inline": "y"}, "both", "set either jwt or jwt_file"),
])
def test_a_source_set_but_empty_or_unreadable_is_an_error_naming_it(
        env: dict[str, str], kinds: dict[str, object], source: str, text: str) -> None:
    with pytest.raises(SecretUnreadable) as caught:
        find_secret("jwt", env, **kinds)  # type: ignore[arg-type]
    assert caught.value.source == source
    assert text in str(caught.value)


class _Options(StrictModel):
    token: Secret
    wait: Duration = 1.0
    count: int = 1


def test_a_secret_option_names_one_source(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "hook").write_text("c-value")

    def token(value: object, env: dict[str, str]) -> str:
        options = _Options.model_validate({"token": value}, context={"env": env})
        assert isinstance(options.token, SecretStr)
        return options.token.get_secret_value()

    assert token("plain", {}) == "plain"
    assert token({"env": "HOOK"}, {"HOOK": "e-value"}) == "e-value"
    assert token({"credential": "hook"}, {"CREDENTIALS_DIRECTORY": str(creds)}) == "c-value"
    for value, env, text in (
            ({"env": "HOOK"}, {}, "$HOOK is not set"),
            ({"credential": "hook"}, {}, "$CREDENTIALS_DIRECTORY is not set"),
            ({"credential": "other"}, {"CREDENTIALS_DIRECTORY": str(creds)},
             "no systemd credential 'other'"),
            ({"file": "relative"}, {}, "must be an absolute path"),
            ({"env": "A", "file": "/b"}, {}, "exactly one of env, file, credential")):
        with pytest.raises(ValidationError) as caught:
            token(value, env)
        assert text in str(caught.value)
        assert "c-value" not in str(caught.value)


def test_the_strict_base_refuses_unknown_keys_and_booleans_for_numbers() -> None:
    assert _Options.model_validate({"token": "t", "wait": "250ms"}).wait == 0.25
    for data, key in (({"token": "t", "tokn": "x"}, "tokn"), ({"token": "t", "count": True},
                                                              "count")):
        with pytest.raises(ValidationError) as caught:
            _Options.model_validate(data)
        assert caught.value.errors()[0]["loc"] == (key,)


def test_retry_after_is_delta_seconds_or_an_http_date() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(" 1.5 ", now) == 1.5
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now) == 30.0
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now) == 0.0
    # what float() would take but is no delay: the caller's default applies
    for nothing in (None, "", "soon", "nan", "inf", "-5", "1e3", "\u00b2",
                    "Mon, 01 Jan 99999 00:00:00 GMT"):
        assert parse_retry_after(nothing, now) is None, nothing


def test_error_code_of_a_ringcentral_error_body() -> None:
    assert error_code({"errorCode": "CMN-401", "errors": [{"errorCode": "X"}]}) == "CMN-401"
    assert error_code({"error": "invalid_grant"}) == "invalid_grant"
    assert error_code({"errors": [{"errorCode": "SUB-508"}]}) == "SUB-508"
    for nothing in (None, [], "text", {"errors": []}, {"errors": ["x"]}, {"errorCode": 5}):
        assert error_code(nothing) is None
