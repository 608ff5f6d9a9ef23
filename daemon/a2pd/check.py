"""``a2pd check -c FILE``: is the RingCentral account and app this config names ready for a2pd?

    config → login (JWT grant) → refresh token → WebSocket token
      → WebSocket subscription (the config's filters: created, then deleted)
      → A2P list (a2p-sms/batches) → opt-outs list (sms/consents, when opt-outs are
        subscribed) → sign out (the OAuth session revoked)

One line per step on stdout: ``ok``, ``FAIL`` with what the platform said and, below it,
the fix in an operator's words (which Developer Console setting to change), or ``-`` for a
step that cannot run (``skipped (needs login)``). Later steps still run after a failure
when they can: a refused subscription does not stop the list checks. Exit 0 only when every
step is ok, 1 otherwise; a bad config raises ``ConfigError`` (the command line's guard:
exit 78). What each line means: docs/check.md.

It is built from the daemon's own parts (``auth.TokenManager``, ``session.probe_subscription``,
the backfill's list paths), so what passes here is what ``a2pd run`` does. It leaves nothing
behind on the platform: the subscription is deleted and the OAuth session revoked (a user
and app may hold only a few sessions, docs/protocol-notes.md). It must never print a
secret: each line is scrubbed of every secret the process registered (credentials, tokens).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

import anyio
import httpx

from a2pd import config
from a2pd import logging as a2pd_logging
from a2pd.auth import (
    NO_REFRESH_FIX,
    NO_REFRESH_NOTE,
    TOKEN_PATH,
    WSTOKEN_PATH,
    Refusal,
    TokenManager,
    WsToken,
    refusal,
)
from a2pd.backfill import CONSENTS_PATH, LIST_PATH, parse_filters
from a2pd.errors import (
    EXIT_CRASH,
    EXIT_OK,
    ConnectionLost,
    FatalPlatformError,
    PlatformError,
    RateLimited,
    one_line,
)
from a2pd.protocol import SUBSCRIPTION_PATH
from a2pd.session import Probe, connect_url, probe_subscription

__all__ = [
    "CLIENT_CODES",
    "CONSOLE",
    "FLOW_CODES",
    "PERMISSION_LABELS",
    "REFUSED",
    "REVOKE_WAIT",
    "Checker",
    "Refused",
    "Said",
    "State",
    "Step",
    "call_fix",
    "login_fix",
    "main",
    "permission_fix",
    "run_checks",
    "said_text",
    "subscription_fix",
    "ws_fix",
]

#: the Developer Console's names for the permissions a2pd needs (docs/protocol-notes.md §8c)
PERMISSION_LABELS = {
    "WebSocketsSubscription": "WebSocket Subscriptions",
    "SubscriptionWebSocket": "WebSocket Subscriptions",
    "A2PSMS": "A2P SMS",
    "SMS": "SMS",
    "ReadAccounts": "Read Accounts",
}
CONSOLE = "RingCentral Developer Console → your app → Settings"
CLIENT_CODES = frozenset({"invalid_client", "OAU-120", "OAU-121", "OAU-123", "OAU-146"})
FLOW_CODES = frozenset({"unauthorized_client", "OAU-112", "OAU-125", "OAU-251"})
#: a sign-out that waits longer than this (a 429's penalty) is given up: the session ends
#: by itself when its tokens expire
REVOKE_WAIT = 60.0

State = Literal["ok", "FAIL", "-"]
#: what the daemon's parts raise for a refused or failed call (both carry status and code)
Refused = PlatformError | FatalPlatformError
REFUSED = (PlatformError, FatalPlatformError)


@dataclass(frozen=True, slots=True)
class Step:
    """One step's outcome: ``said`` is the detail (what the platform said, for a failure)."""

    name: str
    state: State
    said: str = ""
    fix: str = ""

    def lines(self) -> list[str]:
        """The report lines: ``ok   name: detail``, ``FAIL name: said`` and ``fix: …``,
        ``-    name: skipped (why)``."""
        if self.state == "ok":
            head = f"ok   {self.name}" + (f": {self.said}" if self.said else "")
        elif self.state == "-":
            head = f"-    {self.name}: skipped ({self.said})"
        else:
            head = f"FAIL {self.name}: {self.said}"
        lines = [head] + ([f"     fix: {self.fix}"] if self.fix else [])
        # never a secret, never a control character (the platform's text is not ours)
        return [one_line(a2pd_logging.scrub(line.encode()).decode()) for line in lines]


