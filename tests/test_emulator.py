"""The emulator over real loopback HTTP and WebSockets: OAuth, WS tokens, the gateway."""

from __future__ import annotations

import asyncio

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

from a2pd.emulator import DEFAULT_JWT, EmulatorConfigError
from tests.harness import TIMEOUT
from tests.platform_client import (
    A2P,
    ACCOUNT,
    ALL_FILTERS,
    BATCH,
    INBOUND,
    JWT_GRANT,
    OPTOUT,
    OUTBOUND,
    RECIPIENT,
    basic,
    closed,
    grant,
    login,
    open_socket,
    platform,
    refresh,
    session,
    ws_token,
)

# -- OAuth -----------------------------------------------------------------------------


async def test_jwt_grant_returns_token_info() -> None:
    """A JWT grant with Basic client auth returns TokenInfo with the A2P/WebSocket scopes."""
    async with platform() as (emu, http):
        info = await login(http)
    assert info["token_type"] == "bearer"
    assert info["expires_in"] == 3600
    assert info["refresh_token_expires_in"] == 604800
    assert {"WebSocketsSubscription", "A2PSMS", "ReadAccounts"} <= set(info["scope"].split())
    assert info["owner_id"] == ACCOUNT
    for key in ("access_token", "refresh_token", "endpoint_id", "session_id"):
        assert isinstance(info[key], str)
        assert info[key]
    assert emu.requests == [("POST", "/restapi/oauth/token", 200)]
    assert info["access_token"] in emu.issued_secrets()


async def test_client_credentials_in_the_body_are_accepted() -> None:
    """client_id/client_secret as form fields work like the Basic header."""
    async with platform() as (_, http):
        response = await http.post("/restapi/oauth/token", data={
            "grant_type": JWT_GRANT, "assertion": DEFAULT_JWT,
            "client_id": "demo-client-id", "client_secret": "demo-client-secret"})
    assert response.status_code == 200


async def test_wrong_client_secret_is_401_invalid_client() -> None:
    """Wrong client credentials answer 401 invalid_client with a RingCentral error body."""
    async with platform() as (_, http):
        response = await http.post("/restapi/oauth/token",
                                   data={"grant_type": JWT_GRANT, "assertion": DEFAULT_JWT},
                                   headers={"Authorization": basic(secret="nope")})
    assert response.status_code == 401
    body = response.json()
    assert body["error"] == "invalid_client"
    assert body["error_description"]
    assert body["errors"][0]["errorCode"] == "OAU-123"


async def test_wrong_jwt_is_400_invalid_grant() -> None:
    """A JWT the platform does not know answers 400 invalid_grant."""
    async with platform() as (_, http):
        response = await grant(http, assertion="a.wrong.jwt")
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid_grant"
    assert body["errors"][0]["errorCode"] == "OAU-213"


async def test_refresh_keeps_the_session_and_is_single_use() -> None:
    """A refresh keeps session_id, kills the old access token, and cannot be replayed."""
    async with platform() as (_, http):
        first = await login(http)
        response = await refresh(http, first["refresh_token"])
        assert response.status_code == 200
        second = response.json()
        assert second["session_id"] == first["session_id"]
        assert second["access_token"] != first["access_token"]
        again = await refresh(http, first["refresh_token"])
        assert again.status_code == 400
        assert again.json()["error"] == "invalid_grant"
        old = await http.post("/restapi/oauth/wstoken",
                              headers={"Authorization": f"Bearer {first['access_token']}"})
        assert old.status_code == 401
        assert old.json()["errorCode"] == "OAU-128"
        await ws_token(http, second["access_token"])


async def test_each_jwt_grant_is_a_new_session_and_the_oldest_is_evicted() -> None:
    """JWT grants open new sessions; past max_oauth_sessions the oldest stops working."""
    async with platform(max_oauth_sessions=2) as (_, http):
        sessions = [await login(http) for _ in range(3)]
        assert len({s["session_id"] for s in sessions}) == 3
        evicted = await http.post("/restapi/oauth/wstoken", headers={
            "Authorization": f"Bearer {sessions[0]['access_token']}"})
        assert evicted.status_code == 401
        assert (await refresh(http, sessions[0]["refresh_token"])).status_code == 400
        await ws_token(http, sessions[2]["access_token"])


