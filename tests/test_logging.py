"""Secret masking in log lines and in bytes written to disk."""

from __future__ import annotations

from a2pd.logging import mask_secrets, register_secret, scrub


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