def main(config_path: str) -> int:
    """Check the platform access ``config_path`` describes; the process exit code."""
    # the sinks' secrets are not needed to check the platform (and a sink's systemd
    # credential exists only inside the service)
    settings = config.load(config_path, sink_secrets=False)
    # the report is stdout; the daemon's own log lines (stderr) only for errors
    a2pd_logging.configure("error", settings.log.format)
    steps: list[Step] = []

    def report(step: Step) -> None:
        steps.append(step)
        for line in step.lines():
            print(line, flush=True)

    sources = settings.secret_sources
    report(Step("config", "ok", f"{config_path} (client secret from "
                                f"{sources.get('client_secret', '?')}, JWT from "
                                f"{sources.get('jwt', '?')})"))
    anyio.run(run_checks, settings, report)
    failed = sum(step.state == "FAIL" for step in steps)
    if failed:
        print(f"a2pd check: {failed} of {len(steps)} steps failed", flush=True)
        return EXIT_CRASH
    print(f"a2pd check: all {len(steps)} steps ok", flush=True)
    return EXIT_OK


async def run_checks(settings: config.Settings, report: Callable[[Step], None]) -> None:
    """Every step after the config, each reported as it ends."""
    async with httpx.AsyncClient(follow_redirects=False) as http:
        auth = TokenManager(settings.platform, settings.client_secret.get_secret_value(),
                            settings.jwt.get_secret_value(), settings.connection, http)
        await Checker(settings, auth, report).run()