async def test_revoke_ends_the_whole_session() -> None:
    """Revoking the access token also kills the refresh token of that session."""
    async with platform() as (_, http):
        info = await login(http)
        response = await http.post("/restapi/oauth/revoke", data={"token": info["access_token"]},
                                   headers={"Authorization": basic()})
        assert response.status_code == 200
        assert (await refresh(http, info["refresh_token"])).status_code == 400


async def test_access_token_ttl_is_honoured_within_the_config() -> None:
    """access_token_ttl is clamped to 600..3600 s, and a smaller configured TTL wins."""
    async with platform() as (_, http):
        asked = (await grant(http, access_token_ttl="60")).json()
        assert asked["expires_in"] == 600
    async with platform(access_token_ttl=0.05) as (_, http):
        info = (await grant(http, access_token_ttl="3600")).json()
        assert info["expires_in"] == 0.05
        await asyncio.sleep(0.1)  # let the token expire (time passing, not readiness)
        response = await http.post("/restapi/oauth/wstoken",
                                   headers={"Authorization": f"Bearer {info['access_token']}"})
        assert response.status_code == 401
        assert response.json()["errors"][0]["errorCode"] == "OAU-128"


async def test_wstoken_takes_a_lowercase_bearer_and_any_body() -> None:
    """The SDK's "bearer" scheme and JSON body {} get a WS token with the gateway uri."""
    async with platform(ws_token_ttl=30.0) as (emu, http):
        info = await login(http)
        response = await http.post("/restapi/oauth/wstoken", json={},
                                   headers={"Authorization": f"bearer {info['access_token']}"})
        assert response.status_code == 200
        doc = response.json()
        assert doc["uri"] == emu.ws_url
        assert doc["expires_in"] == 30
        assert doc["ws_access_token"]
        missing = await http.post("/restapi/oauth/wstoken")
        assert missing.status_code == 401


# -- connecting ------------------------------------------------------------------------


async def test_connection_details_is_the_first_frame() -> None:
    """A fresh connection starts with ConnectionDetails (wsc, limits, no recoveryState)."""
    async with platform() as (emu, http), session(emu, http) as (_, first):
        header, body = first
        assert header["type"] == "ConnectionDetails"
        assert header["status"] == 200
        assert header["headers"]["RCRequestId"]
        assert isinstance(header["wsc"]["token"], str)
        assert header["wsc"]["sequence"] == 0
        assert body["maxConnectionsPerSession"] == 50
        assert body["maxActiveRequests"] == 10
        assert body["recoveryBufferSize"] == 100
        assert body["recoveryTimeout"] == 180
        assert body["idleTimeout"] == 1800
        assert body["absoluteTimeout"] == 86400
        assert "recoveryState" not in body
        assert "recoveryErrorCode" not in body
        assert emu.connections[0].recovered is None


async def test_no_token_closes_with_4400() -> None:
    """Connecting without access_token is closed with code 4400."""
    async with platform() as (emu, _), open_socket(emu, None) as sock:
        error = await closed(sock)
    assert error.rcvd is not None
    assert error.rcvd.code == 4400


async def test_unknown_ws_token_gets_an_error_frame_then_close() -> None:
    """An unknown WS token gets an Error frame (401, OAU-128) and the socket is closed."""
    async with platform() as (emu, _), open_socket(emu, "not-a-token") as sock:
        header, body = await sock.frame()
        assert header["type"] == "Error"
        assert header["status"] == 401
        assert body["errorCode"] == "OAU-128"
        await closed(sock)


async def test_a_second_connection_with_the_same_ws_token_kicks_the_first() -> None:
    """One live connection per WS token: the newer one wins."""
    async with platform() as (emu, http):
        tokens = await login(http)
        token = (await ws_token(http, tokens["access_token"]))["ws_access_token"]
        async with open_socket(emu, token) as first:
            await first.frame()
            async with open_socket(emu, token) as second:
                assert (await second.frame())[0]["type"] == "ConnectionDetails"
                await closed(first)
                await second.send([{"type": "Heartbeat", "messageId": "hb"}])
                assert (await second.frame())[0]["type"] == "Heartbeat"


# -- requests over the socket ----------------------------------------------------------


