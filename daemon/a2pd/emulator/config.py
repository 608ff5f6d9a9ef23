"""Configuration of the emulator: one frozen dataclass, plus the default demo JWT.

Time values are float seconds everywhere so tests can scale time down (an access token that
lives 0.6 s, an idle timeout of 0.3 s). Nothing here does I/O.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass

from a2pd.emulator.errors import EmulatorConfigError


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _demo_jwt() -> str:
    """A fixed, syntactically valid HS256 JWT (header.payload.signature, base64url)."""
    header = {"alg": "HS256", "typ": "JWT"}
    payload = {
        "aud": "https://platform.ringcentral.com/restapi/oauth/token",
        "sub": "400123456789",
        "iss": "https://platform.ringcentral.com",
        "exp": 4102444800,  # 2100-01-01: the demo credential never expires
        "iat": 1767225600,
        "jti": "a2pd-emulator-demo-credential",
    }
    signing_input = ".".join(
        _b64url(json.dumps(part, separators=(",", ":"), sort_keys=True).encode())
        for part in (header, payload)
    )
    signature = hmac.new(b"a2pd-emulator-demo-key", signing_input.encode(), hashlib.sha256)
    return f"{signing_input}.{_b64url(signature.digest())}"


#: the JWT credential the emulator accepts unless configured otherwise
DEFAULT_JWT = _demo_jwt()

#: application permissions (the Developer Console's "App Permissions", the token's ``scope``)
#: a2pd needs, each with the call that needs it (docs/protocol-notes.md §8c):
#: the WS token (subscribing.md: "the app must first possess the WebSocketsSubscription app
#: scope"; spec: "App Permission: WebSocket")
WS_PERMISSION = "WebSocketsSubscription"
#: the A2P event filters (event-filter pages: "Required Permissions: ReadAccounts")
READ_ACCOUNTS = "ReadAccounts"
#: the ``a2p-sms/*`` endpoints (spec: "App Permission: A2PSMS")
A2P_PERMISSION = "A2PSMS"
#: the v2 consents list the backfill reads opt-outs from (spec: "App Permission: SMS")
SMS_PERMISSION = "SMS"
DAEMON_PERMISSIONS = frozenset({WS_PERMISSION, READ_ACCOUNTS, A2P_PERMISSION, SMS_PERMISSION})
#: where a missing WebSocketsSubscription permission is refused: at the WS token (the
#: docs) or at the subscription request (403 SUB-528, as a third-party client met it)
WS_REFUSALS = ("wstoken", "subscription")


@dataclass(frozen=True)
class EmulatorConfig:
    """Everything that shapes one emulator instance (see the package docstring)."""

    host: str = "127.0.0.1"
    port: int = 0
    account_id: str = "400123456789"
    extension_id: str = "400123456789"
    client_id: str = "demo-client-id"
    client_secret: str = "demo-client-secret"  # noqa: S105 - the public demo credential
    jwt: str = DEFAULT_JWT
    access_token_ttl: float = 3600.0
    refresh_token_ttl: float = 604800.0
    ws_token_ttl: float = 600.0
    recovery_timeout: float = 180.0
    recovery_buffer_size: int = 100
    idle_timeout: float = 1800.0
    absolute_timeout: float = 86400.0
    #: server RFC 6455 ping interval (seconds), or None for no pings. The heart-beats page
    #: says the gateway pings and a client must pong "within 10 seconds"; it gives no
    #: interval: 30 s is our choice
    ping_interval: float | None = 30.0
    #: a client that has not answered a ping within this long is disconnected
    pong_timeout: float = 10.0
    #: 0: ``wsc`` only on ConnectionDetails; N > 0: also on every Nth ServerNotification
    wsc_on_notifications: int = 0
    max_oauth_sessions: int = 5
    #: subscriptions a user and app may hold (API reference, Create Subscription: SUB-505)
    max_subscriptions: int = 30
    #: the app setting "Issue refresh tokens" (developer guide, "Using refresh tokens": by
    #: default refresh tokens are not issued). On here, as the demo's app is set up; off:
    #: token replies carry no refresh token and every refresh grant is refused
    issue_refresh_tokens: bool = True
    #: the app's permissions; a call needing one the app lacks is refused with 403
    #: ``InsufficientPermissions``/``CMN-401`` (default: every one a2pd needs)
    app_permissions: frozenset[str] = DAEMON_PERMISSIONS
    #: where a missing ``WebSocketsSubscription`` is refused (``WS_REFUSALS``)
    ws_permission_refused_at: str = "wstoken"
    #: the app's auth type is "JWT auth flow"; off: the JWT grant is refused (403
    #: ``unauthorized_client``, OAU-112), as for an app made for another flow
    jwt_flow: bool = True
    #: the A2P REST calls' usage plan group "Light": this many requests per user and app in a
    #: sliding window of ``a2p_rate_window`` seconds, then every call is refused (429) for
    #: ``a2p_rate_penalty`` seconds, each refused call restarting the penalty (rate-limits
    #: page); 0: no limit
    a2p_rate_limit: int = 50
    a2p_rate_window: float = 60.0
    a2p_rate_penalty: float = 60.0
    #: at most this many records on one list page, whatever ``perPage`` asks for
    a2p_page_limit: int = 1000
    #: seeds ids and traffic; tokens always come from ``secrets``
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise EmulatorConfigError(f"port must be 0..65535, got {self.port}")
        for name in ("access_token_ttl", "refresh_token_ttl", "ws_token_ttl",
                     "recovery_timeout", "idle_timeout", "absolute_timeout"):
            if getattr(self, name) <= 0:
                raise EmulatorConfigError(f"{name} must be > 0")
        if self.pong_timeout <= 0:
            raise EmulatorConfigError("pong_timeout must be > 0")
        if self.ping_interval is not None and self.ping_interval <= 0:
            raise EmulatorConfigError("ping_interval must be > 0 or None")
        if self.recovery_buffer_size < 0:
            raise EmulatorConfigError("recovery_buffer_size must be >= 0")
        if self.wsc_on_notifications < 0:
            raise EmulatorConfigError("wsc_on_notifications must be >= 0")
        if self.a2p_rate_limit < 0 or self.a2p_rate_window <= 0 or self.a2p_rate_penalty <= 0:
            raise EmulatorConfigError("a2p_rate_limit must be >= 0, a2p_rate_window and "
                                      "a2p_rate_penalty > 0")
        if self.a2p_page_limit < 1:
            raise EmulatorConfigError("a2p_page_limit must be >= 1")
        if self.max_subscriptions < 1:
            raise EmulatorConfigError("max_subscriptions must be >= 1")
        if self.max_oauth_sessions < 1:
            raise EmulatorConfigError("max_oauth_sessions must be >= 1")
        if self.ws_permission_refused_at not in WS_REFUSALS:
            raise EmulatorConfigError(f"ws_permission_refused_at must be one of {WS_REFUSALS}")
        if not isinstance(self.app_permissions, frozenset):
            raise EmulatorConfigError("app_permissions must be a frozenset of permission names")
        for name in ("account_id", "extension_id", "client_id", "client_secret", "jwt"):
            if not getattr(self, name):
                raise EmulatorConfigError(f"{name} must not be empty")


def seconds(value: float) -> int | float:
    """A duration as JSON: an int when whole (``3600``), else the float (``0.6``)."""
    return int(value) if float(value).is_integer() else value
