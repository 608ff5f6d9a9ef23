"""The options of ``type = "redis"``: the server (``redis://`` or ``rediss://`` for TLS), the
stream template, the dedup keys' prefix and lifetime, trimming, timeouts, and the ACL user
and password from, in order: ``$A2PD_<CREDENTIAL_NAME>_<NAME>``, the systemd credential
``<credential_name>_<name>``, ``<name>_file``, the inline option, the URL. Nothing here
ever prints the URL the operator wrote (it may carry a password)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BeforeValidator,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from a2pd.sinks import SinkOptions
from a2pd.sinks.credentials import resolve_credentials
from a2pd.sinks.templates import check_template
from a2pd.vocab import Duration, DurationOrOff, redact_url

__all__ = ["RedisOptions"]

_SCHEMES = ("redis", "rediss")


def _strip(value: object) -> object:
    return value.strip() if isinstance(value, str) else value


class RedisOptions(SinkOptions):
    """Options of ``type = "redis"``."""

    #: redis://[user[:password]@]host[:port][/db] or rediss:// (TLS); credentials in the URL
    #: are accepted (discouraged) and never printed
    url: Annotated[str, BeforeValidator(_strip)] = "redis://127.0.0.1:6379/0"
    stream: Annotated[str, BeforeValidator(_strip)] = "a2p:{kind}"
    dedup_prefix: str = Field(default="a2p:seen:", min_length=1)
    dedup_ttl: Duration = 24 * 3600.0
    max_len: int = Field(default=0, ge=0)
    max_age: DurationOrOff = 0.0
    trim: Literal["approximate", "exact"] = "approximate"
    credential_name: str = Field(default="redis", pattern=r"^[A-Za-z0-9_]+$")
    username: str | None = Field(default=None, min_length=1)
    username_file: Path | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_verify: bool = True
    connect_timeout: Duration = 5.0
    timeout: Duration = 10.0

    _username: str | None = PrivateAttr(default=None)
    _password: SecretStr | None = PrivateAttr(default=None)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        # messages never echo the URL: it may carry a password
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError:
            raise ValueError("not a valid URL (expected redis://host:port/db)") from None
        if parts.scheme not in _SCHEMES:
            raise ValueError("must be a redis:// or rediss:// (TLS) URL")
        if not parts.hostname:
            raise ValueError("names no host")
        if port == 0:
            raise ValueError("port 0 is not a port")
        if parts.query or parts.fragment:
            raise ValueError("takes no query or fragment: set options in the sink table")
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise ValueError("the path must be a database number (/0)")
        return value

    @field_validator("dedup_ttl")
    @classmethod
    def _check_ttl(cls, value: float) -> float:
        if value < 60:
            raise ValueError("must be at least 60s (it must outlast any redelivery)")
        return value

    @field_validator("stream")
    @classmethod
    def _check_stream(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty")
        check_template(value)
        return value

    @model_validator(mode="after")
    def _resolve(self, info: ValidationInfo) -> RedisOptions:
        if self.max_len and self.max_age:
            raise ValueError("set max_len or max_age, not both (XADD trims by one of them)")
        parts = urlsplit(self.url)
        tls_set = any((self.tls_ca_file, self.tls_cert_file, self.tls_key_file))
        if parts.scheme != "rediss" and (tls_set or not self.tls_verify):
            raise ValueError("tls_* options need a rediss:// url")
        if self.tls_key_file and not self.tls_cert_file:
            raise ValueError("tls_key_file needs tls_cert_file")
        context = info.context if isinstance(info.context, Mapping) else {}
        env = context.get("env")
        self._username, self._password = resolve_credentials(
            self, info, env if isinstance(env, Mapping) else os.environ)
        return self

    @property
    def resolved_username(self) -> str | None:
        """The ACL user, from the environment, a file, a credential, inline, or the URL."""
        return self._username

    @property
    def resolved_password(self) -> SecretStr | None:
        """The password, from the environment, a file, a credential, inline, or the URL."""
        return self._password

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # the URL may carry credentials: reprs show it without them
        for key, value in super().__repr_args__():
            yield key, redact_url(value) if key == "url" else value

    @property
    def safe_url(self) -> str:
        """The URL without its credentials, for logs and errors."""
        return redact_url(self.url)