async def test_subscribe_reply_matches_message_id_and_expands_filters() -> None:
    """The POST reply echoes messageId, has headers, and lists filters with ~ expanded."""
    filters = [f"{A2P}/batches", f"{A2P}/messages?direction=Inbound&to={RECIPIENT}",
               "/restapi/v1.0/account/~/extension/~/message-store", "not-a-filter"]
    async with platform() as (emu, http), session(emu, http) as (sock, _):
        reply = await sock.request("POST", "/restapi/v1.0/subscription", {
            "eventFilters": filters, "deliveryMode": {"transportType": "WebSocket"}})
        header, info = reply
        assert header["type"] == "ClientRequest"
        assert header["status"] == 200
        assert header["headers"]["Content-Type"] == "application/json"
        assert header["headers"]["RCRequestId"]
        assert "WSG-SubscriptionId" not in header["headers"]
        assert info["status"] == "Active"
        assert info["uri"].endswith(info["id"])
        assert info["expiresIn"] == 86399
        assert info["deliveryMode"] == {"transportType": "WebSocket", "encryption": False}
        assert info["eventFilters"] == [
            f"/restapi/v1.0/account/{ACCOUNT}/a2p-sms/batches",
            f"/restapi/v1.0/account/{ACCOUNT}/a2p-sms/messages?direction=Inbound&to={RECIPIENT}",
            f"/restapi/v1.0/account/{ACCOUNT}/extension/{ACCOUNT}/message-store",
        ]
        assert [d["filter"] for d in info["disabledFilters"]] == ["not-a-filter"]
        assert info["creationTime"].endswith("Z")
        assert await emu.wait_for_subscription(timeout=TIMEOUT) == info["id"]


async def test_only_invalid_filters_is_sub_508() -> None:
    """A subscription whose filters are all invalid is refused with 400 SUB-508."""
    async with platform() as (emu, http), session(emu, http) as (sock, _):
        header, body = await sock.request("POST", "/restapi/v1.0/subscription", {
            "eventFilters": [f"{A2P}/messages?direction=Sideways", "/nope"],
            "deliveryMode": {"transportType": "WebSocket"}})
        assert header["type"] == "ClientRequest"
        assert header["status"] == 400
        assert body["errorCode"] == "SUB-508"
        assert body["errors"][0]["errorCode"] == "SUB-508"


async def test_a_non_websocket_delivery_mode_is_refused() -> None:
    """Only transportType WebSocket can be subscribed over the socket."""
    async with platform() as (emu, http), session(emu, http) as (sock, _):
        header, _ = await sock.request("POST", "/restapi/v1.0/subscription", {
            "eventFilters": ALL_FILTERS, "deliveryMode": {"transportType": "WebHook"}})
        assert header["status"] == 400


async def test_heartbeat_is_answered_with_the_same_message_id() -> None:
    """A Heartbeat frame gets a Heartbeat reply with the same messageId and status 200."""
    async with platform() as (emu, http), session(emu, http) as (sock, _):
        await sock.send([{"type": "Heartbeat", "messageId": "hb-1"}])
        assert await sock.frame() == [{"type": "Heartbeat", "messageId": "hb-1", "status": 200}]


@pytest.mark.parametrize("frame", [
    '[{"type":"ClientRequest","messageId":"m1","method":"DELETE","path":"/x"},null]',
    "not json{", "{}", "[]",
])
async def test_unparseable_or_null_body_frames_get_wsg_808(frame: str) -> None:
    """A null body or an unparseable frame gets an Error frame WSG-808 with status 400."""
    async with platform() as (emu, http), session(emu, http) as (sock, _):
        await sock.ws.send(frame)
        header, body = await sock.frame()
        assert header["type"] == "Error"
        assert header["status"] == 400
        assert body["errorCode"] == "WSG-808"
        if "m1" in frame:
            assert header["messageId"] == "m1"
        # the connection survives
        await sock.send([{"type": "Heartbeat", "messageId": "after"}])
        assert (await sock.frame())[0]["messageId"] == "after"


async def test_a_second_post_replaces_the_subscription() -> None:
    """One subscription per session: the second POST gets a new id and the old one is gone."""
    async with platform() as (emu, http), session(emu, http) as (sock, _):
        first = await sock.subscribe([f"{A2P}/batches"])
        second = await sock.subscribe([f"{A2P}/opt-outs"])
        assert second["id"] != first["id"]
        header, _ = await sock.request("GET", f"/restapi/v1.0/subscription/{first['id']}")
        assert header["status"] == 404
        assert await emu.publish("batch", BATCH) == 0
        assert await emu.publish("optout", OPTOUT) == 1
        assert (await sock.notification())["subscriptionId"] == second["id"]


