"""The WebSocket session across restarts: what is saved (the OAuth tokens, the newest wsc,
the subscription, when the session was last alive), when (every second, when it changed,
and at a clean stop), and what a start restores (persist.py encrypts and writes it).

Only a wsc whose notifications are all durable is ever saved: a restart that presents it
gets, from the gateway, what was sent after it, and nothing journaled before it is lost.
"""

from __future__ import annotations

import time
from typing import Any

import anyio

from a2pd import protocol
from a2pd.auth import TokenManager
from a2pd.errors import A2pdError
from a2pd.journal import Journal
from a2pd.logging import get_logger, register_secret
from a2pd.persist import SessionStore
from a2pd.session import MAX_STALE, SessionState

__all__ = ["SessionKeeper"]

log = get_logger("daemon")


class SessionKeeper:
    """Saves and restores one daemon's session state through a ``SessionStore``."""

    def __init__(self, store: SessionStore, auth: TokenManager, state: SessionState,
                 journal: Journal) -> None:
        self._store = store
        self._auth = auth
        self._state = state
        self._journal = journal
        self._saved: dict[str, Any] | None = None
        #: one save at a time: the final save at a stop waits for a running one
        self._saving = anyio.Lock()

    def _doc(self) -> dict[str, Any]:
        state = self._state
        now, wall = anyio.current_time(), time.time()
        gone = None if state.disconnected_at is None or state.connected else \
            wall - (now - state.disconnected_at)
        return {
            "tokens": self._auth.export(),
            "wsc": state.wsc.model_dump() if state.wsc else None,
            "wsc_oauth_session": state.wsc_oauth_session,
            "subscription_id": state.subscription_id,
            "stale_subscriptions": list(state.stale_subscriptions),
            "recovery_timeout": state.recovery_timeout,
            "disconnected_at": gone,
            # while connected, when we last knew the session was alive (every 5 s)
            "alive_at": None if gone is not None else wall // 5 * 5,
        }

    async def save(self, *, flush: bool = True) -> None:
        """Save the state if it changed; ``flush``: commit the journal first (the committer
        is gone at a stop: then the caller checks that everything is durable)."""
        async with self._saving:
            doc = self._doc()
            if doc == self._saved or doc["tokens"] is None:
                return  # unchanged, or nothing worth keeping yet (no OAuth session)
            # only a wsc whose notifications are all durable may be presented after a crash
            if flush:
                try:
                    await self._journal.flush()
                except A2pdError:
                    return  # the journal is unusable: the daemon is stopping over it
            try:
                await anyio.to_thread.run_sync(self._store.save, doc)
            except OSError as exc:
                log.error("session_state_not_saved", error=exc.strerror or repr(exc),
                          note="the last saved state stands (a restart recovers from there, "
                          "or records the gap)")
                return
            self._saved = doc
            log.debug("session_state_saved", connected=doc["disconnected_at"] is None)

    async def keep(self) -> None:
        """Save every second, for ever."""
        while True:
            await self.save()
            await anyio.sleep(1.0)

    def restore(self) -> None:
        """Take over what the last run saved: its tokens, and its wsc and subscription if
        the session may still be recovered; a subscription that cannot is stale."""
        doc = self._store.load()
        if not doc or not doc.get("tokens") or not self._auth.restore(doc["tokens"]):
            return
        state = self._state
        stale = doc.get("stale_subscriptions")
        if isinstance(stale, list):
            state.stale_subscriptions = [str(s) for s in stale][-MAX_STALE:]
        try:
            gone = doc.get("disconnected_at") or doc.get("alive_at")
            if doc.get("wsc") and gone is not None:
                state.wsc = protocol.Wsc.model_validate(doc["wsc"])
                register_secret(state.wsc.token, kind="wsc")
                state.wsc_oauth_session = doc.get("wsc_oauth_session")
                state.subscription_id = doc.get("subscription_id")
                state.recovery_timeout = float(doc.get("recovery_timeout") or 180.0)
                away = max(0.0, time.time() - float(gone))
                state.disconnected_at = anyio.current_time() - away
                log.info("session_state_restored", subscription_id=state.subscription_id,
                         away=round(away, 3), recovery_timeout=state.recovery_timeout)
        except (TypeError, ValueError) as exc:
            log.warning("session_state_ignored", reason=f"bad wsc: {exc}")
            state.wsc = None
        left = doc.get("subscription_id")
        if state.wsc is None and isinstance(left, str):
            # not recoverable: the last run's subscription is stale (deleted once subscribed)
            state.subscription_id = left
            state.leave_subscription()
