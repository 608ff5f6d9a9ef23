"""The A2P SMS REST list endpoints, served from what the emulator published.

    GET /restapi/v1.0/account/{accountId|~}/a2p-sms/messages   (PROTOCOL.md §5.4)
    GET /restapi/v1.0/account/{accountId|~}/a2p-sms/messages/{messageId}
    GET /restapi/v1.0/account/{accountId|~}/a2p-sms/batches
    GET /restapi/v1.0/account/{accountId|~}/a2p-sms/batches/{batchId}
    GET /restapi/v1.0/account/{accountId|~}/a2p-sms/opt-outs   (v1: records without times)
    GET /restapi/v2/accounts/{accountId|~}/sms/consents         (v2: the current API)

``A2pStore`` keeps the current state of every message, batch and opt-out pair published
(the platform's view, whether or not a subscription took the notification), so a client
can rebuild what it missed. Lists answer ``{"records": [...], "paging": {...}}`` with an
opaque ``pageToken``/``nextPageToken`` and ``perPage`` (default 1000, as the spec says).
Every call needs a valid bearer access token (401 otherwise) and the app permission its
API reference names (403 InsufficientPermissions otherwise): ``A2PSMS`` for ``a2p-sms/*``,
``SMS`` for the consents list (docs/protocol-notes.md §8c). Tests can make the next calls
fail (``fail_lists``: e.g. 429 with Retry-After, or 503 until cleared, or a permanent 403).

Every call counts against the usage plan group "Light" (``RateLimit``): 50 requests per user
and app in a sliding 60 s window by default; past it, each call is refused with 429,
``Retry-After`` and the ``X-Rate-Limit-*`` headers for a 60 s penalty that every refused call
restarts (developer guide, "API rate limits"). A list page holds at most ``page_limit``
records whatever ``perPage`` asks for (the harshest reading: nothing promises a full page).

Date filters (``dateFrom``/``dateTo``) select records by ``creationTime``, as the High
Volume SMS message-store page says ("Return messages created after the start date"): a
message created before the window whose status changed inside it is *not* listed. Without
``dateFrom`` the window starts 24 h before ``dateTo`` (default: now), with ``batchId`` too
(docs/protocol-notes.md §9). The single-object reads answer the current state or 404.

Opt-outs: the v1 list answers the documented record ``{from, to, status, source}`` with no
time at all; the v2 consents list (ringcentral-extensible's current spec: ``SmsOptRecord``)
answers ``{from, to, optStatus, source, lastModifiedTime}``, ``optStatus`` filtering (default
``OptOut``), ``from``/``to`` filters, ``perPage`` 100 by default (at most 1000).

This module never imports from the rest of ``a2pd`` (only the emulator's own modules).
"""

from __future__ import annotations

import base64
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from a2pd.emulator.config import A2P_PERMISSION, SMS_PERMISSION
from a2pd.emulator.errors import ApiError
from a2pd.emulator.oauth import OAuthServer
from a2pd.emulator.traffic import iso_micros

PREFIX = "/restapi/v1.0/account/{account}/a2p-sms/"
DEFAULT_PER_PAGE = 1000
CONSENTS_PER_PAGE = 100
CONSENTS = "/restapi/v2/accounts/{account}/sms/consents"
MAX_PER_PAGE = 1000


@dataclass
class ListFault:
    """Answer list calls with ``status`` (``times`` times; None: until cleared), only those
    whose path contains ``only`` when it is set."""

    status: int
    times: int | None
    retry_after: float | None = None
    only: str | None = None


@dataclass
class RateLimit:
    """One usage plan group's limit for the emulator's one user and app."""

    limit: int
    window: float
    penalty: float
    clock: Callable[[], float]
    group: str = "Light"
    calls: deque[float] = field(default_factory=deque)
    penalty_until: float = 0.0

    def take(self) -> tuple[bool, dict[str, str]]:
        """Count one call: (allowed, the X-Rate-Limit-* headers, plus Retry-After if not)."""
        if self.limit == 0:
            return True, {}
        now = self.clock()
        while self.calls and self.calls[0] <= now - self.window:
            self.calls.popleft()
        allowed = now >= self.penalty_until and len(self.calls) < self.limit
        if allowed:
            self.calls.append(now)
        else:
            self.penalty_until = now + self.penalty  # every refused call restarts it
        headers = {"X-Rate-Limit-Group": self.group, "X-Rate-Limit-Limit": str(self.limit),
                   "X-Rate-Limit-Remaining": str(max(0, self.limit - len(self.calls)))
                   if allowed else "0",
                   "X-Rate-Limit-Window": f"{self.window:g}"}
        if not allowed:
            headers["Retry-After"] = f"{math.ceil(self.penalty * 1000) / 1000:g}"
        return allowed, headers


