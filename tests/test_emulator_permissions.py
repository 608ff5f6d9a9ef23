"""The emulator refuses what an app without a permission, or not made for the JWT flow, is
refused by the platform, in the platform's shapes (docs/protocol-notes.md §8c)."""

from __future__ import annotations

from typing import Any

import pytest

from a2pd.emulator import EmulatorConfig, EmulatorConfigError
from a2pd.emulator.config import DAEMON_PERMISSIONS
from tests.platform_client import A2P, ALL_FILTERS, grant, login, platform, session

SUBSCRIBE = {"deliveryMode": {"transportType": "WebSocket"}}


def assert_insufficient(body: dict[str, Any], permission: str) -> None:
    """The live platform's InsufficientPermissions body naming ``permission``."""
    message = f"In order to call this API endpoint, application needs to have [{permission}] " \
              "permission"
    assert body == {"errorCode": "InsufficientPermissions", "message": message,
                    "errors": [{"errorCode": "CMN-401", "message": message,
                                "permissionName": permission}],
                    "permissionName": permission}


async def test_the_token_scope_lists_the_app_permissions() -> None:
    """The token reply's scope is the app's permissions (by default every one a2pd needs)."""
    async with platform(app_permissions=frozenset({"ReadAccounts", "A2PSMS"})) as (_, http):
        assert (await login(http))["scope"] == "A2PSMS ReadAccounts"
    async with platform() as (_, http):
        assert set((await login(http))["scope"].split()) == DAEMON_PERMISSIONS


async def test_wstoken_needs_websocket_subscriptions() -> None:
    """Without WebSocketsSubscription the WS token is refused: 403 InsufficientPermissions."""
    async with platform(app_permissions=DAEMON_PERMISSIONS - {"WebSocketsSubscription"}) \
            as (_, http):
        token = (await login(http))["access_token"]
        response = await http.post("/restapi/oauth/wstoken",
                                   headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403
    assert_insufficient(response.json(), "WebSocketsSubscription")


async def test_the_subscription_can_be_where_websocket_permission_is_refused() -> None:
    """With ws_permission_refused_at="subscription" the WS token is issued and the
    subscription request is refused with 403 SUB-528."""
    async with platform(app_permissions=DAEMON_PERMISSIONS - {"WebSocketsSubscription"},
                        ws_permission_refused_at="subscription") as (emu, http), \
            session(emu, http) as (sock, first):
        assert first[0]["type"] == "ConnectionDetails"
        header, body = await sock.request("POST", "/restapi/v1.0/subscription",
                                          {"eventFilters": ALL_FILTERS, **SUBSCRIBE})
    assert header["status"] == 403
    assert body["errorCode"] == "SUB-528"
    assert "[SubscriptionWebSocket]" in body["message"]
    assert emu.gateway.subscription_count() == 0


async def test_a2p_filters_need_read_accounts() -> None:
    """A subscription with A2P filters needs ReadAccounts (their event-filter pages); one
    without A2P filters does not."""
    async with platform(app_permissions=DAEMON_PERMISSIONS - {"ReadAccounts"}) \
            as (emu, http), session(emu, http) as (sock, _):
        header, body = await sock.request("POST", "/restapi/v1.0/subscription",
                                          {"eventFilters": [f"{A2P}/batches"], **SUBSCRIBE})
        assert header["status"] == 403
        assert_insufficient(body, "ReadAccounts")
        header, _ = await sock.request("POST", "/restapi/v1.0/subscription", {
            "eventFilters": ["/restapi/v1.0/account/~/extension/~/message-store"],
            **SUBSCRIBE})
        assert header["status"] == 200


@pytest.mark.parametrize(("missing", "refused", "served"), [
    ("A2PSMS", ["/restapi/v1.0/account/~/a2p-sms/batches",
                "/restapi/v1.0/account/~/a2p-sms/messages",
                "/restapi/v1.0/account/~/a2p-sms/opt-outs"],
     ["/restapi/v2/accounts/~/sms/consents"]),
    ("SMS", ["/restapi/v2/accounts/~/sms/consents"],
     ["/restapi/v1.0/account/~/a2p-sms/batches"]),
])
async def test_lists_need_their_permission(missing: str, refused: list[str],
                                           served: list[str]) -> None:
    """The a2p-sms lists need A2PSMS, the consents list SMS (their API reference)."""
    async with platform(app_permissions=DAEMON_PERMISSIONS - {missing}) as (_, http):
        headers = {"Authorization": f"Bearer {(await login(http))['access_token']}"}
        for path in refused:
            response = await http.get(path, headers=headers)
            assert response.status_code == 403, path
            assert_insufficient(response.json(), missing)
        for path in served:
            assert (await http.get(path, headers=headers)).status_code == 200, path


async def test_an_app_not_made_for_the_jwt_flow_is_refused_the_grant() -> None:
    """jwt_flow off: the JWT grant answers 403 unauthorized_client, OAU-112, no session."""
    async with platform(jwt_flow=False) as (emu, http):
        response = await grant(http)
    assert response.status_code == 403
    body = response.json()
    assert body["error"] == "unauthorized_client"
    assert body["errors"][0]["errorCode"] == "OAU-112"
    assert emu.oauth.sessions == {}


def test_the_refusal_place_is_validated() -> None:
    """ws_permission_refused_at is one of the two documented places."""
    with pytest.raises(EmulatorConfigError):
        EmulatorConfig(ws_permission_refused_at="connect")