class Checker:
    """The steps in order; a step that needs an earlier one's result is skipped without it."""

    def __init__(self, settings: config.Settings, auth: TokenManager,
                 report: Callable[[Step], None]) -> None:
        self.settings = settings
        self.auth = auth
        self.report = report
        self.server = settings.platform.server
        self.filters = list(settings.subscription.event_filters)

    async def run(self) -> None:
        if not await self.login():
            for name in ("refresh token", "websocket token", "websocket subscription",
                         "A2P list", "opt-outs list", "sign out"):
                self.report(Step(name, "-", "needs login"))
            return
        self.refresh_token()
        ws = await self.ws_token()
        if ws is None:
            self.report(Step("websocket subscription", "-", "needs a WebSocket token"))
        else:
            await self.subscription(ws)
        await self.lists()
        await self.sign_out()

    # -- steps ----------------------------------------------------------------------------

    async def login(self) -> bool:
        name = "login (JWT grant)"
        self.auth.last_refusal = None
        try:
            await self.auth.access_token()
        except REFUSED as exc:
            said = self._said(exc, TOKEN_PATH)
            self.report(Step(name, "FAIL", said.text, login_fix(exc, said.refusal,
                                                                self.server)))
            return False
        self.report(Step(name, "ok", f"OAuth session for extension {self.auth.owner_id}"
                         if self.auth.owner_id else ""))
        return True

    def refresh_token(self) -> None:
        name = "refresh token"
        if self.auth.has_refresh_token:
            self.report(Step(name, "ok", "issued"))
        else:
            self.report(Step(name, "FAIL", "the login answer carried no refresh token",
                             f"{NO_REFRESH_FIX}; {NO_REFRESH_NOTE}"))

    async def ws_token(self) -> WsToken | None:
        name = "websocket token"
        self.auth.last_refusal = None
        try:
            token = await self.auth.ws_token()
        except REFUSED as exc:
            said = self._said(exc, WSTOKEN_PATH)
            self.report(Step(name, "FAIL", said.text,
                             call_fix(exc, said.refusal, self.server, "WebSocketsSubscription")))
            return None
        host = urlsplit(token.uri).hostname or token.uri
        self.report(Step(name, "ok", f"gateway {host}"))
        return token

    async def subscription(self, ws: WsToken) -> None:
        name = "websocket subscription"
        url = connect_url(ws.uri, ws.ws_access_token, None)
        host = urlsplit(ws.uri).hostname or ws.uri
        try:
            probe = await probe_subscription(url, self.filters, self.settings.connection)
        except ConnectionLost as exc:
            said = exc.reason + (f" ({exc.code})" if exc.code else "")
            self.report(Step(name, "FAIL", f"gateway {host}: {said}", ws_fix(exc, host)))
            return
        self.report(await self._judge(name, probe))

    async def _judge(self, name: str, probe: Probe) -> Step:
        reply, info = probe.reply, probe.info
        if info is None:
            said = refusal(SUBSCRIPTION_PATH, reply.header.status or 0, reply.body)
            return Step(name, "FAIL", said_text(said), subscription_fix(said))
        deleted = probe.deleted or await self.auth.delete_subscription(info.id)
        problems = []
        if info.disabled_filters:
            problems.append(f"the platform disabled {len(info.disabled_filters)} of "
                            f"{len(self.filters)} filters: {info.disabled_filters}")
        if info.status and info.status != "Active":
            problems.append(f"the subscription is {info.status}, not Active")
        if problems:
            return Step(name, "FAIL", "; ".join(problems),
                        "correct subscription.event_filters in the config (each must be a "
                        "filter the platform documents, with the permissions it needs)")
        if not deleted:
            return Step(name, "FAIL", f"subscription {info.id} created but not deleted",
                        "nothing to change in the app; it expires by itself within 24 h, "
                        "and a2pd run deletes the subscriptions it left behind")
        return Step(name, "ok", f"{len(info.event_filters)} filters subscribed, then deleted")

    async def lists(self) -> None:
        if not self.settings.backfill.enabled:
            for name in ("A2P list", "opt-outs list"):
                self.report(Step(name, "-", "backfill.enabled is false: a2pd reads no list"))
            return
        await self._list("A2P list", LIST_PATH + "batches", {"perPage": "1"}, "A2PSMS")
        if not any(f.resource == "opt-outs" for f in parse_filters(self.filters)):
            self.report(Step("opt-outs list", "-", "no opt-out filter is subscribed"))
            return
        await self._list("opt-outs list", CONSENTS_PATH, {"optStatus": "OptOut",
                                                          "perPage": "1"}, "SMS")

    async def _list(self, name: str, path: str, params: dict[str, str],
                    permission: str) -> None:
        self.auth.last_refusal = None
        try:
            page = await self.auth.get(path, params)
        except REFUSED as exc:
            said = self._said(exc, path)
            self.report(Step(f"{name} ({path})", "FAIL", said.text,
                             call_fix(exc, said.refusal, self.server, permission)))
            return
        records = page.get("records")
        self.report(Step(f"{name} ({path})", "ok", f"{len(records)} on the first page"
                         if isinstance(records, list) else "answered"))

    async def sign_out(self) -> None:
        name = "sign out (revoke the OAuth session)"
        revoked = False
        with anyio.move_on_after(max(REVOKE_WAIT, self.settings.platform.http_timeout)):
            revoked = await self.auth.revoke()
        if revoked:
            self.report(Step(name, "ok"))
        else:
            self.report(Step(name, "FAIL", "the platform did not confirm the revocation",
                             "nothing to change in the app; the session ends by itself when "
                             "its tokens expire (run check again later to be sure the "
                             "platform can be reached)"))

    # -- helpers --------------------------------------------------------------------------

    def _said(self, exc: Refused, path: str) -> Said:
        """What the platform said about ``exc`` (its refusal, if it answered at all)."""
        found = self.auth.last_refusal
        if exc.status is None or found is None or found.path != path:
            return Said(exc.reason, None)
        return Said(said_text(found), found)


@dataclass(frozen=True, slots=True)
class Said:
    text: str
    refusal: Refusal | None


def said_text(said: Refusal) -> str:
    """``HTTP 403 InsufficientPermissions (CMN-401): In order to …``."""
    codes = list(said.codes)
    head = f"HTTP {said.status}" if said.status else "refused"
    if codes:
        head += f" {codes[0]}" + (f" ({', '.join(codes[1:])})" if codes[1:] else "")
    return head + (f": {said.message}" if said.message else "")