async def test_put_get_and_delete_a_subscription() -> None:
    """PUT changes the filters (same id), GET returns it, DELETE removes it; unknown is 404."""
    async with platform() as (emu, http), session(emu, http) as (sock, _):
        info = await sock.subscribe([f"{A2P}/batches"])
        path = f"/restapi/v1.0/subscription/{info['id']}"
        header, updated = await sock.request("PUT", path, {
            "eventFilters": [f"{A2P}/opt-outs"], "deliveryMode": {"transportType": "WebSocket"}})
        assert header["status"] == 200
        assert updated["id"] == info["id"]
        assert updated["eventFilters"] == [f"/restapi/v1.0/account/{ACCOUNT}/a2p-sms/opt-outs"]
        header, fetched = await sock.request("GET", path)
        assert fetched["eventFilters"] == updated["eventFilters"]
        header, body = await sock.request("PUT", "/restapi/v1.0/subscription/unknown-id",
                                          {"eventFilters": [f"{A2P}/batches"]})
        assert header["status"] == 404
        assert body["errorCode"] == "SUB-507"
        deleted = await sock.request("DELETE", path)
        assert deleted[0]["status"] in (200, 204)
        assert len(deleted) == 1
        assert await emu.publish("optout", OPTOUT) == 0


# -- notifications ---------------------------------------------------------------------


async def test_notifications_follow_the_filters_with_raw_plus_and_batch_id() -> None:
    """Events reach only the filters they match; ``+`` (raw or %2B) and batchId work."""
    filters = [
        f"{A2P}/messages?direction=Inbound&to={RECIPIENT}",
        f"{A2P}/messages?direction=Outbound&from=%2B16505550111",
        f"{A2P}/messages?batchId=other-batch",
        f"{A2P}/batches/{BATCH['id']}",
        f"{A2P}/opt-outs?from=+19999999999",
    ]
    async with platform() as (emu, http), session(emu, http) as (sock, _):
        info = await sock.subscribe(filters)
        assert await emu.publish("message", INBOUND) == 1
        assert await emu.publish("message", OUTBOUND) == 1
        assert await emu.publish("message", {**INBOUND, "to": ["+12125550100"]}) == 0
        assert await emu.publish("batch", BATCH) == 1
        assert await emu.publish("batch", {**BATCH, "id": "another"}) == 0
        assert await emu.publish("optout", OPTOUT) == 0
        got = [await sock.notification() for _ in range(3)]
    base = f"/restapi/v1.0/account/{ACCOUNT}/a2p-sms"
    assert [n["event"] for n in got] == [
        f"{base}/messages?direction=Inbound&to={RECIPIENT}",
        f"{base}/messages?direction=Outbound&from=%2B16505550111",
        f"{base}/batches/{BATCH['id']}",
    ]
    assert [n["body"] for n in got] == [INBOUND, OUTBOUND, BATCH]
    for n in got:
        assert n["subscriptionId"] == info["id"]
        assert n["ownerId"] == ACCOUNT
        assert len(n["uuid"]) == 19
        assert n["uuid"].isdigit()
        assert n["timestamp"].endswith("Z")
        assert len(n["timestamp"]) == 24
    assert [s.uuid for s in emu.sent] == [n["uuid"] for n in got]
    assert all(not s.replay for s in emu.sent)


async def test_several_matching_filters_give_one_notification() -> None:
    """An event matching two filters of one subscription is sent once, for the first filter."""
    async with platform() as (emu, http), session(emu, http) as (sock, _):
        await sock.subscribe([f"{A2P}/messages?direction=Outbound", f"{A2P}/messages"])
        assert await emu.publish("message", OUTBOUND) == 1
        first = await sock.notification()
        assert first["event"].endswith("/messages?direction=Outbound")
        assert await emu.publish("message", INBOUND) == 1
        second = await sock.notification()
        assert second["event"].endswith("/a2p-sms/messages")


async def test_notification_header_carries_wsc_every_nth_when_asked() -> None:
    """With wsc_on_notifications=2 every second notification header has a newer wsc."""
    async with platform(wsc_on_notifications=2) as (emu, http), \
            session(emu, http) as (sock, _):
        await sock.subscribe(ALL_FILTERS)
        for _ in range(4):
            await emu.publish("optout", OPTOUT)
        headers = [(await sock.frame())[0] for _ in range(4)]
    assert [h.get("wsc", {}).get("sequence") for h in headers] == [None, 2, None, 4]
    assert all(h["type"] == "ServerNotification" and h["status"] == 200 for h in headers)


