"""The emulator's pure core, without sockets: filters, wsc tokens, OAuth state, traffic plans."""

from __future__ import annotations

import itertools
import json
import random
from typing import Any

import pytest

from a2pd.emulator import (
    DEFAULT_JWT,
    ApiError,
    EmulatorConfig,
    EmulatorConfigError,
    OAuthError,
)
from a2pd.emulator.filters import FilterRejected, parse_filter, split_query
from a2pd.emulator.gateway import Gateway
from a2pd.emulator.oauth import JWT_GRANT, OAuthServer
from a2pd.emulator.traffic import (
    DELIVERY_FAILURES,
    FINAL_STATUSES,
    SENDING_FAILURES,
    TrafficPlanner,
)

ACCOUNT = "400123456789"
A2P = "/restapi/v1.0/account/~/a2p-sms"
E164 = r"^\+1\d{10}$"
START = 1767254400.0  # 2026-01-01T08:00:00Z


def parse(text: str) -> Any:
    """Parse a filter for the default account."""
    return parse_filter(text, ACCOUNT, ACCOUNT)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def core(**overrides: Any) -> tuple[OAuthServer, Gateway, FakeClock]:
    """An OAuth server and gateway on a fake clock."""
    config = EmulatorConfig(**overrides)
    clock = FakeClock()
    ids = itertools.count(1)
    oauth = OAuthServer(config, clock, lambda: f"session-{next(ids)}")
    gateway = Gateway(config, oauth, clock, lambda: START, random.Random(0))
    return oauth, gateway, clock


def jwt_form() -> dict[str, str]:
    """The form of a good JWT grant with client credentials in the body."""
    return {"grant_type": JWT_GRANT, "assertion": DEFAULT_JWT, "client_id": "demo-client-id",
            "client_secret": "demo-client-secret"}


# -- filters ---------------------------------------------------------------------------


def test_split_query_keeps_a_raw_plus_and_decodes_percent_2b() -> None:
    """A raw + stays a plus (parse_qs would make it a space); %2B decodes to +."""
    assert split_query("to=+12406680432&from=%2B16505550111") == [
        ("to", "+12406680432"), ("from", "+16505550111")]


def test_filters_expand_the_account_and_keep_the_query_verbatim() -> None:
    """~ becomes the account id; the query string stays as subscribed."""
    parsed = parse(f"{A2P}/messages?direction=Inbound&to=%2B12406680432")
    assert parsed.expanded == (f"/restapi/v1.0/account/{ACCOUNT}/a2p-sms/messages"
                               "?direction=Inbound&to=%2B12406680432")
    assert parsed.param("to") == "+12406680432"
    assert parse(f"/restapi/v1.0/account/{ACCOUNT}/a2p-sms/opt-outs").kind == "optouts"
    assert parse("/restapi/v1.0/account/~/extension/~/presence").expanded == (
        f"/restapi/v1.0/account/{ACCOUNT}/extension/{ACCOUNT}/presence")


@pytest.mark.parametrize("text", [
    "", "nope", "/restapi/v2/foo", f"{A2P}/unknown", f"{A2P}/messages?direction=Sideways",
    f"{A2P}/batches?to=+12125550100", f"{A2P}/opt-outs?from=6505550100",
    "/restapi/v1.0/account/999/a2p-sms/batches", f"{A2P}/messages?from=+1&from=+2",
    "/restapi/v1.0/account/~/extension/~/presence?detailedTelephonyState=true",
])
def test_bad_filters_are_rejected_with_a_reason(text: str) -> None:
    """Unknown paths, bad parameters and other accounts are refused with a reason."""
    with pytest.raises(FilterRejected) as info:
        parse(text)
    assert info.value.reason


def test_message_filters_match_every_given_parameter() -> None:
    """direction, to (in the list), from and batchId must all match when given."""
    body = {"direction": "Inbound", "from": "+19287680662", "to": ["+12406680432"],
            "batchId": "b1"}
    assert parse(f"{A2P}/messages").matches("message", body)
    assert parse(f"{A2P}/messages?direction=Inbound&to=+12406680432").matches("message", body)
    assert not parse(f"{A2P}/messages?direction=Outbound").matches("message", body)
    assert not parse(f"{A2P}/messages?to=+12125550100").matches("message", body)
    assert parse(f"{A2P}/messages?batchId=b1").matches("message", body)
    assert not parse(f"{A2P}/messages?batchId=b2").matches("message", body)
    assert parse(f"{A2P}/messages?to=+12406680432").matches(
        "message", {**body, "to": "+12406680432"})
    assert not parse(f"{A2P}/batches").matches("message", body)