@dataclass
class A2pStore:
    """The current state of every message, batch and opt-out pair published."""

    account_id: str
    wall: Callable[[], float]
    rate: RateLimit | None = None
    page_limit: int = MAX_PER_PAGE
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    optouts: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    fault: ListFault | None = None
    #: (path, status, monotonic time) of every list call answered
    calls: list[tuple[str, int, float]] = field(default_factory=list)

    def record(self, kind: str, body: Mapping[str, Any]) -> None:
        """Remember a published event's body as the current state of its object (an object
        is created once: a later state keeps the first ``creationTime`` the store saw)."""
        if kind in ("message", "batch") and "id" in body:
            objects = self.messages if kind == "message" else self.batches
            previous = objects.get(str(body["id"]))
            state = dict(body)
            if previous is not None and previous.get("creationTime"):
                state["creationTime"] = previous["creationTime"]
            objects[str(body["id"])] = state
        elif kind == "optout" and "from" in body and "to" in body:
            key = (str(body["from"]), str(body["to"]))
            self.optouts[key] = {
                "from": key[0], "to": key[1],
                "optStatus": "OptOut" if body.get("active") else "OptIn",
                "source": "Recipient",
                "lastModifiedTime": iso_micros(self.wall()),
            }

    def fail_lists(self, status: int, times: int | None = 1,
                   retry_after: float | None = None, only: str | None = None) -> None:
        """Make the next list calls answer ``status`` (None ``times``: until ``clear``);
        with ``only``, just the calls whose path contains it."""
        self.fault = ListFault(status, times, retry_after, only)

    def clear_fault(self) -> None:
        self.fault = None

    # -- listing (pure) -------------------------------------------------------------------

    def list_messages(self, query: Mapping[str, list[str]]) -> dict[str, Any]:
        date_from, date_to = _window(query, self.wall())
        directions = set(query.get("direction", []))
        phones = set(query.get("phoneNumber", []))
        batch_ids = set(query.get("batchId", []))
        detailed = (query.get("view") or ["Simple"])[0] == "Detailed"
        rows = []
        for body in self.messages.values():
            if not _in_window(body, date_from, date_to):
                continue
            if directions and body.get("direction") not in directions:
                continue
            if batch_ids and str(body.get("batchId")) not in batch_ids:
                continue
            if phones and not phones & ({body.get("from")} | set(body.get("to") or [])):
                continue
            rows.append(body if detailed else {k: v for k, v in body.items() if k != "text"})
        return _page(rows, query, self.page_limit)

    def list_batches(self, query: Mapping[str, list[str]]) -> dict[str, Any]:
        date_from, date_to = _window(query, self.wall())
        senders = set(query.get("from", []))
        statuses = set(query.get("status", []))
        rows = [body for body in self.batches.values()
                if _in_window(body, date_from, date_to)
                and (not senders or body.get("from") in senders)
                and (not statuses or body.get("status") in statuses)]
        return _page(rows, query, self.page_limit)

    def get_message(self, object_id: str) -> dict[str, Any]:
        """One message's current state (the detailed view), or 404."""
        return _one(self.messages, object_id, "Message")

    def get_batch(self, object_id: str) -> dict[str, Any]:
        """One batch's current state, or 404."""
        return _one(self.batches, object_id, "Batch")

    def list_optouts(self, query: Mapping[str, list[str]]) -> dict[str, Any]:
        """v1 ``a2p-sms/opt-outs``: ``{from, to, status, source}``, no time (the docs')."""
        sender = (query.get("from") or ["*"])[0]
        recipients = query.get("to") or []
        recipient = recipients[0] if recipients else None
        status = (query.get("status") or ["optout"])[0].lower()
        rows = [{"from": row["from"], "to": row["to"], "status": row["optStatus"],
                 "source": row["source"]} for row in self.optouts.values()
                if (sender == "*" or row["from"] == sender)
                and (recipient is None or row["to"] == recipient)
                and (status == "all" or row["optStatus"].lower() == status)]
        return _page(rows, query, self.page_limit)

    def list_consents(self, query: Mapping[str, list[str]]) -> dict[str, Any]:
        """v2 ``sms/consents``: the current state of each pair, with its time."""
        statuses = set(query.get("optStatus") or ["OptOut"])
        senders = set(query.get("from") or [])
        recipients = set(query.get("to") or [])
        rows = [dict(row) for row in self.optouts.values()
                if row["optStatus"] in statuses
                and (not senders or row["from"] in senders)
                and (not recipients or row["to"] in recipients)]
        if "perPage" not in query:
            query = {**query, "perPage": [str(CONSENTS_PER_PAGE)]}
        return _page(rows, query, self.page_limit)


def _one(objects: dict[str, dict[str, Any]], object_id: str, name: str) -> dict[str, Any]:
    found = objects.get(object_id)
    if found is None:
        raise ApiError(404, "CMN-102", f"{name} [{object_id}] is not found")
    return found


def _time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _window(query: Mapping[str, list[str]], now: float) -> tuple[datetime, datetime]:
    """``dateFrom``/``dateTo``, defaulting to ``dateTo`` - 24 h and now (the spec's defaults)."""
    bounds: list[datetime | None] = []
    for name in ("dateFrom", "dateTo"):
        values = query.get(name)
        value = _time(values[0]) if values else None
        if values and value is None:
            raise ApiError(400, "CMN-101", f"Parameter [{name}] value is invalid")
        bounds.append(value)
    end = bounds[1] or datetime.fromtimestamp(now, UTC)
    start = bounds[0] or end - timedelta(hours=24)
    return start, end