def permission_fix(permission: str) -> str:
    label = PERMISSION_LABELS.get(permission, permission)
    return (f"add the '{label}' permission to the app ({CONSOLE} → App Permissions), "
            "then run a2pd check again (a new login carries it)")


def _unreachable_fix(server: str) -> str:
    return (f"check platform.server ({server}; production is "
            "https://platform.ringcentral.com) and that this host can reach it (DNS, "
            "firewall, proxy)")


def _common_fix(exc: Refused, said: Refusal | None, server: str) -> str | None:
    """The fix for answers any call can get: none, a rate limit, a 5xx, a 404."""
    if exc.status is None or said is None:
        return _unreachable_fix(server)
    if isinstance(exc, RateLimited) or exc.status == 429:
        return "the platform's rate limit was hit: wait a minute, then run a2pd check again"
    if exc.status >= 500:
        return "the platform failed (a 5xx answer): run a2pd check again later"
    if exc.status == 404:
        return (f"the server does not know this path: is platform.server ({server}) the "
                "RingCentral platform's URL?")
    return None


def login_fix(exc: Refused, said: Refusal | None, server: str) -> str:
    """The fix for a refused JWT grant, by the codes the platform answered."""
    common = _common_fix(exc, said, server)
    if common is not None:
        return common
    codes = set(said.codes) if said is not None else set()
    if codes & CLIENT_CODES or exc.status == 401:
        return ("the client id or client secret is wrong: copy both again from the app's "
                "Credentials in the RingCentral Developer Console (platform.client_id, "
                "platform.client_secret)")
    if codes & FLOW_CODES:
        return ("the app does not use the JWT flow: set its auth to 'JWT auth flow' "
                f"({CONSOLE} → Auth), or register a new app that does")
    return ("the JWT credential was refused (mistyped, expired, revoked, or allowed only "
            "for other apps): create a new JWT in the Developer Console (your profile → "
            "Credentials) for a user of this account, allowed for this app or for all apps "
            "of your organization, and put it in platform.jwt")


def call_fix(exc: Refused, said: Refusal | None, server: str, permission: str) -> str:
    """The fix for a refused call that needs ``permission``."""
    common = _common_fix(exc, said, server)
    if common is not None:
        return common
    assert said is not None, "_common_fix answers when there is no refusal"
    if exc.status == 403 or set(said.codes) & {"InsufficientPermissions", "CMN-401",
                                                "SUB-528"}:
        return permission_fix(said.permission or permission)
    if exc.status == 401:
        return "the platform refused the new access token: run a2pd check again"
    return "the platform refused the call (see what it said above)"


def subscription_fix(said: Refusal) -> str:
    """The fix for a refused subscription request (answered over the socket)."""
    codes = set(said.codes)
    if "SUB-528" in codes:
        return permission_fix("WebSocketsSubscription")
    if codes & {"InsufficientPermissions", "CMN-401"}:
        return permission_fix(said.permission or "WebSocketsSubscription")
    if "SUB-505" in codes:
        return ("this user and app hold as many subscriptions as the platform allows: stop "
                "other clients of this app, or wait for abandoned ones to expire (24 h; "
                "a2pd run deletes those it left behind)")
    if "SUB-508" in codes or said.status == 400:
        return "correct subscription.event_filters in the config"
    if said.status == 429:
        return "the platform's rate limit was hit: wait a minute, then run a2pd check again"
    return "the platform refused the subscription (see what it said above)"


def ws_fix(exc: ConnectionLost, host: str) -> str:
    """The fix when the WebSocket could not be opened or ended early."""
    if exc.code is not None and exc.code.startswith("http-"):
        return (f"the gateway {host} refused the WebSocket upgrade: run a2pd check again; "
                "if it repeats, a proxy may be in the way")
    return (f"allow WebSocket connections (wss://, port 443) from this host to {host}, the "
            "gateway the platform named; a proxy that does not pass WebSocket upgrades "
            "blocks them")

