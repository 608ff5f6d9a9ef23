"""The options of ``type = "postgres"``: the server (a ``postgresql://`` URL), the schema the
tables live in, whether message text is stored, the pool, TLS (libpq's ``sslmode`` and
files), timeouts, and the user and password from, in order:
``$A2PD_<CREDENTIAL_NAME>_<NAME>``, the systemd credential ``<credential_name>_<name>``,
``<name>_file``, the inline option, the URL. Nothing here ever prints the URL the operator
wrote (it may carry a password)."""

from __future__ import annotations

import re
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
from a2pd.vocab import Duration

__all__ = ["PostgresOptions"]

_SCHEMES = ("postgresql", "postgres")
#: a schema name a2pd puts in its SQL unquoted: lower case, at most 63 bytes (NAMEDATALEN)
SCHEMA_PATTERN = r"^[a-z_][a-z0-9_]{0,62}$"


def _strip(value: object) -> object:
    return value.strip() if isinstance(value, str) else value


class PostgresOptions(ServerOptions):
    """Options of ``type = "postgres"``."""

    #: postgresql://[user[:password]@]host[:port]/database; credentials in the URL are
    #: accepted (discouraged) and never printed
    url: Annotated[str, BeforeValidator(_strip)] = "postgresql://127.0.0.1:5432/postgres"
    schema_: str = Field(default="a2pd", alias="schema")
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

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        # messages never echo the URL: it may carry a password
        parts = check_server_url(value, _SCHEMES, "postgresql://host:port/database")
        database = parts.path.strip("/")
        if not database or "/" in database:
            raise ValueError("the path must name one database (/a2p)")
        return value

    @field_validator("schema_")
    @classmethod
    def _check_schema(cls, value: str) -> str:
        if not re.fullmatch(SCHEMA_PATTERN, value):
            raise ValueError("must be a lower-case name: letters a-z, digits and _, not "
                             "starting with a digit, at most 63 characters")
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
        self._resolve_credentials(info)
        return self

    @property
    def schema_name(self) -> str:
        """The schema a2pd's tables live in."""
        return self.schema_

    @property
    def database(self) -> str:
        """The database the URL names."""
        return urlsplit(self.url).path.strip("/")
