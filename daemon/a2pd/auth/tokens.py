"""The OAuth tokens of one session, as the platform issued them (monotonic times)."""

from __future__ import annotations

from typing import Any

__all__ = ["Tokens", "expiry_margin", "exported", "refresh_due", "restored"]


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


def refresh_due(tokens: Tokens, refresh_at: float) -> float:
    """When (monotonic) the access token should be refreshed: at ``refresh_at`` of its
    lifetime; without a refresh token only when it is about to expire (``expiry_margin``):
    all that can be done then is a new JWT grant, a new OAuth session, and a session
    dropped after it cannot be recovered."""
    if tokens.refresh is None:
        return tokens.access_expires - expiry_margin(tokens)
    return tokens.issued + (tokens.access_expires - tokens.issued) * refresh_at


# -- persistence (wall-clock times: a restart changes the monotonic clock) -------------------

def exported(tokens: Tokens, offset: float) -> dict[str, Any]:
    """``tokens`` as a JSON-able document, ``offset`` (wall clock minus monotonic clock) added
    to its times (secrets: the caller only ever stores it encrypted). Whole seconds: the two
    clocks' offset jitters by microseconds from call to call, and unchanged tokens must
    export unchanged (the daemon saves on change)."""
    return {"access": tokens.access, "refresh": tokens.refresh,
            "issued": round(tokens.issued + offset),
            "access_expires": round(tokens.access_expires + offset),
            "refresh_expires": round(tokens.refresh_expires + offset),
            "session_id": tokens.session_id, "owner_id": tokens.owner_id}


def restored(doc: dict[str, Any], offset: float) -> Tokens | None:
    """The tokens ``exported`` wrote (``offset`` as now); None if the document is unusable."""
    try:
        data = {"access_token": str(doc["access"]), "refresh_token": doc.get("refresh"),
                "session_id": doc.get("session_id"), "owner_id": doc.get("owner_id")}
        issued, access_expires, refresh_expires = (
            float(doc[key]) - offset for key in ("issued", "access_expires", "refresh_expires"))
    except (KeyError, TypeError, ValueError):
        return None
    tokens = Tokens(data, issued)
    # the times as saved: a lifetime of 0 is an expired token here, where in a platform's
    # reply a missing lifetime means the documented default
    tokens.access_expires, tokens.refresh_expires = access_expires, refresh_expires
    return tokens
