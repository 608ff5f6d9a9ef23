"""Gap backfill: rebuild what an unrecovered gap lost from the A2P SMS REST lists.

When a session could not be recovered (``recoveryState: Failed``, the recovery window
passed, a fresh session after an outage or a restart) the notifications sent meanwhile are
gone (PROTOCOL.md §4.2, §7); when it was recovered, the replay holds at most
``recoveryBufferSize`` of them. The supervisor reports where the gap began; this module
persists it in the journal (table ``gaps``: a crash does not forget it), then lists

    GET /restapi/v1.0/account/~/a2p-sms/messages   dateFrom/dateTo, view=Detailed, paged
    GET /restapi/v1.0/account/~/a2p-sms/batches    dateFrom/dateTo, paged
    GET /restapi/v1.0/account/~/a2p-sms/opt-outs   from=*, status=all, paged (no date filter:
                                                   records dated inside the window only)

for [gap start - ``margin``, now] (now: notifications after the new subscription arrive
live, and content keys drop whichever of the two comes second). Every gap pending when a
backfill starts is covered by that one listing, from the oldest gap's start.

The lists select by *creation* time (docs/protocol-notes.md §9), so a state change inside
the gap of an object created before the window (a delivery receipt, a batch completing) is
not in them. The journal tracks the objects still open (``Journal.open_objects``); for
those created before the window the backfill also reads

    GET /restapi/v1.0/account/~/a2p-sms/batches/{batchId}            an open batch
    GET /restapi/v1.0/account/~/a2p-sms/messages?batchId=…&dateFrom=…  open messages, by batch,
                                                                     from their creation on
    GET /restapi/v1.0/account/~/a2p-sms/messages/{messageId}         an open message with no
                                                                     batch Each record that matches
one of the subscription's own event filters becomes a synthetic notification of the same
event model, marked ``"backfilled": true`` with uuid ``backfill:<content key>``, and goes
through the pipeline (routing, journal). The journal drops it when its content key
(events.content_key: message id + status + lastModifiedTime, …) was already received.
429 is obeyed (Retry-After); other failures are retried with backoff, the gap stays
pending until everything listed is committed.

The lists hold each object's current state only: a message that went Queued → Sent →
Delivered inside the gap comes back as one Delivered event. Nothing is invented: records
outside the window or matching no subscribed filter are skipped.

Never raises out of ``run`` for platform trouble; only cancellation ends it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote, unquote

import anyio
import httpx
from anyio.abc import TaskStatus

from daemon import events
from daemon.auth import TokenManager, parse_retry_after
from daemon.backoff import backoff
from daemon.config import BackfillConfig
from daemon.errors import PlatformError, RateLimited
from daemon.journal import Gap, Journal
from daemon.logging import get_logger
from daemon.pipeline import Pipeline

log = get_logger("backfill")

_FILTER = re.compile(
    r"^/restapi/v1\.0/account/[^/?]+/a2p-sms/(batches|messages|opt-outs)(?:\?(.*))?$")
LIST_PATH: Final = "/restapi/v1.0/account/~/a2p-sms/"
#: a list that keeps answering next pages is cut here (a platform bug must not loop us)
MAX_PAGES = 100_000


@dataclass(frozen=True, slots=True)
class Filter:
    """A subscribed A2P event filter: its resource and its query parameters."""

    text: str
    resource: str
    params: tuple[tuple[str, str], ...]

    def matches(self, body: dict[str, Any]) -> bool:
        """Whether a list record would have been notified through this filter."""
        for name, value in self.params:
            if name == "to":
                to = body.get("to")
                if value not in (to if isinstance(to, list) else [to]):
                    return False
            elif str(body.get(name)) != value:
                return False
        return True


def parse_filters(texts: list[str]) -> list[Filter]:
    """The A2P filters among the subscription's (other filters have no list to rebuild from)."""
    found = []
    for text in texts:
        match = _FILTER.match(text)
        if match is None:
            continue
        params = []
        for part in (match.group(2) or "").split("&"):
            if part:
                name, _, value = part.partition("=")
                # unquote, not unquote_plus: a raw "+" starts an E.164 number (§5.2)
                params.append((unquote(name), unquote(value)))
        found.append(Filter(text, match.group(1), tuple(params)))
    return found