async def test_publish_raw_frame_reaches_every_socket() -> None:
    """publish_raw_frame writes the bytes as they are to each live connection."""
    async with platform() as (emu, http), session(emu, http) as (sock, _):
        assert await emu.publish_raw_frame("not-json{") == 1
        async with asyncio.timeout(TIMEOUT):
            assert await sock.ws.recv() == "not-json{"


# -- recovery --------------------------------------------------------------------------


async def test_recovery_replays_what_was_missed_on_the_same_subscription() -> None:
    """Recovery with wsc (refreshed token, same session) is Successful and replays the gap."""
    async with platform() as (emu, http):
        tokens = await login(http)
        async with session(emu, http, tokens) as (sock, details):
            wsc = details[0]["wsc"]["token"]
            info = await sock.subscribe(ALL_FILTERS)
            await emu.publish("batch", BATCH)
            await sock.notification()
            await emu.drop_connections(mode="abrupt")
            await closed(sock)
        for i in range(3):
            assert await emu.publish("message", {**OUTBOUND, "id": f"during-{i}"}) == 1
        assert len(emu.sent) == 1
        assert len(emu.generated) == 4
        tokens = (await refresh(http, tokens["refresh_token"])).json()
        async with session(emu, http, tokens, wsc=wsc) as (sock, (header, body)):
            assert body["recoveryState"] == "Successful"
            assert "recoveryErrorCode" not in body
            # the new token still points where the replay starts (nothing delivered yet)
            assert header["wsc"]["sequence"] == 0
            replayed = [await sock.notification() for _ in range(4)]
            assert [n["body"].get("id") for n in replayed] == [
                BATCH["id"], "during-0", "during-1", "during-2"]
            assert {n["subscriptionId"] for n in replayed} == {info["id"]}
            assert await emu.wait_for_subscription(timeout=TIMEOUT) == info["id"]
            await emu.publish("optout", OPTOUT)
            live = await sock.notification()
            assert live["body"] == OPTOUT
    assert [s.replay for s in emu.sent] == [False, True, True, True, True, False]
    assert emu.sent[1].uuid == emu.sent[0].uuid  # a replay is the same notification
    assert emu.connections[1].recovered is True
    assert emu.connections[1].subscription_id == info["id"]


async def test_recovery_replays_only_after_the_presented_sequence() -> None:
    """A newer wsc (from a notification header) limits the replay to what came after it."""
    async with platform(wsc_on_notifications=1) as (emu, http):
        tokens = await login(http)
        async with session(emu, http, tokens) as (sock, _):
            await sock.subscribe(ALL_FILTERS)
            await emu.publish("optout", OPTOUT)
            await emu.publish("batch", BATCH)
            frames = [await sock.frame() for _ in range(2)]
            wsc = frames[1][0]["wsc"]
            assert wsc["sequence"] == 2
            await emu.drop_connections(mode="close")
            await closed(sock)
        await emu.publish("message", OUTBOUND)
        async with session(emu, http, tokens, wsc=wsc["token"]) as (sock, (header, body)):
            assert body["recoveryState"] == "Successful"
            assert header["wsc"]["sequence"] == 2
            assert (await sock.notification())["body"] == OUTBOUND
    assert [s.replay for s in emu.sent] == [False, False, True]


async def test_recovery_keeps_only_the_newest_buffered_notifications() -> None:
    """Past recovery_buffer_size only the newest notifications are replayed."""
    async with platform(recovery_buffer_size=2) as (emu, http):
        tokens = await login(http)
        async with session(emu, http, tokens) as (sock, details):
            await sock.subscribe(ALL_FILTERS)
            await emu.drop_connections(mode="abrupt")
            await closed(sock)
        for i in range(5):
            await emu.publish("message", {**OUTBOUND, "id": str(i)})
        async with session(emu, http, tokens, wsc=details[0]["wsc"]["token"]) as (sock, _):
            got = [(await sock.notification())["body"]["id"] for _ in range(2)]
            await emu.wait_sent(2, timeout=TIMEOUT)
    assert got == ["3", "4"]
    assert len(emu.sent) == 2


