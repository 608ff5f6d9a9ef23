"""The bundled RingCentral platform emulator (OAuth, WS tokens, WebSocket Gateway, A2P SMS).

An independent implementation of the protocol in ``/work/shared/PROTOCOL.md`` for tests, the
demo and benchmarks; it never imports from the rest of ``a2pd`` so it can catch the
daemon's bugs. Modules: ``config`` (EmulatorConfig), ``errors`` (the exception tree),
``filters``/``oauth``/``gateway`` (pure protocol core), ``traffic`` (seeded A2P flows),
``server`` (Starlette + uvicorn edge, the :class:`Emulator`), ``cli`` (``python -m``).

Choices where PROTOCOL.md leaves room:

- no ``access_token`` on the URL: accept, then close with code 4400; an unknown or expired
  WS token: accept, send an ``Error`` frame (status 401, ``OAU-128``), close with 1008;
- a ``wsc`` that does not verify (made up, tampered): ``Error`` ``WSG-400``, close 1008;
- recovery later than ``recoveryTimeout``, or of a session already forgotten:
  ``Failed``/``WSG-1005``; a forced failure (``fail_next_recovery``) forgets the old session;
- ``wsc.sequence`` counts notifications generated for the WS session (0 when fresh); after a
  successful recovery ConnectionDetails carries the presented sequence (the replay start);
- every notification of a session (live or not) goes into its recovery buffer, so a replay
  may repeat frames the client already had (clients dedupe by ``uuid``);
- WSG-902/903 and drop mode ``close`` close with 1000 after the Error frame (status 400);
  a second socket on the same WS token, or a revoked/evicted OAuth session, closes with 1008;
- the idle timer counts client frames only (RFC 6455 pongs do not reset it, PROTOCOL 3);
- an expired access token does not close a live socket; revoke and eviction do;
- a missing app permission (``app_permissions``) is refused with 403
  ``InsufficientPermissions``/``CMN-401`` naming it: ``WebSocketsSubscription`` at the WS
  token (or, with ``ws_permission_refused_at="subscription"``, 403 ``SUB-528`` at the
  subscription request), ``ReadAccounts`` at a subscription with A2P filters, ``A2PSMS`` at
  the ``a2p-sms`` lists, ``SMS`` at the consents list (docs/protocol-notes.md §8c).
"""

from __future__ import annotations

from a2pd.emulator.config import DEFAULT_JWT, EmulatorConfig
from a2pd.emulator.errors import (
    ApiError,
    EmulatorConfigError,
    EmulatorError,
    EmulatorTimeout,
    NotRunning,
    OAuthError,
    PermissionRefused,
)
from a2pd.emulator.gateway import ConnectionInfo, GeneratedRecord, SentRecord
from a2pd.emulator.server import Emulator
from a2pd.emulator.traffic import Traffic, TrafficPlanner

__all__ = [
    "DEFAULT_JWT",
    "ApiError",
    "ConnectionInfo",
    "Emulator",
    "EmulatorConfig",
    "EmulatorConfigError",
    "EmulatorError",
    "EmulatorTimeout",
    "GeneratedRecord",
    "NotRunning",
    "OAuthError",
    "PermissionRefused",
    "SentRecord",
    "Traffic",
    "TrafficPlanner",
]
