"""Properties of the pure core under hostile input (hypothesis, derandomized in conftest).

The frame decoder and the event models take anything — bytes, text, any JSON value, frames
shaped like notifications with arbitrary bodies — and answer with a value, never an
exception; whatever decodes can be stored and decodes again to the same event.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from a2pd import events, protocol
from a2pd.events import Event, EventError
from a2pd.sinks.stdout import describe
from tests.harness import seed

SEED_FILES = ["batch.json", "inbound.json", "outbound.json", "outbound_failed.json",
              "optout.json", "optin.json"]
SEEDS = [seed(name) for name in SEED_FILES]
MESSAGE_SEEDS = [s for s in SEEDS if "/a2p-sms/messages" in s["event"]]

#: any character, unpaired surrogates included
any_char = st.characters(codec=None, categories=None)
any_text = st.text(any_char, max_size=60)
json_scalars = st.none() | st.booleans() | st.integers() | \
    st.floats(allow_nan=True, allow_infinity=True) | any_text
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(any_text, inner, max_size=5),
    max_leaves=25,
)
#: values a JSON text on the wire can carry (what json.loads gives): text without unpaired
#: surrogates as such, but "\\ud800" escapes are possible, so any_text stays
e164 = st.from_regex(r"\+[1-9][0-9]{1,14}", fullmatch=True)
non_bmp_text = st.text(st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF),
                       min_size=1, max_size=20)
text_values = st.text(st.characters(codec="utf-8"), max_size=200) | non_bmp_text


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def assert_decodes_or_is_an_error(envelope: Any, raw: bytes) -> Event | EventError:
    """decode_notification answers with a value; an event is storable and round-trips."""
    result = events.decode_notification(envelope, raw)
    assert isinstance(result, Event | EventError)
    if isinstance(result, EventError):
        assert result.reason
        assert result.raw == raw
        assert "\n" not in result.reason
        return result
    assert_round_trips(result)
    return result


def assert_round_trips(event: Event) -> None:
    """decode → encode → decode gives the same event and the same bytes."""
    text = events.to_json(event)
    encoded = text.encode("utf-8")  # never raises: no unpaired surrogate reaches a record
    assert len(text.splitlines()) == 1
    again = events.from_record(json.loads(encoded))
    assert not isinstance(again, EventError), again.reason
    assert again == event
    assert events.to_json(again) == text
    assert again.kind == event.kind
    # a journal row decodes (fast path) to the same event, keeping its bytes
    row = events.from_record_json(encoded)
    assert not isinstance(row, EventError), row.reason
    assert row == event
    assert events.record_json(row) is encoded


# -- the frame decoder ------------------------------------------------------------------------


@given(st.binary(max_size=2000))
@example(b"\xed\xa0\x80")  # an encoded surrogate
@example('[{"type":"Heartbeat"}]'.encode("utf-16"))  # JSON, but not UTF-8
@example(b'\xef\xbb\xbf[{"type":"Heartbeat"}]')  # UTF-8 with a BOM
def test_any_bytes_decode_to_a_value(data: bytes) -> None:
    """Arbitrary bytes give a message or a FrameError carrying exactly those bytes."""
    result = protocol.decode(data)
    if isinstance(result, protocol.FrameError):
        assert result.raw == data
        assert result.reason
    else:
        data.decode("utf-8")  # only UTF-8 text is ever accepted


@given(st.text(any_char, max_size=2000))
def test_any_text_decodes_to_a_value(data: str) -> None:
    """Arbitrary text (unpaired surrogates included) never makes decode raise."""
    result = protocol.decode(data)
    if isinstance(result, protocol.FrameError):
        assert result.raw == data.encode("utf-8", "surrogatepass")


@given(json_values)
def test_any_json_value_decodes_to_a_value(value: Any) -> None:
    """Any JSON document is a message or a FrameError; only 1-2 element arrays are frames."""
    result = protocol.decode(json.dumps(value))
    if not isinstance(result, protocol.FrameError):
        assert isinstance(value, list)
        assert 1 <= len(value) <= 2
        assert isinstance(value[0], dict)


frame_types = st.sampled_from(["ServerNotification", "ClientRequest", "Heartbeat", "Error",
                               "ConnectionDetails"]) | any_text
headers = st.fixed_dictionaries(
    {"type": frame_types},
    optional={"messageId": any_text | st.integers(), "status": st.integers() | any_text,
              "headers": json_values, "wsc": json_values, "extra": json_values},
)


@given(headers, json_values)
def test_frames_with_arbitrary_headers_and_bodies_never_raise(header: dict[str, Any],
                                                              body: Any) -> None:
    """A frame-shaped array with any header and body decodes to a value; a notification's
    body then decodes to an event that round-trips, or to an error with a reason."""
    result = protocol.decode(dumps([header, body]))
    if isinstance(result, protocol.ServerNotification):
        assert_decodes_or_is_an_error(result.body, result.raw)


@given(st.integers(min_value=1, max_value=3000))
def test_nesting_deeper_than_the_limit_is_a_frame_error(depth: int) -> None:
    """The nesting limit is exact and independent of Python's recursion limit."""
    envelope = dict(SEEDS[0])
    frame = ('[{"type":"ServerNotification"},' + dumps(envelope)[:-1] + ',"deep":'
             + "[" * depth + "]" * depth + "}]")
    result = protocol.decode(frame)
    total = depth + 2  # the frame array and the envelope object
    if total > protocol.MAX_DEPTH:
        assert isinstance(result, protocol.FrameError)
        assert "nested deeper" in result.reason or "RecursionError" in result.reason
    else:
        assert isinstance(result, protocol.ServerNotification)
        assert isinstance(assert_decodes_or_is_an_error(result.body, result.raw), Event)


