"""Frame decoding and encoding: every frame type; bad frames are values, not exceptions."""

from __future__ import annotations

import json

import pytest

from a2pd import protocol
from a2pd.protocol import (
    ClientResponse,
    ConnectionDetails,
    ErrorFrame,
    FrameError,
    Heartbeat,
    ServerNotification,
    UnknownFrame,
    Wsc,
)


def frame(*parts: object) -> str:
    return json.dumps(list(parts))


def test_connection_details_with_recovery() -> None:
    """ConnectionDetails exposes wsc, recovery state and timings."""
    msg = protocol.decode(frame(
        {"type": "ConnectionDetails", "messageId": "m", "status": 200,
         "wsc": {"token": "tok", "sequence": 7}},
        {"recoveryState": "Failed", "recoveryErrorCode": "WSG-1005", "recoveryTimeout": 30}))
    assert isinstance(msg, ConnectionDetails)
    assert msg.header.wsc == Wsc(token="tok", sequence=7)
    assert msg.recovery_state == "Failed"
    assert msg.recovery_error_code == "WSG-1005"
    assert msg.seconds("recoveryTimeout", 180) == 30.0
    assert msg.seconds("idleTimeout", 1800) == 1800.0


def test_client_request_reply_is_a_response() -> None:
    """The reply to a ClientRequest reuses type ClientRequest with a status (no ClientResponse)."""
    msg = protocol.decode(frame({"type": "ClientRequest", "messageId": "abc", "status": 200,
                                 "headers": {"RCRequestId": "r"}}, {"id": "sub-1"}))
    assert isinstance(msg, ClientResponse)
    assert msg.message_id == "abc"
    assert msg.ok
    assert msg.body == {"id": "sub-1"}


def test_client_error_reply_exposes_code() -> None:
    """A 4xx reply carries the REST error code."""
    msg = protocol.decode(frame({"type": "ClientRequest", "messageId": "a", "status": 400},
                                {"errors": [{"errorCode": "SUB-508", "message": "bad"}]}))
    assert isinstance(msg, ClientResponse)
    assert not msg.ok
    assert msg.error_code == "SUB-508"


def test_notification_keeps_raw_bytes() -> None:
    """A ServerNotification keeps its body and raw bytes (for dead letters)."""
    text = frame({"type": "ServerNotification", "messageId": "1", "status": 200},
                 {"uuid": "1", "event": "/x", "body": {}})
    msg = protocol.decode(text)
    assert isinstance(msg, ServerNotification)
    assert msg.body["uuid"] == "1"
    assert msg.raw == text.encode()


def test_heartbeat_and_error_frames() -> None:
    """Heartbeat and Error frames decode to their own types."""
    assert isinstance(protocol.decode(frame({"type": "Heartbeat", "messageId": "h"})), Heartbeat)
    err = protocol.decode(frame({"type": "Error", "messageId": "e", "status": 400},
                                {"errorCode": "WSG-902", "message": "Idle timeout expired"}))
    assert isinstance(err, ErrorFrame)
    assert err.error_code == "WSG-902"
    assert err.message == "Idle timeout expired"


def test_unknown_type_and_fields_are_tolerated() -> None:
    """An unknown frame type or header field is not an error."""
    msg = protocol.decode(frame({"type": "NewThing", "messageId": "x", "novel": True}))
    assert isinstance(msg, UnknownFrame)


@pytest.mark.parametrize("data", [
    "not-json", "{}", "[]", "null", "[1]", '[{"messageId": "no type"}]',
    '[{"type": "ServerNotification"}, "text body"]', "[{}, {}, {}]", b"\xff\xfe",
    '[{"type": "ConnectionDetails", "wsc": {"token": "", "sequence": "x"}}]',
    "[" * 100_000,
])
def test_malformed_frames_are_values(data: str | bytes) -> None:
    """Malformed frames (PROTOCOL.md §9.10) come back as FrameError with the raw bytes."""
    result = protocol.decode(data)
    assert isinstance(result, FrameError)
    assert result.raw == (data if isinstance(data, bytes) else data.encode())
    assert result.reason