async def test_recovery_moves_a_still_open_session_to_the_new_socket() -> None:
    """Recovering while the old socket is still open moves the session and closes the old."""
    async with platform() as (emu, http):
        tokens = await login(http)
        async with session(emu, http, tokens) as (old, details):
            info = await old.subscribe(ALL_FILTERS)
            wsc = details[0]["wsc"]["token"]
            async with session(emu, http, tokens, wsc=wsc) as (new, (_, body)):
                assert body["recoveryState"] == "Successful"
                error = await closed(old)
                assert error.rcvd is not None
                assert error.rcvd.code == 1000
                await emu.publish("optout", OPTOUT)
                assert (await new.notification())["subscriptionId"] == info["id"]


async def test_recovery_without_a_subscription_fails_with_wsg_1005() -> None:
    """Recovering a session that never subscribed answers Failed / WSG-1005."""
    async with platform() as (emu, http):
        tokens = await login(http)
        async with session(emu, http, tokens) as (sock, details):
            await emu.drop_connections(mode="abrupt")
            await closed(sock)
        async with session(emu, http, tokens, wsc=details[0]["wsc"]["token"]) as (sock, first):
            assert first[1]["recoveryState"] == "Failed"
            assert first[1]["recoveryErrorCode"] == "WSG-1005"
            # the client subscribes again on the same socket
            await sock.subscribe(ALL_FILTERS)
    assert emu.connections[1].recovered is False


async def test_recovery_from_another_oauth_session_fails_with_wsg_1003() -> None:
    """A wsc presented with a token of a new OAuth session answers Failed / WSG-1003."""
    async with platform() as (emu, http):
        async with session(emu, http) as (sock, details):
            old = await sock.subscribe(ALL_FILTERS)
            await emu.drop_connections(mode="abrupt")
            await closed(sock)
        other = await login(http)
        async with session(emu, http, other, wsc=details[0]["wsc"]["token"]) as (sock, first):
            assert first[1]["recoveryState"] == "Failed"
            assert first[1]["recoveryErrorCode"] == "WSG-1003"
            new = await sock.subscribe(ALL_FILTERS)
            assert new["id"] != old["id"]


async def test_recovery_after_the_window_fails_with_wsg_1005() -> None:
    """Later than recoveryTimeout after the drop, recovery is Failed / WSG-1005."""
    async with platform(recovery_timeout=0.05) as (emu, http):
        tokens = await login(http)
        async with session(emu, http, tokens) as (sock, details):
            await sock.subscribe(ALL_FILTERS)
            await emu.drop_connections(mode="abrupt")
            await closed(sock)
        await asyncio.sleep(0.1)  # let the recovery window pass (time, not readiness)
        assert await emu.publish("optout", OPTOUT) == 0
        async with session(emu, http, tokens, wsc=details[0]["wsc"]["token"]) as (_, first):
            assert first[1]["recoveryState"] == "Failed"
            assert first[1]["recoveryErrorCode"] == "WSG-1005"


@pytest.mark.parametrize("wsc", ["made-up", "eyJzIjoiMSJ9.AAAA", ""])
async def test_a_bad_wsc_gets_wsg_400_and_a_close(wsc: str) -> None:
    """A made-up or tampered wsc gets an Error frame WSG-400 and the socket is closed."""
    async with platform() as (emu, http), session(emu, http, wsc=wsc) as (sock, first):
        header, body = first
        assert header["type"] == "Error"
        assert body["errorCode"] == "WSG-400"
        await closed(sock)


async def test_fail_next_recovery_forces_the_code() -> None:
    """fail_next_recovery makes one otherwise good recovery answer Failed with that code."""
    async with platform() as (emu, http):
        tokens = await login(http)
        async with session(emu, http, tokens) as (sock, details):
            await sock.subscribe(ALL_FILTERS)
            emu.fail_next_recovery(code="WSG-1003")
            await emu.drop_connections(mode="abrupt")
            await closed(sock)
        async with session(emu, http, tokens, wsc=details[0]["wsc"]["token"]) as (_, first):
            assert first[1]["recoveryErrorCode"] == "WSG-1003"
        with pytest.raises(EmulatorConfigError):
            emu.fail_next_recovery(code="WSG-9999")