# -- the event models -------------------------------------------------------------------------


@given(json_values, st.binary(max_size=50))
def test_any_envelope_value_decodes_to_a_value(envelope: Any, raw: bytes) -> None:
    """decode_notification takes any JSON value and never raises."""
    assert_decodes_or_is_an_error(envelope, raw)


@given(st.sampled_from(SEEDS), st.dictionaries(st.sampled_from(
    ["uuid", "event", "timestamp", "subscriptionId", "ownerId", "body"]), json_values,
    max_size=3))
def test_envelopes_with_replaced_fields_never_raise(base: dict[str, Any],
                                                    changes: dict[str, Any]) -> None:
    """Any envelope field replaced by any value: an event or an error, never an exception."""
    envelope = {**base, **changes}
    assert_decodes_or_is_an_error(envelope, dumps(envelope).encode("utf-8", "surrogatepass"))


@given(st.sampled_from(SEEDS), st.data())
def test_body_fields_replaced_by_anything_never_raise(base: dict[str, Any],
                                                      data: st.DataObject) -> None:
    """Any body field replaced by any JSON value (or removed): an event or an error."""
    body = dict(base["body"])
    for key in data.draw(st.lists(st.sampled_from(sorted(body)), max_size=3)):
        if data.draw(st.booleans()):
            body.pop(key, None)
        else:
            body[key] = data.draw(json_values)
    envelope = {**base, "body": body}
    assert_decodes_or_is_an_error(envelope, b"raw")


def _known_keys(model: type[Any]) -> set[str]:
    names = set()
    for name, info in model.model_fields.items():
        names.add(info.alias or name)
        names.add(name)
    return names


ENVELOPE_KEYS = _known_keys(events.MessageEvent) | {"kind"}
BODY_KEYS = _known_keys(events.MessageBody) | _known_keys(events.BatchBody) | \
    _known_keys(events.OptOutBody)
extra_keys = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)
wire_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False,
                                                          allow_infinity=False)
    | text_values,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(extra_keys, inner, max_size=4),
    max_leaves=15,
)


@st.composite
def valid_notifications(draw: st.DrawFn) -> dict[str, Any]:
    """A seed notification with the variations PROTOCOL.md §5 says to tolerate."""
    base = json.loads(json.dumps(draw(st.sampled_from(SEEDS))))
    body = base["body"]
    for key in draw(st.lists(st.sampled_from(["cost", "creationTime", "lastModifiedTime",
                                              "segmentCount", "batchSize", "processedCount",
                                              "text", "errorCode", "batchId", "timestamp",
                                              "subscriptionId", "ownerId"]), max_size=4)):
        body.pop(key, None)
        if key in ("timestamp", "subscriptionId", "ownerId"):
            base.pop(key, None)
    extra_body = draw(st.dictionaries(extra_keys.filter(lambda k: k not in BODY_KEYS),
                                      wire_values, max_size=3))
    extra_envelope = draw(st.dictionaries(extra_keys.filter(lambda k: k not in ENVELOPE_KEYS),
                                          wire_values, max_size=3))
    body.update(extra_body)
    base.update(extra_envelope)
    if "direction" in body:  # a message
        recipients = draw(st.lists(e164, min_size=1, max_size=3))
        body["to"] = recipients[0] if draw(st.booleans()) else recipients
        body["messageStatus"] = draw(st.sampled_from(sorted(events.MESSAGE_STATUSES))
                                     | text_values)
        body["text"] = draw(text_values | st.just("x" * 200_000) | non_bmp_text)
        if draw(st.booleans()):
            body["id"] = draw(st.integers(min_value=0, max_value=2**63))
        if draw(st.booleans()) and "segmentCount" in body:
            body["segmentCount"] = str(body["segmentCount"])
        if draw(st.booleans()) and "cost" in body:
            body["cost"] = str(body["cost"])
    elif "active" in body:
        body["to"] = draw(e164)
    else:
        body["status"] = draw(st.sampled_from(sorted(events.BATCH_STATUSES)) | text_values)
        if draw(st.booleans()) and "batchSize" in body:
            body["batchSize"] = str(body["batchSize"])
    if draw(st.booleans()):
        base["uuid"] = draw(st.integers(min_value=0, max_value=2**63))
    return base


