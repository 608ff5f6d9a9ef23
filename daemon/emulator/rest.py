"""The A2P SMS REST list endpoints, served from what the emulator published.

    GET /restapi/v1.0/account/{accountId|~}/a2p-sms/messages   (PROTOCOL.md §5.4)
    GET /restapi/v1.0/account/{accountId|~}/a2p-sms/batches
    GET /restapi/v1.0/account/{accountId|~}/a2p-sms/opt-outs

``A2pStore`` keeps the current state of every message, batch and opt-out pair published
(the platform's view, whether or not a subscription took the notification), so a client
can rebuild what it missed. Lists answer ``{"records": [...], "paging": {...}}`` with an
opaque ``pageToken``/``nextPageToken`` and ``perPage`` (default 1000, as the spec says).
Every call needs a valid bearer access token (401 otherwise). Tests can make the next calls
fail (``fail_lists``: e.g. 429 with Retry-After, or 503 until cleared).

Date filters (``dateFrom``/``dateTo``) compare with ``lastModifiedTime``: the list must
show a status change that happened inside the window even for a message created before it.
The real platform's docs do not say which time the filter uses (docs/protocol-notes.md).

This module never imports from the rest of ``daemon`` (only the emulator's own modules).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from daemon.emulator.errors import ApiError
from daemon.emulator.oauth import OAuthServer
from daemon.emulator.traffic import iso_micros

PREFIX = "/restapi/v1.0/account/{account}/a2p-sms/"
DEFAULT_PER_PAGE = 1000
MAX_PER_PAGE = 1000


@dataclass
class ListFault:
    """Answer list calls with ``status`` (``times`` times; None: until cleared)."""

    status: int
    times: int | None
    retry_after: float | None = None


@dataclass
class A2pStore:
    """The current state of every message, batch and opt-out pair published."""

    account_id: str
    wall: Callable[[], float]
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    optouts: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    fault: ListFault | None = None
    #: (path, status, monotonic time) of every list call answered
    calls: list[tuple[str, int, float]] = field(default_factory=list)

    def record(self, kind: str, body: Mapping[str, Any]) -> None:
        """Remember a published event's body as the current state of its object."""
        if kind == "message" and "id" in body:
            self.messages[str(body["id"])] = dict(body)
        elif kind == "batch" and "id" in body:
            self.batches[str(body["id"])] = dict(body)
        elif kind == "optout" and "from" in body and "to" in body:
            key = (str(body["from"]), str(body["to"]))
            now = iso_micros(self.wall())
            previous = self.optouts.get(key)
            self.optouts[key] = {
                "from": key[0], "to": key[1],
                "status": "OptOut" if body.get("active") else "OptIn",
                "source": "Recipient",
                "creationTime": previous["creationTime"] if previous else now,
                "lastModifiedTime": now,
            }

    def fail_lists(self, status: int, times: int | None = 1,
                   retry_after: float | None = None) -> None:
        """Make the next list calls answer ``status`` (None ``times``: until ``clear``)."""
        self.fault = ListFault(status, times, retry_after)

    def clear_fault(self) -> None:
        self.fault = None

    # -- listing (pure) -------------------------------------------------------------------

    def list_messages(self, query: Mapping[str, list[str]]) -> dict[str, Any]:
        date_from, date_to = _window(query)
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
        return _page(rows, query)

    def list_batches(self, query: Mapping[str, list[str]]) -> dict[str, Any]:
        date_from, date_to = _window(query)
        senders = set(query.get("from", []))
        statuses = set(query.get("status", []))
        rows = [body for body in self.batches.values()
                if _in_window(body, date_from, date_to)
                and (not senders or body.get("from") in senders)
                and (not statuses or body.get("status") in statuses)]
        return _page(rows, query)

    def list_optouts(self, query: Mapping[str, list[str]]) -> dict[str, Any]:
        sender = (query.get("from") or ["*"])[0]
        recipients = query.get("to") or []
        recipient = recipients[0] if recipients else None
        status = (query.get("status") or ["optout"])[0].lower()
        rows = [row for row in self.optouts.values()
                if (sender == "*" or row["from"] == sender)
                and (recipient is None or row["to"] == recipient)
                and (status == "all" or row["status"].lower() == status)]
        return _page(rows, query)


def _time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _window(query: Mapping[str, list[str]]) -> tuple[datetime | None, datetime | None]:
    bounds = []
    for name in ("dateFrom", "dateTo"):
        values = query.get(name)
        value = _time(values[0]) if values else None
        if values and value is None:
            raise ApiError(400, "CMN-101", f"Parameter [{name}] value is invalid")
        bounds.append(value)
    return bounds[0], bounds[1]


def _in_window(body: Mapping[str, Any], start: datetime | None, end: datetime | None) -> bool:
    when = _time(body.get("lastModifiedTime")) or _time(body.get("creationTime"))
    if when is None:
        return start is None and end is None
    return (start is None or when >= start) and (end is None or when <= end)


def _page(rows: list[dict[str, Any]], query: Mapping[str, list[str]]) -> dict[str, Any]:
    def order(row: dict[str, Any]) -> tuple[float, str, str]:
        when = _time(row.get("lastModifiedTime")) or _time(row.get("creationTime"))
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
    page = rows[offset:offset + per_page]
    paging: dict[str, Any] = {"pageToken": _token(offset), "perPage": per_page,
                              "perPageCount": len(page)}
    if offset + per_page < len(rows):
        paging["nextPageToken"] = _token(offset + per_page)
    if offset > 0:
        paging["previousPageToken"] = _token(max(0, offset - per_page))
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


def routes(store: A2pStore, oauth: OAuthServer) -> list[Route]:
    """The Starlette routes of the three list endpoints."""

    def endpoint(name: str, lister: Callable[[Mapping[str, list[str]]], dict[str, Any]]
                 ) -> Callable[[Request], Any]:
        async def handle(request: Request) -> Response:
            path = request.url.path
            response = _answer(request, lister)
            store.calls.append((path, response.status_code, time.monotonic()))
            return response

        def _answer(request: Request,
                    lister: Callable[[Mapping[str, list[str]]], dict[str, Any]]) -> Response:
            try:
                oauth.authenticate(request.headers.get("authorization"))
                account = request.path_params["account"]
                if account not in ("~", store.account_id):
                    return JSONResponse(ApiError(404, "CMN-102", f"Account [{account}] is not "
                                                 "found").body(), status_code=404)
                fault = store.fault
                if fault is not None:
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            store.fault = None
                    headers = {} if fault.retry_after is None else {
                        "Retry-After": f"{fault.retry_after:g}"}
                    code = "CMN-301" if fault.status == 429 else "CMN-211"
                    return JSONResponse(ApiError(fault.status, code, "injected fault").body(),
                                        status_code=fault.status, headers=headers)
                query: dict[str, list[str]] = {}
                for key, value in request.query_params.multi_items():
                    # both direction=A&direction=B and direction[]=… forms
                    query.setdefault(key.removesuffix("[]"), []).append(value)
                return JSONResponse(lister(query))
            except ApiError as exc:
                return JSONResponse(exc.body(), status_code=exc.status)

        handle.__name__ = f"a2p_{name}"
        return handle

    return [
        Route(PREFIX + "messages", endpoint("messages", store.list_messages), methods=["GET"]),
        Route(PREFIX + "batches", endpoint("batches", store.list_batches), methods=["GET"]),
        Route(PREFIX + "opt-outs", endpoint("optouts", store.list_optouts), methods=["GET"]),
    ]