async def test_a_disconnected_session_buffers_instead_of_sending() -> None:
    """While recoverable, matching events are generated (and counted) but not sent."""
    async with platform() as (emu, http), session(emu, http) as (sock, _):
        await sock.subscribe(ALL_FILTERS)
        await emu.drop_connections(mode="abrupt")
        await closed(sock)
        assert await emu.publish("optout", OPTOUT) == 1
    assert len(emu.generated) == 1
    assert not emu.generated[0].live
    assert emu.sent == []


# -- timeouts and drops ----------------------------------------------------------------


async def test_idle_timeout_sends_wsg_902_then_closes() -> None:
    """No frame from the client for idle_timeout: Error WSG-902, then close."""
    async with platform(idle_timeout=0.2) as (emu, http), session(emu, http) as (sock, first):
        assert first[1]["idleTimeout"] == 0.2
        header, body = await sock.frame()
        assert header["type"] == "Error"
        assert body == {"errorCode": "WSG-902", "message": "Idle timeout expired"}
        await closed(sock)
    assert emu.connections[0].closed


async def test_heartbeats_keep_the_idle_timer_from_firing() -> None:
    """Client frames reset the idle timer: heartbeats faster than idle_timeout keep it open."""
    async with platform(idle_timeout=0.5) as (emu, http), session(emu, http) as (sock, _):
        for i in range(6):
            await asyncio.sleep(0.15)  # pacing the client's heartbeats, not readiness
            await sock.send([{"type": "Heartbeat", "messageId": f"hb-{i}"}])
            assert (await sock.frame())[0]["type"] == "Heartbeat"


async def test_absolute_timeout_sends_wsg_903_then_closes() -> None:
    """After absolute_timeout the connection gets Error WSG-903, then close."""
    async with platform(absolute_timeout=0.2) as (emu, http), session(emu, http) as (sock, _):
        header, body = await sock.frame()
        assert header["type"] == "Error"
        assert body["errorCode"] == "WSG-903"
        await closed(sock)


async def test_server_pings_at_ping_interval() -> None:
    """With ping_interval set the server sends RFC 6455 pings (seen by a sans-I/O client)."""
    async with platform(ping_interval=0.05) as (emu, http):
        tokens = await login(http)
        token = (await ws_token(http, tokens["access_token"]))["ws_access_token"]
        client = ClientProtocol(parse_uri(f"{emu.ws_url}?access_token={token}"))
        reader, writer = await asyncio.open_connection("127.0.0.1", emu.port)
        try:
            client.send_request(client.connect())
            pings = 0
            async with asyncio.timeout(TIMEOUT):
                while pings < 2:
                    writer.write(b"".join(client.data_to_send()))  # pongs included
                    client.receive_data(await reader.read(65536))
                    pings += sum(1 for e in client.events_received()
                                 if isinstance(e, Frame) and e.opcode is Opcode.PING)
        finally:
            writer.close()
            await writer.wait_closed()


async def test_drop_abrupt_sends_no_close_frame() -> None:
    """mode=abrupt closes the TCP connection without a close frame."""
    async with platform() as (emu, http), session(emu, http) as (sock, _):
        assert await emu.drop_connections(mode="abrupt") == 1
        error = await closed(sock)
    assert error.rcvd is None


async def test_drop_close_is_a_normal_close() -> None:
    """mode=close sends a close frame with code 1000."""
    async with platform() as (emu, http), session(emu, http) as (sock, _):
        await emu.drop_connections(mode="close")
        error = await closed(sock)
    assert error.rcvd is not None
    assert error.rcvd.code == 1000


@pytest.mark.parametrize(("mode", "code"), [("error902", "WSG-902"), ("error903", "WSG-903")])
async def test_drop_with_an_error_frame(mode: str, code: str) -> None:
    """mode=error902/error903 sends the Error frame, then closes."""
    async with platform() as (emu, http), session(emu, http) as (sock, _):
        await emu.drop_connections(mode=mode)
        header, body = await sock.frame()
        assert header["type"] == "Error"
        assert body["errorCode"] == code
        await closed(sock)


async def test_unknown_drop_mode_is_refused() -> None:
    """drop_connections refuses a mode it does not know."""
    async with platform() as (emu, _):
        with pytest.raises(EmulatorConfigError):
            await emu.drop_connections(mode="explode")


# -- control API -----------------------------------------------------------------------