@settings(max_examples=100)
@given(valid_notifications())
def test_tolerated_variations_decode_and_round_trip(envelope: dict[str, Any]) -> None:
    """Extra fields, missing optional fields, `to` as a string or a list, numbers as strings,
    unknown statuses, very long and non-BMP text: all decode, and round-trip unchanged."""
    frame = dumps([{"type": "ServerNotification", "messageId": "m"}, envelope])
    message = protocol.decode(frame.encode("utf-8"))
    assert isinstance(message, protocol.ServerNotification)
    result = assert_decodes_or_is_an_error(message.body, message.raw)
    assert isinstance(result, Event), result.reason  # type: ignore[union-attr]
    record = events.to_record(result)
    for key in envelope:
        if key != "body":
            assert key in record, key  # unknown fields are kept
    assert isinstance(record["body"].get("to", []), list | str)
    if isinstance(result, events.MessageEvent):
        assert isinstance(record["body"]["to"], list)


@settings(max_examples=100)
@given(valid_notifications(), st.sampled_from(["\x1b[2J", "\x1b]0;owned\x07", "\nFAKE LINE",
                                               "\r", "\u2028", "\x00", "\x9b31m"]))
def test_terminal_summaries_are_one_printable_line(envelope: dict[str, Any],
                                                  hostile: str) -> None:
    """The stdout sink's text line for any event is one line without control characters,
    whatever the sender put in statuses and ids (regression: escape sequences and newlines
    reached the terminal)."""
    body = envelope["body"]
    for key in ("messageStatus", "status", "id", "batchId", "errorCode"):
        if key in body:
            body[key] = f"x{hostile}y"
    event = events.decode_notification(envelope, b"raw")
    assert isinstance(event, Event), event.reason  # type: ignore[union-attr]
    line = describe(event)
    assert line.isprintable()
    assert "\x1b" not in line


@settings(max_examples=50)
@given(valid_notifications(), st.sampled_from(["\\ud800", "\\udfff", "x\\udc00y"]))
def test_unpaired_surrogate_escapes_are_dead_lettered(envelope: dict[str, Any],
                                                      escape: str) -> None:
    """A "\\ud800" escape anywhere in a notification is an error value with a reason, not an
    event that would fail when written (regression: it stopped the daemon)."""
    envelope["zz-extra"] = "MARK"
    frame = dumps([{"type": "ServerNotification"}, envelope]).replace("MARK", escape)
    message = protocol.decode(frame.encode("utf-8"))
    assert isinstance(message, protocol.ServerNotification)
    result = events.decode_notification(message.body, message.raw)
    assert isinstance(result, EventError)
    assert "surrogate" in result.reason


@given(st.sampled_from(MESSAGE_SEEDS), st.sampled_from(
    ["messageStatus", "from", "to", "direction", "id"]))
def test_python_field_names_are_not_wire_names(base: dict[str, Any], wire: str) -> None:
    """A required field given under its Python name (message_status, from_) does not count:
    the notification is an error (regression: populate_by_name accepted it)."""
    python_name = {"messageStatus": "message_status", "from": "from_", "to": "to",
                   "direction": "direction", "id": "id"}[wire]
    assume(python_name != wire)
    body = dict(base["body"])
    body[python_name] = body.pop(wire)
    result = events.decode_notification({**base, "body": body}, b"raw")
    assert isinstance(result, EventError)
    assert wire in result.reason


def test_an_envelope_kind_field_cannot_overwrite_ours() -> None:
    """A top-level "kind" in a notification never replaces the kind a2pd derives
    (regression: the record said whatever the sender put there)."""
    envelope = {**SEEDS[2], "kind": "optout"}
    event = events.decode_notification(envelope, b"raw")
    assert isinstance(event, events.MessageEvent)
    record = events.to_record(event)
    assert record["kind"] == event.kind == "outbound"
    assert next(iter(record)) == "kind"


def test_line_separators_in_text_stay_inside_one_line() -> None:
    """U+2028, U+2029 and NEL in a field are escaped in records, so every line splitter sees
    one record per line (regression: str.splitlines broke a JSON-lines file apart)."""
    envelope = json.loads(json.dumps(SEEDS[2]))
    envelope["body"]["text"] = "a\u2028b\u2029c\x85d"
    event = events.decode_notification(envelope, b"raw")
    assert isinstance(event, Event)
    text = events.to_json(event)
    assert text.splitlines() == [text]
    assert json.loads(text)["body"]["text"] == "a\u2028b\u2029c\x85d"


@given(st.sampled_from(MESSAGE_SEEDS), st.sampled_from(["from", "to", "direction"]))
def test_error_reasons_never_echo_the_value(base: dict[str, Any], key: str) -> None:
    """An error names the field, not the value (a secret pasted into a field stays out of
    logs and dead-letter reasons)."""
    secret = "sk_live_0123456789abcdef"
    envelope = {**base, "body": {**base["body"], key: secret}}
    result = events.decode_notification(envelope, b"raw")
    assert isinstance(result, EventError)
    assert secret not in result.reason
    assert f"body.{key}" in result.reason
