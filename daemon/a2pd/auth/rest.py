"""The platform's REST API as a2pd calls it: a network failure or a timeout is a
``PlatformError``; a 429 is ``RateLimited`` and holds every later call through ``post``
back for its Retry-After (the Auth rate group: a call during the penalty restarts it); a
refused call is remembered as the platform said it (``last_refusal``, for ``a2pd check``);
a missing permission is fatal."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import httpx

from a2pd import counts
from a2pd.config import PlatformConfig
from a2pd.errors import FatalPlatformError, PlatformError, RateLimited
from a2pd.logging import get_logger
from a2pd.observe import Counters
from a2pd.vocab import error_code, parse_retry_after

__all__ = [
    "DEFAULT_RETRY_AFTER",
    "MAX_RETRY_AFTER",
    "PERMISSION_CODES",
    "PlatformRest",
    "Refusal",
    "json_object",
    "refusal",
    "retry_after_of",
]

log = get_logger("auth")

DEFAULT_RETRY_AFTER = 30.0  # docs: without Retry-After wait at least 30 s (PROTOCOL.md §6)
#: a Retry-After longer than this is read as this (a clock far off, a typo on their side)
MAX_RETRY_AFTER = 3600.0
PERMISSION_CODES = frozenset({"SUB-528", "CMN-401", "InsufficientPermissions", "OAU-151"})


@dataclass(frozen=True, slots=True)
class Refusal:
    """What the platform said when it refused a call, as it said it (``a2pd check`` shows it;
    nothing here is a secret: the platform's error bodies name codes and permissions)."""

    path: str
    status: int
    #: ``errorCode``, else OAuth's ``error`` (vocab.error_code)
    code: str | None
    #: every error code in the body: the top-level one and each ``errors[].errorCode``
    codes: tuple[str, ...]
    message: str | None
    #: the ``permissionName`` of an InsufficientPermissions answer
    permission: str | None


def refusal(path: str, status: int, body: Any) -> Refusal:
    """Read a RingCentral error body (REST, OAuth, or a ClientRequest reply) into a Refusal."""
    doc = body if isinstance(body, dict) else {}
    errors = doc.get("errors")
    inner = [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []
    codes = [c for c in (doc.get("errorCode"), doc.get("error"),
                         *(e.get("errorCode") for e in inner)) if isinstance(c, str)]

    def first(key: str) -> str | None:
        for item in (doc, *inner):
            value = item.get(key)
            if isinstance(value, str) and value:
                return value
        return None

    return Refusal(path, status, error_code(doc), tuple(dict.fromkeys(codes)),
                   first("error_description") or first("message"), first("permissionName"))


class PlatformRest:
    """Calls to one platform for one app (``client_id`` and secret for Basic auth)."""

    def __init__(self, platform: PlatformConfig, client_secret: str, client: httpx.AsyncClient,
                 counters: Counters, clock: Callable[[], float] = time.monotonic) -> None:
        self._platform = platform
        self._client_secret = client_secret
        self._client = client
        self._counters = counters
        self._clock = clock
        #: no call through ``post`` before this (monotonic): a 429's Retry-After
        self._blocked_until = 0.0
        #: the platform's latest refusal (non-2xx answer), for ``a2pd check``'s report
        self.last_refusal: Refusal | None = None

    async def post(self, path: str, *, form: dict[str, str] | None = None,
                    bearer: str | None = None, basic: bool = False) -> dict[str, Any]:
        wait = self._blocked_until - self._clock()
        if wait > 0:
            await anyio.sleep(wait)
        headers = {"Accept": "application/json"}
        if basic:
            pair = f"{self._platform.client_id}:{self._client_secret}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        return self.check(path, await self.request("POST", path, data=form, headers=headers))

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call to the platform; a network failure or timeout is a ``PlatformError``."""
        try:
            return await self._client.request(method, self._platform.server + path,
                                              timeout=self._platform.http_timeout, **kwargs)
        except httpx.TimeoutException as exc:
            raise PlatformError(f"timed out calling {path}") from exc
        except httpx.HTTPError as exc:
            raise PlatformError(f"cannot reach the platform for {path}: {type(exc).__name__}") \
                from exc

    async def get(self, path: str, params: Mapping[str, str] | None, bearer: str
                  ) -> dict[str, Any]:
        """One ``GET path``: the JSON object of a 2xx answer, else ``PlatformError``
        (``RateLimited`` for 429, which holds nothing back: another rate group)."""
        headers = {"Accept": "application/json", "Authorization": f"Bearer {bearer}"}
        response = await self.request("GET", path, params=params, headers=headers)
        body = json_object(response)
        status = response.status_code
        if 200 <= status < 300:
            return body
        self.last_refusal = refusal(path, status, body)
        if status == 429:
            raise RateLimited(f"{path} rate limited", retry_after=retry_after_of(response),
                              code=error_code(body))
        raise PlatformError(f"{path} failed", status=status, code=error_code(body))

    def check(self, path: str, response: httpx.Response) -> dict[str, Any]:
        status = response.status_code
        body = json_object(response)
        if 200 <= status < 300:
            return body
        self.last_refusal = refusal(path, status, body)
        code = error_code(body)
        if status == 429:
            retry_after = retry_after_of(response)
            self._blocked_until = self._clock() + retry_after
            self._counters.inc(counts.RATE_LIMITED)
            log.warning("rate_limited", path=path, retry_after=retry_after, code=code)
            raise RateLimited(f"{path} rate limited", retry_after=retry_after, code=code)
        if status == 403 or code in PERMISSION_CODES:
            raise FatalPlatformError(f"{path}: permission denied (does the app have the "
                                     "WebSocket Subscriptions and A2P SMS permissions?)",
                                     status=status, code=code)
        raise PlatformError(f"{path} failed", status=status, code=code)




def json_object(response: httpx.Response) -> dict[str, Any]:
    """The response's JSON object ({} for an empty, non-JSON or non-object body)."""
    try:
        body = response.json() if response.content else {}
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def retry_after_of(response: httpx.Response) -> float:
    """Seconds a platform's 429 says to wait: its Retry-After (delta-seconds or an HTTP-date,
    at most an hour), else ``DEFAULT_RETRY_AFTER``."""
    found = parse_retry_after(response.headers.get("Retry-After"), time.time())
    return DEFAULT_RETRY_AFTER if found is None else min(MAX_RETRY_AFTER, found)
