"""The options of ``type = "redis"``: the server (``redis://`` or ``rediss://`` for TLS), the
stream template, the dedup keys' prefix and lifetime, trimming, timeouts, and the ACL user
and password from, in order: ``$A2PD_<CREDENTIAL_NAME>_<NAME>``, the systemd credential
``<credential_name>_<name>``, ``<name>_file``, the inline option, the URL. Nothing here
ever prints the URL the operator wrote (it may carry a password)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    BeforeValidator,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from a2pd.sinks.credentials import ServerOptions, check_server_url
from a2pd.sinks.templates import check_template
from a2pd.vocab import Duration, DurationOrOff

__all__ = ["RedisOptions"]

_SCHEMES = ("redis", "rediss")


def _strip(value: object) -> object:
    return value.strip() if isinstance(value, str) else value


class RedisOptions(ServerOptions):
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

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        # messages never echo the URL: it may carry a password
        parts = check_server_url(value, _SCHEMES, "redis://host:port/db")
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
        self._resolve_credentials(info)
        return self

