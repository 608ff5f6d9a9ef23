"""The options of ``type = "http"``: where to POST, how to authenticate (a bearer token, Basic
auth, secret headers, Standard Webhooks signing keys), TLS, batching, which answers are
retried, and the caps on retrying. Every secret is a ``Secret``: inline, or named by
``{ env | file | credential = ... }``."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, SecretStr, field_validator, model_validator

from a2pd.sinks import SinkOptions
from a2pd.vocab import UNREAD_SECRET, Duration, DurationOrOff, Secret

__all__ = [
    "DEFAULT_RETRY",
    "BasicAuth",
    "BearerAuth",
    "HttpOptions",
    "ReadableFile",
    "StatusRule",
    "sign",
    "signing_key",
]

#: answers that are retried unless ``retry_statuses`` says otherwise
DEFAULT_RETRY: tuple[int | str, ...] = (408, 429, "5xx")


def _status_rule(value: int | str) -> int | str:
    if isinstance(value, int):
        if not 100 <= value <= 599:
            raise ValueError(f"{value} is not an HTTP status code")
        return value
    if len(value) == 3 and value[0] in "12345" and value[1:] == "xx":
        return value
    raise ValueError(f"{value!r}: use a status code (429) or a class ('5xx')")


StatusRule = Annotated[int | str, AfterValidator(_status_rule)]


def _readable_file(path: Path | None) -> Path | None:
    if path is not None and not path.is_file():
        raise ValueError(f"{path} is not a readable file")
    return path


ReadableFile = Annotated[Path | None, AfterValidator(_readable_file)]


#: an HTTP header name (RFC 9110 token)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _header_value_ok(value: str) -> bool:
    """Printable ASCII (and tab), one line: anything else is refused by HTTP libraries
    with an error that would quote it, or splits the header."""
    return value.isascii() and all(c == "\t" or 32 <= ord(c) < 127 for c in value)


class BearerAuth(SinkOptions):
    type: Literal["bearer"]
    token: Secret

    @field_validator("token")
    @classmethod
    def _one_line(cls, value: SecretStr) -> SecretStr:
        if not _header_value_ok(value.get_secret_value()):
            raise ValueError("the token must be printable ASCII on one line")
        return value


class BasicAuth(SinkOptions):
    type: Literal["basic"]
    username: str = Field(min_length=1)
    password: Secret


class HttpOptions(SinkOptions):
    """``[sinks.NAME]`` with ``type = "http"`` (every key is documented in
    config/example.toml)."""

    url: str
    method: Literal["POST", "PUT"] = "POST"
    mode: Literal["event", "batch"] = "event"
    batch_max_events: int = Field(default=100, ge=1, le=10000)
    batch_max_bytes: int = Field(default=1_000_000, ge=1024)
    linger: DurationOrOff = 0.0
    #: plain headers (never secret: they may appear in logs)
    headers: dict[str, str] = Field(default_factory=dict)
    #: headers whose values are secrets, each a string or { env | file | credential = ... }
    secret_headers: dict[str, Secret] = Field(default_factory=dict)
    auth: BearerAuth | BasicAuth | None = Field(default=None, discriminator="type")
    #: Standard Webhooks keys ("whsec_" + base64); every key signs, for rotation
    signing_secrets: list[Secret] = Field(default_factory=list)
    timeout: Duration = 10.0
    retry_statuses: list[StatusRule] = Field(default_factory=lambda: list(DEFAULT_RETRY))
    retry_initial: Duration = 0.5
    retry_max: Duration = 60.0
    max_attempts: int = Field(default=0, ge=0)
    max_elapsed: DurationOrOff = 0.0
    retry_after_max: Duration = 300.0
    concurrency: int = Field(default=1, ge=1, le=64)
    tls_verify: bool = True
    ca_file: ReadableFile = None
    client_cert: ReadableFile = None
    client_key: ReadableFile = None
    compression: Literal["none", "gzip"] = "none"
    follow_redirects: bool = False
    #: how much of a refusing response body is kept in the dead letter
    response_snippet: int = Field(default=512, ge=0, le=65536)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        try:
            parts.port  # noqa: B018 - validates the port
        except ValueError:
            raise ValueError("has an invalid port") from None
        return value

    @field_validator("signing_secrets")
    @classmethod
    def _keys(cls, values: list[SecretStr]) -> list[SecretStr]:
        for i, value in enumerate(values):
            if value.get_secret_value() == UNREAD_SECRET:
                continue  # a2pd validate --no-secrets: where it comes from was checked
            if not signing_key(value):
                raise ValueError(f"key {i} is not a Standard Webhooks secret "
                                 "('whsec_' followed by base64)")
        return values

    @field_validator("headers", "secret_headers")
    @classmethod
    def _headers(cls, values: dict[str, Any]) -> dict[str, Any]:
        reserved = {"content-type", "content-length", "content-encoding", "host",
                    "webhook-id", "webhook-timestamp", "webhook-signature"}
        for name, value in values.items():
            if name.lower() in reserved:
                raise ValueError(f"{name!r} is set by the sink itself")
            if not _TOKEN.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid header name")
            text = value.get_secret_value() if isinstance(value, SecretStr) else value
            if not _header_value_ok(text):
                # never the value: it may be a secret
                raise ValueError(f"the value of {name!r} must be printable ASCII on one line")
        return values

    @model_validator(mode="after")
    def _tls(self) -> HttpOptions:
        if self.client_key is not None and self.client_cert is None:
            raise ValueError("client_key needs client_cert")
        if self.auth is not None and urlsplit(self.url).username is not None:
            raise ValueError("give credentials either in the url or in auth, not both")
        return self


def signing_key(secret: SecretStr) -> bytes:
    """The HMAC key of a Standard Webhooks secret (empty if it is not one)."""
    text = secret.get_secret_value()
    text = text.removeprefix("whsec_")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return b""


def sign(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for ``body``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        for key in keys)
