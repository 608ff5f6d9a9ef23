"""Faults the emulator injects on command (tests, the chaos run, the control API).

    answer(endpoint, status, code, retry_after, times)   the next ``times`` calls of an HTTP
        endpoint ("token", "wstoken") answer ``status`` with a RingCentral error body (and a
        Retry-After header when given) instead of being served: 429 rate limits, 401, 5xx
    refuse_connections() / accept_connections()   WebSocket upgrades are refused with HTTP
        503 while refusing (the TCP listener stays up, as behind a load balancer)
    stall(connection ids)   those connections keep their TCP socket open but stop answering
        and sending anything (Heartbeats unanswered, notifications held): a dead peer the
        client can only detect with its own timers
    expire_access_tokens()   every access token issued so far is expired (mid-connection)
    break_refresh_tokens()   every refresh token issued so far is refused (invalid_grant)

Every fault is explicit and deterministic; a seeded schedule of them (the chaos test) is
therefore reproducible from its seed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class HttpFault:
    """One scripted answer of an HTTP endpoint."""

    status: int
    code: str
    message: str
    retry_after: str | None = None


ENDPOINTS = ("token", "wstoken")
#: most scripted answers queued by one call (the control API is reachable over HTTP)
MAX_TIMES = 10_000


@dataclass
class Faults:
    """The faults in force; the server consults it on every call (see the module doc)."""

    http: dict[str, deque[HttpFault]] = field(
        default_factory=lambda: {name: deque() for name in ENDPOINTS})
    refusing: bool = False
    stalled: set[int] = field(default_factory=set)
    #: how many calls/upgrades each fault answered
    injected: dict[str, int] = field(default_factory=dict)

    def answer(self, endpoint: str, status: int, *, code: str = "", message: str = "",
               retry_after: float | str | None = None, times: int = 1) -> None:
        if endpoint not in self.http:
            raise ValueError(f"unknown endpoint {endpoint!r} (known: {', '.join(ENDPOINTS)})")
        if not 400 <= status <= 599 or not 1 <= times <= MAX_TIMES:
            raise ValueError(f"status must be 4xx/5xx and times 1..{MAX_TIMES}")
        default_code = {429: "CMN-301", 401: "OAU-128", 503: "CMN-211"}.get(status, "CMN-102")
        fault = HttpFault(status, code or default_code,
                          message or ("Request rate exceeded" if status == 429 else
                                      "Injected failure"),
                          None if retry_after is None else str(retry_after))
        self.http[endpoint].extend([fault] * times)

    def next_http(self, endpoint: str) -> HttpFault | None:
        queue = self.http.get(endpoint)
        if not queue:
            return None
        self._count(f"{endpoint}.{queue[0].status}")
        return queue.popleft()

    def refuse(self) -> bool:
        if self.refusing:
            self._count("refused")
        return self.refusing

    def _count(self, key: str) -> None:
        self.injected[key] = self.injected.get(key, 0) + 1