async def test_control_api_mirrors_the_python_api() -> None:
    """publish, sent, generated, traffic, drop, fail-next-recovery and health over HTTP."""
    async with platform() as (emu, http), session(emu, http) as (sock, _):
        await sock.subscribe(ALL_FILTERS)
        response = await http.post("/_emulator/publish", json={"kind": "optout", "body": OPTOUT})
        assert response.json() == {"generated": 1}
        await sock.notification()
        await emu.wait_sent(1, timeout=TIMEOUT)
        sent = (await http.get("/_emulator/sent")).json()
        assert sent[0]["body"] == OPTOUT
        assert sent[0]["replay"] is False
        assert len((await http.get("/_emulator/generated")).json()) == 1
        traffic = await http.post("/_emulator/traffic", json={
            "batches": 1, "batch_size": 2, "inbound": 1, "optouts": 1})
        assert traffic.json()["published"] >= 2 * 2 + 2 + 2
        health = (await http.get("/_emulator/health")).json()
        assert health["status"] == "ok"
        assert health["live_connections"] == 1
        bad = await http.post("/_emulator/publish", json={"kind": "nope", "body": {}})
        assert bad.status_code == 400
        assert (await http.post("/_emulator/fail-next-recovery",
                                json={"code": "WSG-1005"})).status_code == 200
        assert (await http.post("/_emulator/drop", json={"mode": "close"})).json() == {
            "dropped": 1}
        await closed(sock)
    assert all(not r[1].startswith("/_emulator") for r in emu.requests)


async def test_faults_over_the_control_api() -> None:
    """Scripted token answers (with Retry-After), refused upgrades, expired access tokens
    and refused refresh tokens, set over HTTP; bad requests are 400."""
    async with platform() as (emu, http):
        assert (await http.post("/_emulator/fault", json={
            "fault": "http", "endpoint": "wstoken", "status": 429, "retry_after": 7,
        })).status_code == 200
        token = await login(http)
        limited = await http.post("/restapi/oauth/wstoken",
                                  headers={"Authorization": f"Bearer {token['access_token']}"})
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == "7"
        assert limited.json()["errorCode"] == "CMN-301"
        await http.post("/_emulator/fault", json={"fault": "expire-access"})
        expired = await http.post("/restapi/oauth/wstoken",
                                  headers={"Authorization": f"Bearer {token['access_token']}"})
        assert expired.status_code == 401
        await http.post("/_emulator/fault", json={"fault": "break-refresh"})
        refused = await refresh(http, token["refresh_token"])
        assert refused.status_code == 400
        assert (await http.post("/_emulator/fault", json={"fault": "refuse"})).status_code == 200
        assert emu.faults.refusing
        await http.post("/_emulator/fault", json={"fault": "accept"})
        assert not emu.faults.refusing
        assert (await http.post("/_emulator/fault", json={"fault": "nope"})).status_code == 400
        assert (await http.post("/_emulator/fault", json={
            "fault": "http", "endpoint": "nope", "status": 500})).status_code == 400
    assert emu.faults.injected == {"wstoken.429": 1}


async def test_traffic_run_publishes_to_a_subscribed_socket() -> None:
    """emu.traffic.run publishes its flows through emu.publish to live subscriptions."""
    async with platform(seed=7) as (emu, http), session(emu, http) as (sock, _):
        await sock.subscribe(ALL_FILTERS)
        published = await emu.traffic.run(batches=2, batch_size=3, inbound=1, optouts=2)
        await emu.wait_sent(published, timeout=TIMEOUT)
        kinds = [(await sock.notification())["event"].rsplit("/", 1)[-1]
                 for _ in range(published)]
    assert {"batches", "messages", "opt-outs"} == set(kinds)


async def test_background_traffic_starts_and_stops() -> None:
    """traffic.start produces events until stop; running() cleans the task up."""
    async with platform() as (emu, http), session(emu, http) as (sock, _):
        await sock.subscribe(ALL_FILTERS)
        emu.traffic.start(rate=500.0)
        await emu.wait_sent(5, timeout=TIMEOUT)
        assert emu.traffic.running
        emu.traffic.stop()
    assert not emu.traffic.running


async def test_wait_helpers_time_out_with_an_emulator_timeout() -> None:
    """wait_sent raises EmulatorTimeout (a TimeoutError) when nothing comes."""
    async with platform() as (emu, _):
        with pytest.raises(TimeoutError):
            await emu.wait_sent(1, timeout=0.05)