def test_subscribe_frame_shape() -> None:
    """The subscription POST carries every filter and the WebSocket delivery mode."""
    sent = json.loads(protocol.encode_subscribe("m1", ["/a", "/b"]))
    assert sent == [
        {"type": "ClientRequest", "messageId": "m1", "method": "POST",
         "path": "/restapi/v1.0/subscription"},
        {"eventFilters": ["/a", "/b"], "deliveryMode": {"transportType": "WebSocket"}},
    ]


def test_bodyless_request_has_one_element() -> None:
    """A request without a body omits element 1 instead of sending null (WSG-808)."""
    sent = json.loads(protocol.encode_request("m", "DELETE", "/restapi/v1.0/subscription/1"))
    assert len(sent) == 1


def test_heartbeat_frame_shape() -> None:
    """A Heartbeat is a header-only frame."""
    assert json.loads(protocol.encode_heartbeat("h1")) == [{"type": "Heartbeat",
                                                            "messageId": "h1"}]


def test_newer_wsc_rules() -> None:
    """ConnectionDetails always sets wsc; other frames only with a higher sequence."""
    old = Wsc(token="a", sequence=5)
    details = protocol.decode(frame({"type": "ConnectionDetails",
                                     "wsc": {"token": "b", "sequence": 1}}, {}))
    assert isinstance(details, ConnectionDetails)
    assert protocol.newer_wsc(old, details) == Wsc(token="b", sequence=1)
    lower = protocol.decode(frame({"type": "ServerNotification", "wsc": {"token": "c",
                                                                         "sequence": 4}}, {}))
    higher = protocol.decode(frame({"type": "Heartbeat", "wsc": {"token": "d",
                                                                 "sequence": 6}}))
    assert not isinstance(lower, FrameError)
    assert not isinstance(higher, FrameError)
    assert protocol.newer_wsc(old, lower) is None
    assert protocol.newer_wsc(old, higher) == Wsc(token="d", sequence=6)
    assert protocol.newer_wsc(None, lower) == Wsc(token="c", sequence=4)


@pytest.mark.parametrize("seed", ["batch.json", "inbound.json", "outbound.json",
                                  "outbound_failed.json", "optout.json", "optin.json"])
@pytest.mark.parametrize("separators", [(",", ":"), (", ", ": ")])
def test_notification_fast_path_decodes_like_the_general_path(
        seed: str, separators: tuple[str, str]) -> None:
    """A notification validated from its JSON in one pass is the event the general path
    makes, its envelope is still there as ``body``, and its raw bytes are kept."""
    from a2pd import events
    from tests.harness import seed as load_seed

    envelope = load_seed(seed)
    text = json.dumps([{"type": "ServerNotification", "messageId": "m", "status": 200},
                       envelope], separators=separators)
    msg = protocol.decode(text)
    assert isinstance(msg, ServerNotification)
    assert msg.decoded() == events.decode_notification(envelope, b"")
    assert msg.body == envelope
    assert msg.raw == text.encode()


def test_a_header_event_key_does_not_mislead_the_fast_path() -> None:
    """An "event" key before the envelope's (here in the header) never picks the model:
    the frame is decoded by the general path, the same as without it."""
    from a2pd import events
    from tests.harness import seed as load_seed

    envelope = load_seed("outbound.json")
    text = frame({"type": "ServerNotification", "messageId": "m",
                  "event": "/restapi/v1.0/account/~/a2p-sms/batches"}, envelope)
    msg = protocol.decode(text)
    assert isinstance(msg, ServerNotification)
    assert isinstance(msg.decoded(), events.MessageEvent)
    assert msg.decoded() == events.decode_notification(envelope, b"")
