"""What the sinks that talk to a server (Redis, PostgreSQL) share: a URL checked without
ever echoing it (it may carry a password), and a user and password, each from the first of
``$A2PD_<CREDENTIAL_NAME>_<NAME>``, the systemd credential ``<credential_name>_<name>``,
``<name>_file``, the inline option (the order of the platform's secrets), then the URL.
Errors name the option, never the value."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

from pydantic import PrivateAttr, SecretStr, ValidationInfo

from a2pd.logging import register_secret
from a2pd.sinks import SinkOptions
from a2pd.vocab import SecretUnreadable, find_secret, redact_url, secrets_wanted

__all__ = ["ServerOptions", "check_server_url"]


def check_server_url(value: str, schemes: tuple[str, ...], expected: str) -> SplitResult:
    """``value``'s parts, or a ValueError that never echoes it: one of ``schemes``, a host,
    a real port, no query or fragment (``expected``: the shape, for the message)."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ValueError(f"not a valid URL (expected {expected})") from None
    if parts.scheme not in schemes:
        raise ValueError(f"must be a {' or '.join(f'{s}://' for s in schemes)} URL")
    if not parts.hostname:
        raise ValueError("names no host")
    if port == 0:
        raise ValueError("port 0 is not a port")
    if parts.query or parts.fragment:
        raise ValueError("takes no query or fragment: set options in the sink table")
    return parts


class ServerOptions(SinkOptions):
    """Base of a server sink's options. Subclasses declare ``url``, ``credential_name``,
    ``username``, ``username_file``, ``password`` and ``password_file``, and call
    ``_resolve_credentials`` from their after-validator."""

    _username: str | None = PrivateAttr(default=None)
    _password: SecretStr | None = PrivateAttr(default=None)

    def _resolve_credentials(self, info: ValidationInfo) -> None:
        """Read the user and password from their sources. When the config is checked
        without its secrets (``a2pd validate --no-secrets``) only the URL's user is read."""
        context = info.context if isinstance(info.context, Mapping) else {}
        env = context.get("env")
        if not isinstance(env, Mapping):
            env = os.environ
        parts = urlsplit(self._field("url"))
        url_user = unquote(parts.username) if parts.username else None
        url_password = unquote(parts.password) if parts.password else None
        if not secrets_wanted(info):
            for name in ("username", "password"):
                if self._field(name) is not None and self._field(f"{name}_file") is not None:
                    raise ValueError(f"set either {name} or {name}_file, not both")
            self._username, self._password = url_user, None
            return
        username = self._secret("username", env, url_user)
        self._username = username.get_secret_value() if username is not None else None
        self._password = self._secret("password", env, url_password)

    def _field(self, name: str) -> Any:
        return getattr(self, name)

    def _secret(self, name: str, env: Mapping[str, str],
                from_url: str | None) -> SecretStr | None:
        inline = self._field(name)
        credential_name: str = self._field("credential_name")
        file: Path | None = self._field(f"{name}_file")
        try:
            found = find_secret(
                name, env, env_var=f"A2PD_{credential_name.upper()}_{name.upper()}",
                credential=f"{credential_name}_{name}", file=file,
                inline=inline.get_secret_value() if isinstance(inline, SecretStr) else inline)
        except SecretUnreadable as exc:
            where = {"credential": f"{name} (systemd credential {credential_name}_{name})",
                     "file": f"{name}_file", "env": name}.get(exc.source)
            raise ValueError(f"{where}: {exc}" if where else str(exc)) from None
        if found is not None:
            return SecretStr(found.value)
        return SecretStr(from_url) if from_url else None

    @property
    def resolved_username(self) -> str | None:
        """The user, from the environment, a file, a credential, inline, or the URL."""
        return self._username

    @property
    def resolved_password(self) -> SecretStr | None:
        """The password, from the environment, a file, a credential, inline, or the URL."""
        return self._password

    def register_secrets(self) -> None:
        """Make the logs scrub the password (resolved, and any in the URL)."""
        password = self.resolved_password
        if password is not None:
            register_secret(password.get_secret_value(), permanent=True)
        parts = urlsplit(self._field("url"))
        if parts.password:
            register_secret(unquote(parts.password), permanent=True)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # the URL may carry credentials: reprs show it without them
        for key, value in super().__repr_args__():
            yield key, redact_url(value) if key == "url" else value

    @property
    def safe_url(self) -> str:
        """The URL without its credentials, for logs and errors."""
        return redact_url(self._field("url"))