def iso(wall: float) -> str:
    """A wall time as the lists' ISO 8601 (UTC, milliseconds)."""
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _wall(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def synthetic(resource: str, record: dict[str, Any], event_path: str,
              owner_id: str | None) -> dict[str, Any] | None:
    """The notification envelope equivalent to a list record (None: not enough to name it)."""
    if resource == "opt-outs":
        status = record.get("status")
        if status not in ("OptOut", "OptIn") and not isinstance(record.get("active"), bool):
            return None
        active = record["active"] if isinstance(record.get("active"), bool) else \
            status == "OptOut"
        body = {**record, "active": active}
        when = record.get("lastModifiedTime") or record.get("creationTime") or ""
        uuid = f"backfill:optout:{record.get('from')}:{record.get('to')}:" \
            f"{'true' if active else 'false'}:{when}"
    elif resource == "messages":
        body = dict(record)
        uuid = f"backfill:message:{record.get('id')}:{record.get('messageStatus')}:" \
            f"{record.get('lastModifiedTime') or ''}"
    else:
        body = dict(record)
        uuid = f"backfill:batch:{record.get('id')}:{record.get('status')}:" \
            f"{record.get('lastModifiedTime') or ''}"
    envelope: dict[str, Any] = {"uuid": uuid, "event": event_path, "backfilled": True,
                                "body": body}
    if owner_id:
        envelope["ownerId"] = owner_id
    return envelope


class Backfill:
    """Persists reported gaps and rebuilds them, one at a time, oldest first.

    Counters (the pipeline's): ``gaps_recorded``, ``gaps_backfilled``, ``backfill_records``
    (listed), ``backfill_pages``, ``backfill_skipped`` (outside the window or no subscribed
    filter), ``backfill_errors``, ``backfill_rate_limited``, ``backfill_window_cut``; the
    journal counts ``backfilled.<kind>`` (new events) and ``backfill_duplicates``.
    """

    def __init__(self, cfg: BackfillConfig, auth: TokenManager, http: httpx.AsyncClient,
                 server: str, filters: list[str], pipeline: Pipeline, *,
                 http_timeout: float = 30.0, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.auth = auth
        self.http = http
        self.server = server.rstrip("/")
        self.filters = parse_filters(filters)
        self.pipeline = pipeline
        self.journal: Journal = pipeline.journal
        self.counters = pipeline.counters
        self.http_timeout = http_timeout
        self._clock = clock
        self._opened: list[tuple[float, str]] = []
        self._wake = anyio.Event()

    def gap_opened(self, start: float, reason: str = "fresh session") -> None:
        """The supervisor's ``on_gap``: a gap began at ``start`` (wall time)."""
        self._opened.append((start, reason))
        self._wake.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Record and backfill gaps for ever (including gaps a previous run left pending)."""
        task_status.started()
        delays = backoff(self.cfg.retry_initial, 2.0, self.cfg.retry_max)
        while True:
            while self._opened:
                start, reason = self._opened[0]
                gap_id = await self.journal.add_gap(start)
                self._opened.pop(0)
                self.counters.inc("gaps_recorded")
                log.warning("gap_recorded", gap=gap_id, since=iso(start), reason=reason)
            pending = await self.journal.gaps()
            if not pending:
                await self._wake.wait()
                self._wake = anyio.Event()
                continue
            try:
                await self.backfill(pending)
            except RateLimited as exc:
                self.counters.inc("backfill_rate_limited")
                delay = max(exc.retry_after, 0.0)
                log.warning("backfill_rate_limited", retry_in=round(delay, 3), code=exc.code)
                await anyio.sleep(delay)
            except PlatformError as exc:
                self.counters.inc("backfill_errors")
                delay = next(delays)
                log.error("backfill_failed", reason=exc.reason, status=exc.status,
                          code=exc.code, retry_in=round(delay, 3),
                          note="the gap stays pending")
                await anyio.sleep(delay)
            else:
                delays = backoff(self.cfg.retry_initial, 2.0, self.cfg.retry_max)

    async def backfill(self, gaps: Sequence[Gap]) -> None:
        """List the gaps' window (from the oldest one's start), ingest what they lost, then
        forget them."""
        end = self._clock()
        start = min(gap.start for gap in gaps) - self.cfg.margin
        ids = [gap.id for gap in gaps]
        if end - start > self.cfg.max_window:
            self.counters.inc("backfill_window_cut")
            log.warning("backfill_window_cut", gaps=ids, since=iso(start),
                        max_window=self.cfg.max_window,
                        note="events older than max_window are not rebuilt")
            start = end - self.cfg.max_window
        before = self.counters.snapshot()
        listed = 0
        for resource in ("batches", "messages", "opt-outs"):
            chosen = [f for f in self.filters if f.resource == resource]
            if not chosen:
                continue
            async for record in self._list(resource, start, end):
                listed += 1
                await self._ingest(resource, record, chosen, start, end)
        listed += await self._open_objects(start, end)
        await self.journal.flush()
        for gap in gaps:
            await self.journal.close_gap(gap.id)
        self.counters.inc("gaps_backfilled", len(gaps))
        after = self.counters.snapshot()

        def grew(name: str) -> int:
            return sum(v - before.get(k, 0) for k, v in after.items()
                       if k == name or k.startswith(name + "."))

        log.warning("gap_backfilled", gaps=ids, since=iso(start), until=iso(end),
                    listed=listed, backfilled=grew("backfilled"),
                    duplicates=grew("backfill_duplicates"), skipped=grew("backfill_skipped"))

    async def _open_objects(self, start: float, end: float) -> int:
        """Read the later states of the objects still open that were created before the
        window (the lists would not show them); how many records were read."""
        chosen = {resource: [f for f in self.filters if f.resource == resource]
                  for resource in ("batches", "messages")}
        batches: list[str] = []
        singles: list[str] = []
        by_batch: dict[str, float] = {}
        for obj, batch, created in await self.journal.open_objects(start):
            kind, _, ident = obj.partition(":")
            if kind == "batch":
                batches.append(ident)
            elif batch is None:
                singles.append(ident)
            else:
                by_batch[batch] = min(created, by_batch.get(batch, created))
        read, gone = 0, []
        for resource, idents in (("batches", batches), ("messages", singles)):
            for ident in idents if chosen[resource] else ():
                record = await self._get_one(resource, ident)
                if record is None:
                    gone.append(f"{resource[:-1]}:{ident}")
                    continue
                read += 1
                await self._ingest(resource, record, chosen[resource], start, end)
        for batch, created in by_batch.items() if chosen["messages"] else ():
            # dateFrom defaults to dateTo - 24 h, batchId or not: from the oldest open
            # message's creation on (a second early: creation times have microseconds)
            async for record in self._list("messages", created - 1.0, end,
                                           {"batchId": batch}):
                read += 1
                await self._ingest("messages", record, chosen["messages"], start, end)
        if gone:
            log.info("backfill_objects_gone", objects=len(gone),
                     note="the platform no longer knows them; no longer tracked")
            await self.journal.forget_objects(gone)
        return read

    async def _get_one(self, resource: str, ident: str) -> dict[str, Any] | None:
        """One object's current state; None when the platform answers 404."""
        try:
            return await self._get(f"{resource}/{quote(ident, safe='')}", {})
        except PlatformError as exc:
            if exc.status == 404:
                return None
            raise

    async def _ingest(self, resource: str, record: Any, chosen: list[Filter],
                      start: float, end: float) -> None:
        if not isinstance(record, dict):
            self.counters.inc("backfill_skipped")
            return
        self.counters.inc("backfill_records")
        if resource == "opt-outs":
            # the opt-out list has no date filter: only records dated inside the window
            when = _wall(record.get("lastModifiedTime")) or _wall(record.get("creationTime"))
            if when is None or not start <= when <= end:
                self.counters.inc("backfill_skipped")
                return
        matched = next((f for f in chosen if f.matches(record)), None)
        if matched is None:
            self.counters.inc("backfill_skipped")
            return
        envelope = synthetic(resource, record, matched.text, self.auth.owner_id)
        raw = json.dumps(envelope if envelope is not None else record,
                         separators=(",", ":")).encode()
        decoded = events.decode_notification(envelope, raw) if envelope is not None else \
            events.EventError("list record lacks a status", raw)
        if isinstance(decoded, events.EventError):
            self.counters.inc("backfill_errors")
            log.warning("backfill_record_undecodable", reason=decoded.reason)
            await self.journal.queue_dead_letter("backfill", decoded.reason, raw,
                                                 uuid=decoded.uuid)
            return
        await self.pipeline.ingest_event(decoded)

    async def _list(self, resource: str, start: float, end: float,
                    extra: dict[str, str] | None = None) -> Any:
        """Every record of one list for the window, page after page."""
        params: dict[str, str] = {"perPage": str(self.cfg.per_page), **(extra or {})}
        if resource == "opt-outs":
            params.update({"from": "*", "status": "all"})
        else:
            params.update({"dateFrom": iso(start), "dateTo": iso(end)})
            if resource == "messages":
                params["view"] = "Detailed"
        token: str | None = None
        for _ in range(MAX_PAGES):
            page = await self._get(resource, params | ({"pageToken": token} if token else {}))
            self.counters.inc("backfill_pages")
            records = page.get("records")
            for record in records if isinstance(records, list) else []:
                yield record
            paging = page.get("paging")
            following = paging.get("nextPageToken") if isinstance(paging, dict) else None
            if not isinstance(following, str) or not following or following == token:
                return
            token = following
        log.error("backfill_paging_cut", resource=resource, pages=MAX_PAGES)

    async def _get(self, resource: str, params: dict[str, str]) -> dict[str, Any]:
        path = LIST_PATH + resource
        access = await self.auth.access_token()
        try:
            response = await self.http.get(
                self.server + path, params=params, timeout=self.http_timeout,
                headers={"Accept": "application/json", "Authorization": f"Bearer {access}"})
        except httpx.TimeoutException as exc:
            raise PlatformError(f"timed out listing {path}") from exc
        except httpx.HTTPError as exc:
            raise PlatformError(f"cannot reach the platform for {path}: "
                                f"{type(exc).__name__}") from exc
        try:
            body = response.json() if response.content else {}
        except ValueError:
            body = {}
        status = response.status_code
        code = body.get("errorCode") if isinstance(body, dict) else None
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
            raise RateLimited(f"{path} rate limited", retry_after=retry_after,
                              code=code if isinstance(code, str) else None)
        if not 200 <= status < 300 or not isinstance(body, dict):
            raise PlatformError(f"{path} failed", status=status,
                                code=code if isinstance(code, str) else None)
        return body