def test_batch_and_optout_filters_match_their_kind_only() -> None:
    """batches[?from], batches/{id} and opt-outs[?from] select their own events."""
    batch = {"id": "b1", "from": "+16505550100"}
    assert parse(f"{A2P}/batches?from=+16505550100").matches("batch", batch)
    assert not parse(f"{A2P}/batches?from=+16505550101").matches("batch", batch)
    assert parse(f"{A2P}/batches/b1").matches("batch", batch)
    assert not parse(f"{A2P}/batches/b2").matches("batch", batch)
    assert parse(f"{A2P}/opt-outs?from=+16505550100").matches("optout", batch)
    assert not parse(f"{A2P}/opt-outs").matches("batch", batch)


# -- wsc tokens ------------------------------------------------------------------------


def test_wsc_tokens_round_trip_and_reject_tampering() -> None:
    """A wsc token decodes to its session and sequence; any change makes it forged."""
    _, gateway, _ = core()
    token = gateway.wsc_token("session-1", 42)
    assert gateway.decode_wsc(token) == ("session-1", 42)
    payload, _, signature = token.partition(".")
    other = gateway.wsc_token("session-1", 43).partition(".")[0]
    assert gateway.decode_wsc(f"{other}.{signature}") is None
    assert gateway.decode_wsc(payload) is None
    assert gateway.decode_wsc("a.b") is None
    assert Gateway(gateway.config, gateway.oauth, gateway.clock, gateway.wall,
                   random.Random(0)).decode_wsc(token) is None


# -- OAuth -----------------------------------------------------------------------------


def test_oauth_refresh_rotates_tokens_and_expired_tokens_fail() -> None:
    """Refresh keeps the session; an expired access token gets 401 OAU-128."""
    oauth, _, clock = core(access_token_ttl=10.0)
    info, evicted = oauth.token(jwt_form(), None)
    assert evicted == []
    assert oauth.authenticate(f"Bearer {info['access_token']}").id == info["session_id"]
    refreshed, _ = oauth.token({"grant_type": "refresh_token",
                                "refresh_token": info["refresh_token"],
                                "client_id": "demo-client-id",
                                "client_secret": "demo-client-secret"}, None)
    assert refreshed["session_id"] == info["session_id"]
    clock.now += 11
    with pytest.raises(ApiError) as error:
        oauth.authenticate(f"bearer {refreshed['access_token']}")
    assert error.value.status == 401
    assert error.value.error_code == "OAU-128"


def test_oauth_refuses_unknown_grants_and_clients() -> None:
    """An unknown grant type is 400; a missing client is 401 invalid_client."""
    oauth, _, _ = core()
    with pytest.raises(OAuthError) as info:
        oauth.token({**jwt_form(), "grant_type": "password"}, None)
    assert info.value.status == 400
    with pytest.raises(OAuthError) as info:
        oauth.token({"grant_type": JWT_GRANT, "assertion": DEFAULT_JWT}, None)
    assert info.value.error == "invalid_client"


def test_ws_tokens_expire_and_die_with_their_session() -> None:
    """A WS token stops working after its TTL or when its OAuth session is revoked."""
    oauth, _, clock = core(ws_token_ttl=5.0)
    info, _ = oauth.token(jwt_form(), None)
    session = oauth.authenticate(f"Bearer {info['access_token']}")
    first = oauth.issue_ws_token(session)["ws_access_token"]
    assert oauth.check_ws_token(first) is not None
    clock.now += 6
    assert oauth.check_ws_token(first) is None
    second = oauth.issue_ws_token(session)["ws_access_token"]
    assert oauth.revoke({"token": info["refresh_token"]}, None) == [info["session_id"]]
    assert oauth.check_ws_token(second) is None


# -- config ----------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [
    {"port": 70000}, {"idle_timeout": 0}, {"recovery_buffer_size": -1},
    {"max_oauth_sessions": 0}, {"ping_interval": 0.0}, {"jwt": ""},
])
def test_bad_config_values_are_refused(overrides: dict[str, Any]) -> None:
    """EmulatorConfig validates its values."""
    with pytest.raises(EmulatorConfigError):
        EmulatorConfig(**overrides)


