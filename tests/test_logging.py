"""Secret masking in log lines and in bytes written to disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import structlog

from a2pd.logging import configure, get_logger, mask_secrets, register_secret, scrub, to_journald


def test_credentials_stay_masked_however_many_tokens_rotate() -> None:
    """Access tokens and wsc tokens rotate for the daemon's whole life and are remembered in
    a bounded window; the client secret and JWT never leave it, and neither do the newest
    tokens."""
    register_secret("client-secret-of-this-test", permanent=True)
    tokens = [f"access-token-{i:04d}" for i in range(1000)]
    for token in tokens:
        register_secret(token)
    line = mask_secrets(None, "info", {"event": "x", "detail": {
        "secret": "client-secret-of-this-test", "token": tokens[-1],
        "note": f"Bearer {tokens[-2]}"}})
    assert line["detail"] == {"secret": "***", "token": "***", "note": "Bearer ***"}
    raw = scrub(b'{"jwt": "client-secret-of-this-test", "t": "' + tokens[-1].encode() + b'"}')
    assert raw == b'{"jwt": "***", "t": "***"}'


def test_short_values_are_not_treated_as_secrets() -> None:
    """A value too short to be a credential would mask ordinary words: it is ignored."""
    register_secret("abc")
    assert mask_secrets(None, "info", {"event": "abc"}) == {"event": "abc"}


def test_a_flood_of_one_token_kind_keeps_the_others_masked() -> None:
    """A new wsc with every notification must not push the access token in use out of the
    registry: each kind of rotating token is bounded on its own."""
    register_secret("access-token-in-use-0001")
    for i in range(5000):
        register_secret(f"wsc-token-{i:06d}", kind="wsc")
    line = mask_secrets(None, "info", {"event": "x", "a": "access-token-in-use-0001",
                                       "w": "wsc-token-004999"})
    assert line == {"event": "x", "a": "***", "w": "***"}


@pytest.mark.parametrize(("no_color", "coloured"), [(None, True), ("1", False)])
def test_console_colours_only_on_a_terminal_without_no_color(
        monkeypatch: pytest.MonkeyPatch, no_color: str | None, coloured: bool) -> None:
    """On a terminal the console format is coloured, unless ``$NO_COLOR`` is set
    (no-color.org)."""
    if no_color is None:
        monkeypatch.delenv("NO_COLOR", raising=False)
    else:
        monkeypatch.setenv("NO_COLOR", no_color)
    leader, follower = os.openpty()
    try:
        with os.fdopen(follower, "w", closefd=False) as terminal:
            configure("info", "auto", terminal)
            get_logger("test").warning("coloured_or_not")
            terminal.flush()
        out = os.read(leader, 65536).decode()
    finally:
        os.close(leader)
        os.close(follower)
        structlog.reset_defaults()
    assert "coloured_or_not" in out
    assert ("\x1b[" in out) is coloured


def test_journald_stream_lines_start_with_their_priority(tmp_path: Path) -> None:
    """When stderr is the stream ``$JOURNAL_STREAM`` names, each line starts with ``<N>``;
    on any other stream it does not."""
    path = tmp_path / "log"
    with path.open("w") as stream:
        st = os.fstat(stream.fileno())
        assert to_journald(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not to_journald(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not to_journald(stream, {})