def _in_window(body: Mapping[str, Any], start: datetime, end: datetime) -> bool:
    """Whether the record was *created* inside [start, end] (the lists' documented filter)."""
    created = _time(body.get("creationTime"))
    return created is not None and start <= created <= end


def _page(rows: list[dict[str, Any]], query: Mapping[str, list[str]], limit: int,
          ) -> dict[str, Any]:
    def order(row: dict[str, Any]) -> tuple[float, str, str]:
        when = _time(row.get("creationTime")) or _time(row.get("lastModifiedTime"))
        return (when.timestamp() if when else 0.0, str(row.get("id", "")), str(row.get("to")))

    rows = sorted(rows, key=order)
    try:
        per_page = int((query.get("perPage") or [str(DEFAULT_PER_PAGE)])[0])
    except ValueError:
        raise ApiError(400, "CMN-101", "Parameter [perPage] value is invalid") from None
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise ApiError(400, "CMN-101", "Parameter [perPage] value is invalid")
    tokens = query.get("pageToken") or []
    offset = _offset(tokens[0]) if tokens and tokens[0] else 0
    size = min(per_page, limit)
    page = rows[offset:offset + size]
    paging: dict[str, Any] = {"pageToken": _token(offset), "perPage": per_page,
                              "perPageCount": len(page)}
    if offset + size < len(rows):
        paging["nextPageToken"] = _token(offset + size)
    if offset > 0:
        paging["previousPageToken"] = _token(max(0, offset - size))
    return {"records": page, "paging": paging}


def _token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o{offset}".encode()).decode().rstrip("=")


def _offset(token: str) -> int:
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        offset = int(text[1:]) if text.startswith("o") else -1
    except (ValueError, UnicodeDecodeError):
        offset = -1
    if offset < 0:
        raise ApiError(400, "CMN-101", "Parameter [pageToken] value is invalid")
    return offset


Answer = Callable[[Mapping[str, list[str]], Mapping[str, Any]], dict[str, Any]]


def routes(store: A2pStore, oauth: OAuthServer) -> list[Route]:
    """The Starlette routes of the list and single-object endpoints."""

    def endpoint(name: str, lister: Answer,
                 permission: str = A2P_PERMISSION) -> Callable[[Request], Any]:
        async def handle(request: Request) -> Response:
            path = request.url.path
            response = _answer(request, lister)
            store.calls.append((path, response.status_code, time.monotonic()))
            return response

        def _answer(request: Request, lister: Answer) -> Response:
            try:
                oauth.authenticate(request.headers.get("authorization"))
                oauth.require(permission)
                allowed, limits = store.rate.take() if store.rate else (True, {})
                if not allowed:
                    return JSONResponse(ApiError(429, "CMN-301", "Request rate exceeded")
                                        .body(), status_code=429, headers=limits)
                account = request.path_params["account"]
                if account not in ("~", store.account_id):
                    return JSONResponse(ApiError(404, "CMN-102", f"Account [{account}] is not "
                                                 "found").body(), status_code=404)
                fault = store.fault
                if fault is not None and (fault.only is None or fault.only in
                                          request.url.path):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            store.fault = None
                    headers = {} if fault.retry_after is None else {
                        "Retry-After": f"{fault.retry_after:g}"}
                    code = {429: "CMN-301", 403: "CMN-408", 404: "CMN-102"}.get(
                        fault.status, "CMN-211")
                    return JSONResponse(ApiError(fault.status, code, "injected fault").body(),
                                        status_code=fault.status, headers=headers)
                query: dict[str, list[str]] = {}
                for key, value in request.query_params.multi_items():
                    # both direction=A&direction=B and direction[]=… forms
                    query.setdefault(key.removesuffix("[]"), []).append(value)
                return JSONResponse(lister(query, request.path_params), headers=limits)
            except ApiError as exc:
                return JSONResponse(exc.body(), status_code=exc.status)

        handle.__name__ = f"a2p_{name}"
        return handle

    return [
        Route(PREFIX + "messages", endpoint("messages", lambda q, _: store.list_messages(q)),
              methods=["GET"]),
        Route(PREFIX + "messages/{object_id}",
              endpoint("message", lambda _, p: store.get_message(p["object_id"])),
              methods=["GET"]),
        Route(PREFIX + "batches", endpoint("batches", lambda q, _: store.list_batches(q)),
              methods=["GET"]),
        Route(PREFIX + "batches/{object_id}",
              endpoint("batch", lambda _, p: store.get_batch(p["object_id"])),
              methods=["GET"]),
        Route(PREFIX + "opt-outs", endpoint("optouts", lambda q, _: store.list_optouts(q)),
              methods=["GET"]),
        Route(CONSENTS, endpoint("consents", lambda q, _: store.list_consents(q),
                                 SMS_PERMISSION), methods=["GET"]),
    ]