def test_default_jwt_has_three_base64url_parts() -> None:
    """The demo JWT is syntactically a JWT."""
    parts = DEFAULT_JWT.split(".")
    assert len(parts) == 3
    assert all(p and set(p) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") for p in parts)


# -- traffic ---------------------------------------------------------------------------


def plan(seed: int = 3, **counts: int) -> list[Any]:
    """A traffic plan from a fixed start time."""
    planner = TrafficPlanner(seed, now=lambda: START)
    return planner.plan(**{"batches": 3, "batch_size": 6, "inbound": 2, "optouts": 4, **counts})


def test_traffic_is_deterministic_for_a_seed() -> None:
    """The same seed and start give the same plan; another seed gives another."""
    assert plan(3) == plan(3)
    assert plan(3) != plan(4)


def test_traffic_flows_are_well_formed() -> None:
    """Batches go Processing → Completed; every outbound message ends in a final status."""
    events = plan(batches=4, batch_size=8)
    batches: dict[str, list[dict[str, Any]]] = {}
    messages: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        body = event.body
        if event.kind == "batch":
            batches.setdefault(body["id"], []).append(body)
        elif event.kind == "message" and body["direction"] == "Outbound":
            messages.setdefault(body["id"], []).append(body)
    assert len(batches) == 4
    for flow in batches.values():
        assert [b["status"] for b in flow] == ["Processing", "Completed"]
        assert flow[0]["processedCount"] == 0
        assert flow[1]["processedCount"] == flow[1]["batchSize"] == 8
        assert flow[1]["cost"] > 0
    assert len(messages) == 32
    for flow in messages.values():
        statuses = [m["messageStatus"] for m in flow]
        assert statuses[0] == "Queued"
        assert statuses[-1] in FINAL_STATUSES
        assert statuses in (["Queued", "Sent", "Delivered"], ["Queued", "Sent", "DeliveryFailed"],
                            ["Queued", "SendingFailed"])
        final = flow[-1]
        if final["messageStatus"] == "DeliveryFailed":
            assert final["errorCode"] in DELIVERY_FAILURES
        if final["messageStatus"] == "SendingFailed":
            assert final["errorCode"] in SENDING_FAILURES
        times = [m["lastModifiedTime"] for m in flow]
        assert times == sorted(times)
        assert all(t.endswith("Z") and len(t) == 27 for t in times)
        assert final["batchId"] in batches
        assert final["from"] == batches[final["batchId"]][0]["from"]
    by_batch = {b: [m[-1] for m in messages.values() if m[-1]["batchId"] == b] for b in batches}
    for batch_id, finals in by_batch.items():
        done = batches[batch_id][1]
        assert all(m["lastModifiedTime"] <= done["lastModifiedTime"] for m in finals)


def test_inbound_and_optout_events_have_the_documented_shape() -> None:
    """Inbound replies are Delivered without batchId; opt-outs alternate STOP/START per pair."""
    events = plan(batches=0, inbound=5, optouts=40)
    inbound = [e.body for e in events if e.kind == "message"]
    assert len(inbound) == 5
    for body in inbound:
        assert body["direction"] == "Inbound"
        assert body["messageStatus"] == "Delivered"
        assert "batchId" not in body
        assert isinstance(body["to"], list)
    optouts = [e.body for e in events if e.kind == "optout"]
    assert {o["active"] for o in optouts} == {True, False}
    state: dict[tuple[str, str], bool] = {}
    for o in optouts:
        pair = (o["from"], o["to"])
        assert o["active"] != state.get(pair, False)
        state[pair] = o["active"]


def test_traffic_uses_only_e164_numbers() -> None:
    """Every number in the plan is +1 and ten digits."""
    import re

    numbers: list[str] = []
    for event in plan():
        body = event.body
        numbers.append(body["from"])
        to = body.get("to")
        numbers.extend(to if isinstance(to, list) else [to] if to else [])
    assert numbers
    assert all(re.match(E164, n) for n in numbers)


def test_negative_traffic_counts_are_refused() -> None:
    """A negative count is a configuration error."""
    with pytest.raises(EmulatorConfigError):
        TrafficPlanner(0).plan(batches=-1)


def test_subscriptions_count_against_the_limit_until_deleted_even_when_orphaned() -> None:
    """A user and app hold at most max_subscriptions: a session left behind keeps counting
    (past its recovery window too, as an orphan) until its subscription is deleted by id;
    then there is room again (403 SUB-505 meanwhile)."""
    oauth, gateway, clock = core(max_subscriptions=2, recovery_timeout=10.0)
    info, _ = oauth.token(jwt_form(), None)
    session = oauth.authenticate(f"Bearer {info['access_token']}")

    def subscribe(connection_id: int) -> dict[str, Any]:
        token = oauth.issue_ws_token(session)["ws_access_token"]
        gateway.connect(connection_id, {"access_token": token})
        frame = ('[{"type":"ClientRequest","messageId":"m","method":"POST",'
                 '"path":"/restapi/v1.0/subscription/"},{"eventFilters":["' + A2P +
                 '/batches"],"deliveryMode":{"transportType":"WebSocket"}}]')
        (_, out), = gateway.receive(connection_id, frame)
        assert out.data is not None
        reply: list[Any] = json.loads(out.data)
        return {**(reply[1] if len(reply) > 1 else {}), "http": reply[0]["status"]}

    first = subscribe(1)
    gateway.disconnected(1)
    assert subscribe(2)["http"] == 200  # a fresh session: the first one still counts
    gateway.disconnected(2)
    refused = subscribe(3)
    assert (refused["http"], refused["errorCode"]) == (403, "SUB-505")
    clock.now += 11  # both sessions are past their window: orphans, still counted
    assert gateway.subscription_count() == 2
    assert first["id"] in {r["id"] for r in gateway.list_subscriptions()["records"]}
    gateway.delete_subscription(first["id"])
    with pytest.raises(ApiError):
        gateway.delete_subscription(first["id"])
    assert subscribe(4)["http"] == 200
