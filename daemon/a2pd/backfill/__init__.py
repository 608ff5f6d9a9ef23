"""Gap backfill: rebuild what an unrecovered gap lost from the A2P SMS REST lists.

When a session could not be recovered (``recoveryState: Failed``, the recovery window
passed, a fresh session after an outage or a restart) the notifications sent meanwhile are
gone (PROTOCOL.md §4.2, §7); when it was recovered, the replay holds at most
``recoveryBufferSize`` of them. The supervisor reports where the gap began; this module
persists it in the journal (table ``gaps``: a crash does not forget it), then lists

    GET /restapi/v1.0/account/~/a2p-sms/messages   dateFrom/dateTo, view=Detailed, paged
    GET /restapi/v1.0/account/~/a2p-sms/batches    dateFrom/dateTo, paged
    GET /restapi/v2/accounts/~/sms/consents        optStatus=OptOut&optStatus=OptIn, paged
                                                   (no date filter: records whose
                                                   lastModifiedTime is inside the window)

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
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

import anyio
import httpx
from anyio.abc import TaskStatus

from a2pd import counts, events
from a2pd.auth import TokenManager
from a2pd.backfill.lists import Lists
from a2pd.backfill.records import (
    CONSENTS_PATH,
    LIST_PATH,
    Filter,
    OpenObjects,
    iso,
    parse_filters,
    synthetic,
    wall,
    window_query,
)
from a2pd.config import BackfillConfig
from a2pd.errors import FatalPlatformError
from a2pd.ingest import Ingest
from a2pd.journal import Gap, Journal
from a2pd.logging import get_logger

__all__ = [
    "CONSENTS_PATH",
    "LIST_PATH",
    "PROGRESS_KEY",
    "TARGETED_READS",
    "Backfill",
    "Filter",
    "OpenObjects",
    "iso",
    "parse_filters",
    "synthetic",
    "window_query",
]

log = get_logger("backfill")

#: reads of open objects by id or batch beyond which one wide listing is cheaper
TARGETED_READS = 25
#: journal meta key of the listing in progress (resumed after a restart)
PROGRESS_KEY = "backfill_progress"


class Backfill:
    """Persists reported gaps and rebuilds them: every gap pending when a listing starts is
    covered by it, from the oldest gap's start.

    Every list call goes through ``lists.Lists`` (paced, retried, without leaving the page
    it was on). The step and page token reached are saved in the
    journal after each page is committed, so a restart resumes there. A permanent answer
    (``PERMANENT``) stops the backfill with one clear error until ``resume`` (a reload) or
    a restart; the gaps stay recorded meanwhile.

    Counters (the intake's): ``gaps_recorded``, ``gaps_backfilled``, ``backfill_records``
    (listed), ``backfill_pages``, ``backfill_skipped`` (outside the window or no subscribed
    filter), ``backfill_errors``, ``backfill_rate_limited``, ``backfill_paced`` (waits for
    the rate limit's window), ``backfill_refused``, ``backfill_window_cut``; the journal
    counts ``backfilled.<kind>`` (new events) and ``backfill_duplicates``.
    """

    def __init__(self, cfg: BackfillConfig, auth: TokenManager, http: httpx.AsyncClient,
                 server: str, filters: list[str], intake: Ingest, *,
                 http_timeout: float = 30.0, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.auth = auth
        self.filters = parse_filters(filters)
        self.intake = intake
        self.journal: Journal = intake.journal
        self.counters = intake.counters
        self.lists = Lists(cfg, auth, http, server, self.counters, http_timeout=http_timeout)
        self._clock = clock
        self._opened: list[tuple[float, str]] = []
        #: set when gaps were reported (to write), and when gaps were written (to list)
        self._record = anyio.Event()
        self._wake = anyio.Event()
        #: why the platform refused the lists for good (None: it did not)
        self.refused: str | None = None

    def gap_opened(self, start: float, reason: str = "fresh session") -> None:
        """The supervisor's ``on_gap``: a gap began at ``start`` (wall time). Written to the
        journal at once (``record_opened``), even while a listing runs."""
        self._opened.append((start, reason))
        self._record.set()

    async def record_opened(self) -> None:
        """Write the gaps reported so far to the journal (also at a stop: a run ends
        cleanly only once they are)."""
        while self._opened:
            start, reason = self._opened[0]
            gap_id = await self.journal.gaps.add(start)
            self._opened.pop(0)
            self.counters.inc(counts.GAPS_RECORDED)
            log.warning("gap_recorded", gap=gap_id, since=iso(start), reason=reason)
            self._wake.set()

    def resume(self) -> None:
        """Try again after a refusal (the operator may have fixed the app's permissions)."""
        if self.refused is not None:
            log.info("backfill_resumed")
        self.refused = None
        self._wake.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Record and backfill gaps for ever (including gaps a previous run left pending)."""
        task_status.started()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._record_for_ever)
            await self._backfill_for_ever()

    async def _record_for_ever(self) -> None:
        while True:
            await self.record_opened()
            await self._record.wait()
            self._record = anyio.Event()

    async def _backfill_for_ever(self) -> None:
        while True:
            pending = await self.journal.gaps.pending()
            if not pending or self.refused is not None:
                await self._wake.wait()
                self._wake = anyio.Event()
                continue
            try:
                await self.backfill(pending)
            except FatalPlatformError as exc:
                self.counters.inc(counts.BACKFILL_REFUSED)
                self.refused = f"{exc.reason} (HTTP {exc.status}, {exc.code or 'no code'})"
                log.error("backfill_refused", reason=exc.reason, status=exc.status,
                          code=exc.code, gaps=len(pending),
                          fix="give the app the A2P SMS permission (and check the server "
                          "URL); then reload (SIGHUP) or restart",
                          note="the gaps stay recorded; no list is read until then")

    async def backfill(self, gaps: Sequence[Gap]) -> None:
        """List the gaps' window (from the oldest one's start), ingest what they lost, then
        forget them. Resumes a listing a previous run left half done."""
        saved = await self.journal.gaps.get_meta(PROGRESS_KEY)
        plan = json.loads(saved) if saved else None
        # a gap is named by its id and start (ids of closed gaps are used again)
        pending = {(gap.id, gap.start) for gap in gaps}
        if plan is not None and {(i, s) for i, s in plan["gaps"]} <= pending:
            planned = {(i, s) for i, s in plan["gaps"]}
            gaps = [gap for gap in gaps if (gap.id, gap.start) in planned]
            start, end = float(plan["start"]), float(plan["end"])
            log.info("backfill_resumed_listing", gaps=[i for i, _ in plan["gaps"]],
                     step=plan["step"])
        else:
            plan = None
            end = self._clock()
            start = min(gap.start for gap in gaps) - self.cfg.margin
        ids = [gap.id for gap in gaps]
        if end - start > self.cfg.max_window:
            self.counters.inc(counts.BACKFILL_WINDOW_CUT)
            log.warning("backfill_window_cut", gaps=ids, since=iso(start),
                        max_window=self.cfg.max_window,
                        note="events older than max_window are not rebuilt")
            start = end - self.cfg.max_window
        before = self.counters.snapshot()
        listed = 0
        steps = [r for r in ("batches", "messages", "opt-outs")
                 if any(f.resource == r for f in self.filters)] + ["open"]
        first_step = steps.index(plan["step"]) if plan and plan["step"] in steps else 0
        for number, step in enumerate(steps[first_step:], first_step):
            if step == "open":
                listed += await self._open_objects(start, end)
                continue
            token = plan["token"] if plan is not None and number == first_step else None
            try:
                listed += await self._list_step(gaps, start, end, step, token)
            except FatalPlatformError as exc:
                if step != "opt-outs":
                    raise
                # the consents API needs the SMS permission: messages and batches go on
                self.counters.inc(counts.BACKFILL_OPTOUTS_REFUSED)
                log.error("backfill_optouts_refused", reason=exc.reason, status=exc.status,
                          code=exc.code, fix="give the app the SMS permission (the v2 "
                          "consents API); then reload (SIGHUP) or restart",
                          note="opt-out changes in this gap are not rebuilt")
            if number + 1 < len(steps):
                await self._save(gaps, start, end, steps[number + 1], None)
        await self.journal.flush()
        # progress first: a crash between the two lists the gaps again (never the reverse)
        await self.journal.gaps.set_meta(PROGRESS_KEY, None)
        for gap in gaps:
            await self.journal.gaps.close(gap.id)
        self.counters.inc(counts.GAPS_BACKFILLED, len(gaps))
        after = self.counters.snapshot()

        def grew(name: str) -> int:
            return sum(v - before.get(k, 0) for k, v in after.items()
                       if k == name or k.startswith(name + "."))

        log.warning("gap_backfilled", gaps=ids, since=iso(start), until=iso(end),
                    listed=listed, backfilled=grew("backfilled"),
                    duplicates=grew("backfill_duplicates"), skipped=grew("backfill_skipped"),
                    requests=grew("backfill_pages") + grew("backfill_reads"),
                    rate_limited=grew("backfill_rate_limited"))

    async def _list_step(self, gaps: Sequence[Gap], start: float, end: float, step: str,
                         token: str | None, *, save: bool = True) -> int:
        """One list of the window, from ``token``, progress saved after each page."""
        chosen = [f for f in self.filters if f.resource == step]
        listed = 0
        async for records, following in self.lists.pages(step, window_query(step, start, end),
                                                    token):
            for record in records:
                listed += 1
                await self._ingest(step, record, chosen, start, end)
            await self.journal.flush()
            if following is not None and save:
                await self._save(gaps, start, end, step, following)
        return listed

    async def _save(self, gaps: Sequence[Gap], start: float, end: float, step: str,
                    token: str | None) -> None:
        """Where the listing is: the next ``step`` and its page ``token`` (None: page 1)."""
        await self.journal.gaps.set_meta(PROGRESS_KEY, json.dumps(
            {"gaps": [[gap.id, gap.start] for gap in gaps], "start": start, "end": end,
             "step": step, "token": token}))

    async def _open_objects(self, start: float, end: float) -> int:
        """Read the later states of the objects still open that were created before the
        window (the lists would not show them); how many records were read. An open batch's
        messages are read too, even those the daemon never saw. Few objects: each batch by
        id and its messages by ``batchId``, a batch-less message by id; more than
        ``TARGETED_READS`` reads: the batches and messages lists from the oldest open
        object's creation on instead (fewer calls when many small batches are open)."""
        chosen = {resource: [f for f in self.filters if f.resource == resource]
                  for resource in ("batches", "messages")}
        objects = OpenObjects.of(await self.journal.gaps.open_objects(start), start)
        if objects.reads(batches=bool(chosen["batches"]),
                         messages=bool(chosen["messages"])) > TARGETED_READS:
            # a second early: creation times have microseconds
            read = 0
            for resource in ("batches", "messages"):
                if chosen[resource]:
                    read += await self._list_step([], objects.oldest - 1.0, end, resource,
                                                  None, save=False)
            return read
        read, gone = 0, []
        for resource, idents in (("batches", objects.batches), ("messages", objects.singles)):
            for ident in idents if chosen[resource] else ():
                try:
                    record = await self.lists.call(f"{resource}/{quote(ident, safe='')}", {})
                except FatalPlatformError as exc:
                    if exc.status != 404:
                        raise
                    gone.append(f"{resource[:-1]}:{ident}")
                    continue
                self.counters.inc(counts.BACKFILL_READS)
                read += 1
                await self._ingest(resource, record, chosen[resource], start, end)
        for batch, created in objects.by_batch.items() if chosen["messages"] else ():
            # dateFrom defaults to dateTo - 24 h, batchId or not: from the oldest open
            # object's creation on
            params = {"batchId": batch, "dateFrom": iso(created - 1.0), "dateTo": iso(end),
                      "view": "Detailed"}
            async for records, _ in self.lists.pages("messages", params, None):
                for record in records:
                    read += 1
                    await self._ingest("messages", record, chosen["messages"], start, end)
        if gone:
            log.info("backfill_objects_gone", objects=len(gone),
                     note="the platform no longer knows them; no longer tracked")
            await self.journal.gaps.forget_objects(gone)
        return read

    async def _ingest(self, resource: str, record: Any, chosen: list[Filter],
                      start: float, end: float) -> None:
        if not isinstance(record, dict):
            self.counters.inc(counts.BACKFILL_SKIPPED)
            return
        self.counters.inc(counts.BACKFILL_RECORDS)
        if resource == "opt-outs":
            # the consents list has no date filter: only records dated inside the window
            when = wall(record.get("lastModifiedTime")) or wall(record.get("creationTime"))
            if when is None or not start <= when <= end:
                self.counters.inc(counts.BACKFILL_SKIPPED)
                return
        matched = next((f for f in chosen if f.matches(record)), None)
        if matched is None:
            self.counters.inc(counts.BACKFILL_SKIPPED)
            return
        envelope = synthetic(resource, record, matched.text, self.auth.owner_id)
        raw = json.dumps(envelope if envelope is not None else record,
                         separators=(",", ":")).encode()
        decoded = events.decode_notification(envelope, raw) if envelope is not None else \
            events.EventError("list record lacks a status", raw)
        if isinstance(decoded, events.EventError):
            self.counters.inc(counts.BACKFILL_ERRORS)
            log.warning("backfill_record_undecodable", reason=decoded.reason)
            await self.journal.queue_dead_letter("backfill", decoded.reason, raw,
                                                 uuid=decoded.uuid)
            return
        await self.intake.ingest_event(decoded)

