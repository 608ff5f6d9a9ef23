"""The OAuth tokens of one session, as the platform issued them (monotonic times)."""

from __future__ import annotations

from typing import Any

__all__ = ["Tokens", "expiry_margin"]


class Tokens:
    """An access token, its refresh token, their expiry, and whose session they are."""

    __slots__ = ("access", "access_expires", "issued", "owner_id", "refresh", "refresh_expires",
                 "session_id")

    def __init__(self, data: dict[str, Any], now: float, previous: Tokens | None = None) -> None:
        self.access: str = str(data["access_token"])
        lifetime = float(data.get("expires_in") or 3600)
        self.issued = now
        self.access_expires = now + lifetime
        refresh = data.get("refresh_token")
        self.refresh: str | None = str(refresh) if refresh else None
        refresh_lifetime = data.get("refresh_token_expires_in")
        # no stated lifetime: assume the documented default (7 days) rather than "expired"
        self.refresh_expires = now + float(refresh_lifetime or 604800)
        # a refresh keeps the OAuth session; a reply that omits the id does not change it
        self.session_id: str | None = data.get("session_id") or (
            previous.session_id if previous else None)
        self.owner_id: str | None = data.get("owner_id") or (
            previous.owner_id if previous else None)


def expiry_margin(tokens: Tokens) -> float:
    """How early an access token is treated as expired: 5 s, or a tenth of a short
    lifetime."""
    return min(5.0, 0.1 * (tokens.access_expires - tokens.issued))
