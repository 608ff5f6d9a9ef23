"""The emulator's A2P REST list endpoints over real loopback HTTP."""

from __future__ import annotations

from typing import Any

import httpx

from a2pd.emulator.rest import RateLimit
from tests.platform_client import login, platform

LIST = "/restapi/v1.0/account/~/a2p-sms/"


def message(msg_id: str, status: str, at: str, **extra: Any) -> dict[str, Any]:
    """An outbound message body as the emulator publishes it."""
    return {"id": msg_id, "batchId": "b-1", "from": "+16505550111", "to": ["+14155550122"],
            "text": "hi", "direction": "Outbound", "messageStatus": status, "segmentCount": 1,
            "cost": 0.007, "creationTime": at, "lastModifiedTime": at, **extra}


async def get(http: httpx.AsyncClient, token: str, path: str, **params: Any) -> httpx.Response:
    """GET a list with a bearer token."""
    return await http.get(LIST + path, params=params,
                          headers={"Authorization": f"Bearer {token}"})


async def test_lists_need_a_valid_bearer_token() -> None:
    """Without an access token (or with a wrong one) every list answers 401."""
    async with platform() as (_, http):
        for path in ("messages", "batches", "opt-outs"):
            assert (await http.get(LIST + path)).status_code == 401
            response = await http.get(LIST + path, headers={"Authorization": "Bearer nope"})
            assert response.status_code == 401
            assert response.json()["errorCode"] == "OAU-128"


EVER = "2026-01-01T00:00:00Z"


async def test_messages_show_the_current_state_of_each_message_in_the_window() -> None:
    """The messages list holds each message's newest published state, selected by
    creationTime (a status change inside the window of a message created before it is not
    listed), direction and phone number; Detailed adds the text."""
    async with platform() as (emu, http):
        token = (await login(http))["access_token"]
        await emu.publish("message", message("1", "Queued", "2026-01-10T08:00:00.000000Z"))
        await emu.publish("message", message("1", "Delivered", "2026-01-10T08:00:05.000000Z"))
        await emu.publish("message", message("2", "Sent", "2026-01-10T09:00:00.000000Z"))
        await emu.publish("message", {**message("3", "Delivered", "2026-01-10T08:00:01Z"),
                                      "direction": "Inbound", "from": "+14155550199",
                                      "to": ["+16505550111"]})
        await emu.publish("message", message("4", "Queued", "2026-01-10T07:00:00Z"))
        await emu.publish("message", {**message("4", "Delivered", "2026-01-10T08:10:00Z"),
                                      "creationTime": "2026-01-10T08:10:00Z"})
        doc = (await get(http, token, "messages", dateFrom="2026-01-10T07:59:00Z",
                         dateTo="2026-01-10T08:30:00Z", view="Detailed")).json()
        assert [(r["id"], r["messageStatus"]) for r in doc["records"]] == [
            ("1", "Delivered"), ("3", "Delivered")]
        assert doc["records"][0]["text"] == "hi"
        simple = (await get(http, token, "messages", direction="Outbound",
                            dateFrom=EVER)).json()
        assert [r["id"] for r in simple["records"]] == ["4", "1", "2"]
        assert simple["records"][0]["creationTime"] == "2026-01-10T07:00:00Z"
        assert "text" not in simple["records"][0]
        by_phone = (await get(http, token, "messages", phoneNumber="+14155550199",
                              dateFrom=EVER)).json()
        assert [r["id"] for r in by_phone["records"]] == ["3"]
        by_batch = (await get(http, token, "messages", batchId="b-1")).json()
        assert by_batch["records"] == [], "without dateFrom the window is the last 24 hours"
        one = (await get(http, token, "messages/4")).json()
        assert one["messageStatus"] == "Delivered"
        assert (await get(http, token, "messages/nope")).status_code == 404
        bad = await get(http, token, "messages", dateFrom="yesterday")
        assert bad.status_code == 400


async def test_pages_follow_next_page_tokens() -> None:
    """perPage cuts a list into pages linked by nextPageToken; the last page has none."""
    async with platform() as (emu, http):
        token = (await login(http))["access_token"]
        for i in range(5):
            await emu.publish("message", message(str(i), "Sent", f"2026-01-10T08:00:0{i}Z"))
        seen: list[str] = []
        page_token: str | None = None
        pages = 0
        while True:
            params: dict[str, Any] = {"perPage": 2, "dateFrom": EVER}
            if page_token:
                params["pageToken"] = page_token
            doc = (await get(http, token, "messages", **params)).json()
            pages += 1
            seen += [r["id"] for r in doc["records"]]
            assert doc["paging"]["perPageCount"] == len(doc["records"])
            page_token = doc["paging"].get("nextPageToken")
            if page_token is None:
                break
        assert pages == 3
        assert seen == ["0", "1", "2", "3", "4"]
        assert (await get(http, token, "messages", pageToken="garbage")).status_code == 400


