"""The emulated OAuth server: JWT and refresh grants, revoke, bearer checks, WS tokens.

Pure state, no I/O: the HTTP edge (``server.py``) hands in the form fields and the
``Authorization`` header and turns :class:`a2pd.emulator.errors.OAuthError` /
:class:`a2pd.emulator.errors.ApiError` into responses. Follows PROTOCOL.md 1.1-1.5:

- every JWT grant opens a new OAuth session; past ``max_oauth_sessions`` the oldest is evicted;
- a refresh keeps the session, is single-use, and kills the previous access token;
- revoking any token of a session ends the whole session;
- a WS token belongs to the OAuth session whose access token asked for it;
- the token's ``scope`` is the app's permissions (``app_permissions``); a call needing one
  the app lacks is refused (``require``: 403 InsufficientPermissions/CMN-401); an app not
  made for the JWT flow (``jwt_flow`` off) has its JWT grant refused (403
  ``unauthorized_client``, OAU-112).

Tokens are opaque random strings from :mod:`secrets`; they must never be logged.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from a2pd.emulator.config import EmulatorConfig, seconds
from a2pd.emulator.errors import ApiError, OAuthError, PermissionRefused

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
REFRESH_GRANT = "refresh_token"
#: PROTOCOL 1.1: access_token_ttl may be asked for within 600..3600 s, refresh up to 30 days
_ACCESS_TTL_RANGE = (600.0, 3600.0)
_REFRESH_TTL_MAX = 2592000.0


@dataclass
class OAuthSession:
    """One OAuth session: the tokens currently valid in it."""

    id: str
    created: float
    endpoint_id: str
    access_token: str
    access_expires: float
    refresh_token: str
    refresh_expires: float
    ended: bool = False


@dataclass
class WsToken:
    """A WebSocket access token, bound to the OAuth session that asked for it."""

    token: str
    oauth_session_id: str
    expires: float
    #: the live connection currently using this token, if any (one per token)
    connection_id: int | None = None


@dataclass
class OAuthServer:
    """All OAuth sessions and tokens of one emulator."""

    config: EmulatorConfig
    clock: Callable[[], float]
    new_id: Callable[[], str]
    sessions: dict[str, OAuthSession] = field(default_factory=dict)
    ws_tokens: dict[str, WsToken] = field(default_factory=dict)
    _access: dict[str, str] = field(default_factory=dict)
    _refresh: dict[str, str] = field(default_factory=dict)
    _issued: list[str] = field(default_factory=list)

    # -- token endpoint ------------------------------------------------------------------

    def token(self, form: Mapping[str, str], authorization: str | None,
              ) -> tuple[dict[str, Any], list[str]]:
        """Answer ``POST /restapi/oauth/token``: the TokenInfo and the ids of evicted sessions."""
        self._check_client(form, authorization)
        grant = form.get("grant_type", "")
        if grant == JWT_GRANT:
            return self._jwt_grant(form)
        if grant == REFRESH_GRANT:
            return self._refresh_grant(form), []
        raise OAuthError(400, "unsupported_grant_type", "OAU-250",
                         f"Unsupported grant type: {grant or '(none)'}")

    def _jwt_grant(self, form: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
        if not self.config.jwt_flow:
            # the errors page: 403 OAU-112 "The client is unauthorized for the required grant
            # type"; ``unauthorized_client`` is RFC 6749's name for it
            raise OAuthError(403, "unauthorized_client", "OAU-112",
                             f"The client is unauthorized for the required grant type: "
                             f"[{JWT_GRANT}]")
        assertion = form.get("assertion", "")
        if not assertion or not hmac.compare_digest(assertion.encode(),
                                                    self.config.jwt.encode()):
            raise OAuthError(400, "invalid_grant", "OAU-213", "Invalid JWT token (assertion)")
        now = self.clock()
        session = OAuthSession(
            id=self.new_id(), created=now, endpoint_id=secrets.token_urlsafe(16),
            access_token="", access_expires=0.0, refresh_token="", refresh_expires=0.0)
        self.sessions[session.id] = session
        info = self._issue(session, form)
        live = sorted((s for s in self.sessions.values() if not s.ended),
                      key=lambda s: s.created)
        evicted = [s.id for s in live[: max(0, len(live) - self.config.max_oauth_sessions)]]
        for session_id in evicted:
            self.end_session(session_id)
        return info, evicted

    def _refresh_grant(self, form: Mapping[str, str]) -> dict[str, Any]:
        token = form.get("refresh_token", "")
        session = self._session_of(self._refresh, token)
        if session is None or session.refresh_token != token:
            raise OAuthError(400, "invalid_grant", "OAU-211", "Token is revoked or not found")
        if self.clock() >= session.refresh_expires:
            raise OAuthError(400, "invalid_grant", "OAU-212", "Refresh token has expired")
        # single use; the previous access token dies with it
        del self._refresh[token]
        self._access.pop(session.access_token, None)
        return self._issue(session, form)

    def _issue(self, session: OAuthSession, form: Mapping[str, str]) -> dict[str, Any]:
        access_ttl = self.config.access_token_ttl
        asked = _float(form.get("access_token_ttl"))
        if asked is not None:
            access_ttl = min(access_ttl, min(max(asked, _ACCESS_TTL_RANGE[0]),
                                             _ACCESS_TTL_RANGE[1]))
        refresh_ttl = self.config.refresh_token_ttl
        asked = _float(form.get("refresh_token_ttl"))
        if asked is not None and asked > 0:
            refresh_ttl = min(refresh_ttl, asked, _REFRESH_TTL_MAX)
        now = self.clock()
        session.access_token = self._secret()
        session.access_expires = now + access_ttl
        self._access[session.access_token] = session.id
        info: dict[str, Any] = {
            "access_token": session.access_token,
            "token_type": "bearer",
            "expires_in": seconds(access_ttl),
            "scope": " ".join(sorted(self.config.app_permissions)),
            "owner_id": self.config.extension_id,
            "endpoint_id": session.endpoint_id,
            "session_id": session.id,
        }
        if self.config.issue_refresh_tokens:
            session.refresh_token = self._secret()
            session.refresh_expires = now + refresh_ttl
            self._refresh[session.refresh_token] = session.id
            info["refresh_token"] = session.refresh_token
            info["refresh_token_expires_in"] = seconds(refresh_ttl)
        return info

    # -- revoke ------------------------------------------------------------------------

    def revoke(self, form: Mapping[str, str], authorization: str | None) -> list[str]:
        """Answer ``POST /restapi/oauth/revoke``: the ids of the sessions it ended."""
        if authorization is not None or "client_id" in form:
            self._check_client(form, authorization)
        token = form.get("token", "")
        session = self._session_of(self._access, token) or self._session_of(self._refresh, token)
        if session is None:
            return []  # unknown tokens are "revoked" already; RingCentral answers 200 too
        self.end_session(session.id)
        return [session.id]

    def forget_refresh_tokens(self) -> None:
        """Refuse every refresh token issued so far (a fault: the sessions live on)."""
        self._refresh.clear()

    def end_session(self, session_id: str) -> None:
        """End an OAuth session: every token of it stops working."""
        session = self.sessions.get(session_id)
        if session is None or session.ended:
            return
        session.ended = True
        self._access.pop(session.access_token, None)
        self._refresh.pop(session.refresh_token, None)
        for token in [t for t, ws in self.ws_tokens.items() if ws.oauth_session_id == session_id]:
            del self.ws_tokens[token]

    # -- bearer endpoints ---------------------------------------------------------------

    def authenticate(self, authorization: str | None) -> OAuthSession:
        """The OAuth session behind ``Authorization: Bearer <token>`` or a 401 ApiError."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "OAU-149", "Authorization header is missing or malformed")
        session = self._session_of(self._access, token)
        if session is None or session.access_token != token:
            raise ApiError(401, "OAU-128", "Access token is invalid or expired")
        if self.clock() >= session.access_expires:
            raise ApiError(401, "OAU-128", "Access token expired")
        return session

    def require(self, permission: str) -> None:
        """Refuse the call (403 InsufficientPermissions) unless the app has ``permission``."""
        if permission not in self.config.app_permissions:
            raise PermissionRefused(permission)

    def issue_ws_token(self, session: OAuthSession) -> dict[str, Any]:
        """A new WS token for ``session`` (``POST /restapi/oauth/wstoken``), minus ``uri``."""
        token = WsToken(self._secret(), session.id, self.clock() + self.config.ws_token_ttl)
        self.ws_tokens[token.token] = token
        return {"ws_access_token": token.token,
                "expires_in": seconds(self.config.ws_token_ttl)}

    def check_ws_token(self, token: str) -> WsToken | None:
        """The WS token if it is known, unexpired and its OAuth session still lives."""
        found = self.ws_tokens.get(token)
        if found is None or self.clock() >= found.expires:
            return None
        session = self.sessions.get(found.oauth_session_id)
        if session is None or session.ended:
            return None
        return found

    def issued_secrets(self) -> list[str]:
        """Every access, refresh and WS token ever issued (for no-secrets-in-logs tests)."""
        return list(self._issued)

    # -- helpers ---------------------------------------------------------------------

    def _check_client(self, form: Mapping[str, str], authorization: str | None) -> None:
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        scheme, _, encoded = (authorization or "").strip().partition(" ")
        if scheme.lower() == "basic":
            try:
                pair = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                pair = ""
            client_id, _, client_secret = pair.partition(":")
        ok = (client_id is not None and client_secret is not None
              and hmac.compare_digest(client_id.encode(), self.config.client_id.encode())
              and hmac.compare_digest(client_secret.encode(), self.config.client_secret.encode()))
        if not ok:
            raise OAuthError(401, "invalid_client", "OAU-123", "Invalid client")

    def _session_of(self, index: dict[str, str], token: str) -> OAuthSession | None:
        session_id = index.get(token) if token else None
        session = self.sessions.get(session_id) if session_id else None
        return None if session is None or session.ended else session

    def _secret(self) -> str:
        value = secrets.token_urlsafe(32)
        self._issued.append(value)
        return value


def _float(value: str | None) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        return None
