"""The emulator's one exception tree.

Everything the emulator raises on purpose derives from :class:`EmulatorError`. REST-style
failures (OAuth, bearer checks, subscription requests) are :class:`ApiError` values that carry
the HTTP status and the RingCentral error body fields; the HTTP edge and the WebSocket
``ClientRequest`` handler turn them into responses. Nobody parses these messages.

::

    EmulatorError
    ├── EmulatorConfigError (ValueError)   bad EmulatorConfig, publish kind or drop mode
    ├── EmulatorTimeout (TimeoutError)     a wait_* helper ran out of time
    ├── NotRunning (RuntimeError)          an I/O helper was used outside ``running()``
    └── ApiError                           a REST error: status + errorCode + message
        ├── OAuthError                     an OAuth error: also the ``error`` field
        └── PermissionRefused              403 InsufficientPermissions: an app permission
                                           is missing (``permissionName``)
"""

from __future__ import annotations

from typing import Any


class EmulatorError(Exception):
    """Root of every exception the emulator raises on purpose."""


class EmulatorConfigError(EmulatorError, ValueError):
    """An invalid configuration value or argument."""


class EmulatorTimeout(EmulatorError, TimeoutError):
    """A ``wait_*`` helper did not see its condition in time."""


class NotRunning(EmulatorError, RuntimeError):
    """An operation that needs the server was called outside ``Emulator.running()``."""


class ApiError(EmulatorError):
    """A RingCentral REST error: HTTP ``status``, ``error_code`` (e.g. ``SUB-508``), text."""

    def __init__(self, status: int, error_code: str, message: str) -> None:
        super().__init__(f"{status} {error_code}: {message}")
        self.status = status
        self.error_code = error_code
        self.message = message

    def body(self) -> dict[str, Any]:
        """The REST error body: ``errorCode``, ``message`` and ``errors[]``."""
        return {
            "errorCode": self.error_code,
            "message": self.message,
            "errors": [{"errorCode": self.error_code, "message": self.message}],
        }


class OAuthError(ApiError):
    """An OAuth error (``invalid_client``, ``invalid_grant``, ...) from the token endpoints."""

    def __init__(self, status: int, error: str, error_code: str, message: str) -> None:
        super().__init__(status, error_code, message)
        self.error = error

    def body(self) -> dict[str, Any]:
        """RingCentral's OAuth error body: ``error``, ``error_description`` and ``errors[]``."""
        return {
            "error": self.error,
            "error_description": self.message,
            "errors": [{"errorCode": self.error_code, "message": self.message,
                        "parameters": []}],
        }


class PermissionRefused(ApiError):
    """403: the app lacks an application permission. The shape the live platform answers
    (ringcentral-web-phone #154, ringcentral-embeddable #591/#620): top-level ``errorCode``
    ``InsufficientPermissions``, ``errors[0].errorCode`` ``CMN-401`` (the errors page:
    "Specific application permission required"), both with ``permissionName``."""

    def __init__(self, permission: str) -> None:
        super().__init__(403, "CMN-401", "In order to call this API endpoint, application "
                                         f"needs to have [{permission}] permission")
        self.permission = permission

    def body(self) -> dict[str, Any]:
        """The body as the platform sends it (see the class docstring)."""
        return {
            "errorCode": "InsufficientPermissions",
            "message": self.message,
            "errors": [{"errorCode": self.error_code, "message": self.message,
                        "permissionName": self.permission}],
            "permissionName": self.permission,
        }