async def test_batches_and_opt_outs_lists() -> None:
    """Batches list by window and status; opt-outs keep one record per pair, OptOut/OptIn:
    the v1 list without times, the v2 consents list with lastModifiedTime."""
    async with platform() as (emu, http):
        token = (await login(http))["access_token"]
        batch = {"id": "b-1", "from": "+16505550111", "batchSize": 1, "processedCount": 0,
                 "status": "Processing", "creationTime": "2026-01-10T08:00:00Z",
                 "lastModifiedTime": "2026-01-10T08:00:00Z"}
        await emu.publish("batch", batch)
        await emu.publish("batch", {**batch, "status": "Completed", "processedCount": 1,
                                    "lastModifiedTime": "2026-01-10T08:00:09Z"})
        doc = (await get(http, token, "batches", dateFrom=EVER)).json()
        assert [(r["id"], r["status"]) for r in doc["records"]] == [("b-1", "Completed")]
        assert (await get(http, token, "batches")).json()["records"] == []
        one = (await get(http, token, "batches/b-1")).json()
        assert (one["status"], one["creationTime"]) == ("Completed", "2026-01-10T08:00:00Z")
        assert (await get(http, token, "batches/b-2")).status_code == 404
        pair = {"from": "+16505550111", "to": "+14155550122"}
        await emu.publish("optout", {**pair, "active": True})
        await emu.publish("optout", {**pair, "active": False})
        await emu.publish("optout", {"from": "+16505550111", "to": "+14155550133",
                                     "active": True})
        out = (await get(http, token, "opt-outs")).json()["records"]
        assert [r["to"] for r in out] == ["+14155550133"]
        every = (await get(http, token, "opt-outs", status="all")).json()["records"]
        assert sorted((r["to"], r["status"]) for r in every) == [
            ("+14155550122", "OptIn"), ("+14155550133", "OptOut")]
        # the v1 record as documented: no time at all
        assert all(set(r) == {"from", "to", "status", "source"} for r in every)
        consents = "/restapi/v2/accounts/~/sms/consents"
        v2 = (await http.get(consents, headers={"Authorization": f"Bearer {token}"})).json()
        assert [(r["to"], r["optStatus"]) for r in v2["records"]] == [
            ("+14155550133", "OptOut")]
        assert v2["paging"]["perPage"] == 100
        both = (await http.get(consents, params=[("optStatus", "OptOut"), ("optStatus", "OptIn"),
                                                  ("to", "+14155550122")],
                               headers={"Authorization": f"Bearer {token}"})).json()
        record, = both["records"]
        assert (record["optStatus"], record["source"]) == ("OptIn", "Recipient")
        assert record["lastModifiedTime"]


async def test_injected_faults_answer_429_with_retry_after_then_clear() -> None:
    """fail_lists(429, times=1) answers one call with 429 + Retry-After, then lists again;
    times=None fails until cleared."""
    async with platform() as (emu, http):
        token = (await login(http))["access_token"]
        emu.a2p.fail_lists(429, times=1, retry_after=2)
        first = await get(http, token, "messages")
        assert first.status_code == 429
        assert first.headers["Retry-After"] == "2"
        assert (await get(http, token, "messages")).status_code == 200
        emu.a2p.fail_lists(503, times=None)
        assert (await get(http, token, "batches")).status_code == 503
        assert (await get(http, token, "batches")).status_code == 503
        emu.a2p.clear_fault()
        assert (await get(http, token, "batches")).status_code == 200
        assert [status for _, status, _ in emu.a2p.calls] == [429, 200, 503, 503, 200]


def test_the_light_group_limit_slides_and_every_refused_call_restarts_the_penalty() -> None:
    """N calls fit in the sliding window; the next is refused for the penalty, and a call
    inside the penalty restarts it (the rate-limits page's "429 trap")."""
    now = [0.0]
    rate = RateLimit(3, 10.0, 5.0, lambda: now[0])
    remaining = []
    for at in (0.0, 1.0, 2.0):
        now[0] = at
        allowed, headers = rate.take()
        assert allowed
        remaining.append(headers["X-Rate-Limit-Remaining"])
    assert remaining == ["2", "1", "0"]
    now[0] = 3.0
    allowed, headers = rate.take()
    assert not allowed
    assert (headers["Retry-After"], headers["X-Rate-Limit-Window"]) == ("5", "10")
    now[0] = 7.0  # inside the penalty: refused, and the penalty now ends at 12
    assert not rate.take()[0]
    now[0] = 11.5
    assert not rate.take()[0]  # restarted again: ends at 16.5
    now[0] = 16.5
    allowed, headers = rate.take()
    assert allowed  # the window slid past the first three calls
    assert headers["X-Rate-Limit-Remaining"] == "2"


async def test_lists_answer_rate_limit_headers_and_short_pages() -> None:
    """Every answer carries the X-Rate-Limit-* headers; past the limit a 429 with
    Retry-After; a page holds at most a2p_page_limit records, linked by nextPageToken."""
    async with platform(a2p_rate_limit=3, a2p_rate_window=60.0, a2p_rate_penalty=60.0,
                        a2p_page_limit=2) as (emu, http):
        token = (await login(http))["access_token"]
        for i in range(3):
            await emu.publish("message", message(str(i), "Sent", f"2026-01-10T08:00:0{i}Z"))
        first = await get(http, token, "messages", dateFrom=EVER, perPage=1000)
        assert first.headers["X-Rate-Limit-Group"] == "Light"
        assert first.headers["X-Rate-Limit-Remaining"] == "2"
        doc = first.json()
        assert [r["id"] for r in doc["records"]] == ["0", "1"]
        following = await get(http, token, "messages", dateFrom=EVER,
                              pageToken=doc["paging"]["nextPageToken"])
        assert [r["id"] for r in following.json()["records"]] == ["2"]
        assert (await get(http, token, "batches/none")).status_code == 404
        refused = await get(http, token, "messages", dateFrom=EVER)
        assert refused.status_code == 429
        assert refused.json()["errorCode"] == "CMN-301"
        assert refused.headers["Retry-After"] == "60"
