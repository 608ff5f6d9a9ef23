"""A network sink's user and password (the Redis and PostgreSQL sinks): each from the first
of ``$A2PD_<CREDENTIAL_NAME>_<NAME>``, the systemd credential ``<credential_name>_<name>``,
``<name>_file``, the inline option (the order of the platform's secrets), then the URL.
Errors name the option, never the value."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

from pydantic import SecretStr, ValidationInfo

from a2pd.vocab import SecretUnreadable, find_secret, secrets_wanted

__all__ = ["Credentialed", "resolve_credentials"]


class Credentialed(Protocol):
    """The options a sink with a user and password has (read-only)."""

    @property
    def url(self) -> str: ...
    @property
    def credential_name(self) -> str: ...
    @property
    def username(self) -> str | None: ...
    @property
    def username_file(self) -> Path | None: ...
    @property
    def password(self) -> SecretStr | None: ...
    @property
    def password_file(self) -> Path | None: ...


def resolve_credentials(options: Credentialed, info: ValidationInfo,
                        env: Mapping[str, str]) -> tuple[str | None, SecretStr | None]:
    """The user and password ``options`` name. When the config is checked without its
    secrets (``a2pd validate --no-secrets``) only the URL's user is read."""
    parts = urlsplit(options.url)
    url_user = unquote(parts.username) if parts.username else None
    url_password = unquote(parts.password) if parts.password else None
    if not secrets_wanted(info):
        for name in ("username", "password"):
            if getattr(options, name) is not None and \
                    getattr(options, f"{name}_file") is not None:
                raise ValueError(f"set either {name} or {name}_file, not both")
        return url_user, None
    username = _resolve_secret(options, "username", env, url_user)
    password = _resolve_secret(options, "password", env, url_password)
    return (username.get_secret_value() if username is not None else None), password


def _resolve_secret(options: Credentialed, name: str, env: Mapping[str, str],
                    from_url: str | None) -> SecretStr | None:
    inline = getattr(options, name)
    try:
        found = find_secret(
            name, env, env_var=f"A2PD_{options.credential_name.upper()}_{name.upper()}",
            credential=f"{options.credential_name}_{name}",
            file=getattr(options, f"{name}_file"),
            inline=inline.get_secret_value() if isinstance(inline, SecretStr) else inline)
    except SecretUnreadable as exc:
        where = {"credential": f"{name} (systemd credential "
                               f"{options.credential_name}_{name})",
                 "file": f"{name}_file", "env": name}.get(exc.source)
        raise ValueError(f"{where}: {exc}" if where else str(exc)) from None
    if found is not None:
        return SecretStr(found.value)
    return SecretStr(from_url) if from_url else None
