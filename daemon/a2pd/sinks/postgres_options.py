"""The options of ``type = "postgres"``: the server (a ``postgresql://`` URL), the schema the
tables live in, whether message text is stored, the pool, TLS (libpq's ``sslmode`` and
files), timeouts, and the user and password from, in order:
``$A2PD_<CREDENTIAL_NAME>_<NAME>``, the systemd credential ``<credential_name>_<name>``,
``<name>_file``, the inline option, the URL. Nothing here ever prints the URL the operator
wrote (it may carry a password)."""

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
from a2pd.vocab import Duration, redact_url

__all__ = ["PostgresOptions"]

_SCHEMES = ("postgresql", "postgres")
#: a schema name a2pd puts in its SQL unquoted: lower case, at most 63 bytes (NAMEDATALEN)
SCHEMA_PATTERN = r"^[a-z_][a-z0-9_]{0,62}$"


def _strip(value: object) -> object:
    return value.strip() if isinstance(value, str) else value


class PostgresOptions(SinkOptions):
    """Options of ``type = "postgres"``."""

    #: postgresql://[user[:password]@]host[:port]/database; credentials in the URL are
    #: accepted (discouraged) and never printed
    url: Annotated[str, BeforeValidator(_strip)] = "postgresql://127.0.0.1:5432/postgres"
    schema_: str = Field(default="a2pd", alias="schema", pattern=SCHEMA_PATTERN)
    #: messages' text (personal data) in the messages table and the events' records
    store_text: bool = True
    pool_size: int = Field(default=2, ge=1, le=32)
    credential_name: str = Field(default="postgres", pattern=r"^[A-Za-z0-9_]+$")
    username: str | None = Field(default=None, min_length=1)
    username_file: Path | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    #: libpq's sslmode: disable, allow, prefer (libpq's default), require, verify-ca,
    #: verify-full
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca",
                     "verify-full"] = "prefer"
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    connect_timeout: Duration = 5.0
    #: the longest one batch's transaction may take (the server's statement_timeout)
    timeout: Duration = 30.0

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
            raise ValueError("not a valid URL (expected postgresql://host:port/database)") \
                from None
        if parts.scheme not in _SCHEMES:
            raise ValueError("must be a postgresql:// URL")
        if not parts.hostname:
            raise ValueError("names no host")
        if port == 0:
            raise ValueError("port 0 is not a port")
        if parts.query or parts.fragment:
            raise ValueError("takes no query or fragment: set options in the sink table")
        database = parts.path.strip("/")
        if not database or "/" in database:
            raise ValueError("the path must name one database (/a2p)")
        return value

    @field_validator("timeout")
    @classmethod
    def _check_timeout(cls, value: float) -> float:
        # the server's statement_timeout is an int of milliseconds (24.8 days at most)
        if value > 86400:
            raise ValueError("must be at most 1d (one batch's transaction)")
        return value

    @model_validator(mode="after")
    def _resolve(self, info: ValidationInfo) -> PostgresOptions:
        tls_set = any((self.tls_ca_file, self.tls_cert_file, self.tls_key_file))
        if self.sslmode == "disable" and tls_set:
            raise ValueError("tls_* options need an sslmode other than disable")
        if self.tls_key_file and not self.tls_cert_file:
            raise ValueError("tls_key_file needs tls_cert_file")
        if self.tls_cert_file and not self.tls_key_file:
            raise ValueError("tls_cert_file needs tls_key_file")
        context = info.context if isinstance(info.context, Mapping) else {}
        env = context.get("env")
        self._username, self._password = resolve_credentials(
            self, info, env if isinstance(env, Mapping) else os.environ)
        return self

    @property
    def schema_name(self) -> str:
        """The schema a2pd's tables live in."""
        return self.schema_

    @property
    def resolved_username(self) -> str | None:
        """The user, from the environment, a file, a credential, inline, or the URL."""
        return self._username

    @property
    def resolved_password(self) -> SecretStr | None:
        """The password, from the environment, a file, a credential, inline, or the URL."""
        return self._password

    @property
    def database(self) -> str:
        """The database the URL names."""
        return urlsplit(self.url).path.strip("/")

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # the URL may carry credentials: reprs show it without them
        for key, value in super().__repr_args__():
            yield key, redact_url(value) if key == "url" else value

    @property
    def safe_url(self) -> str:
        """The URL without its credentials, for logs and errors."""
        return redact_url(self.url)
