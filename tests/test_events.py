"""Event models: every seed example decodes exactly; tolerant where the docs are loose."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from a2pd import events
from a2pd.events import BatchEvent, EventError, MessageEvent, OptOutEvent, OtherEvent

DATA = Path(__file__).parent / "data"


def load(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def decode(envelope: dict) -> events.Event:
    result = events.decode_notification(envelope, json.dumps(envelope).encode())
    assert not isinstance(result, EventError), result
    return result


def test_seed_inbound_decodes_exactly() -> None:
    """The docs' inbound message example decodes into a MessageEvent with every field."""
    event = decode(load("inbound.json"))
    assert isinstance(event, MessageEvent)
    assert event.kind == "inbound"
    assert event.uuid == "5496200236759723935"
    assert event.subscription_id == "bce65879-8436-4b2b-a7ce-6ff15ed0ba20"
    assert event.owner_id == "405156321033"
    assert event.timestamp == "2021-05-26T04:16:43.533Z"
    assert event.time == datetime(2021, 5, 26, 4, 16, 43, 533000, tzinfo=UTC)
    body = event.body
    assert body.from_ == "+19287680662"
    assert body.to == ["+12406680432"]
    assert body.id == "7119"
    assert body.message_status == "Delivered"
    assert body.direction == "Inbound"
    assert body.text == "Thank you for the message"
    assert body.segment_count == 1
    assert body.cost == 0.007
    assert body.batch_id is None
    assert body.creation_time == "2021-05-26T04:16:42.985974Z"
    assert events.parse_time(body.creation_time) == datetime(2021, 5, 26, 4, 16, 42, 985974,
                                                             tzinfo=UTC)


def test_seed_outbound_decodes_exactly() -> None:
    """The docs' outbound message example decodes with kind 'outbound'."""
    event = decode(load("outbound.json"))
    assert isinstance(event, MessageEvent)
    assert event.kind == "outbound"
    assert event.body.from_ == "+13102375087"
    assert event.body.to == ["+14842910071"]
    assert event.body.last_modified_time == "2021-05-26T04:16:08.107007Z"


def test_seed_failed_outbound_keeps_error_code_and_batch() -> None:
    """A DeliveryFailed status carries its errorCode and batchId."""
    event = decode(load("outbound_failed.json"))
    assert isinstance(event, MessageEvent)
    assert event.body.message_status == "DeliveryFailed"
    assert event.body.error_code == "SMS-CAR-411"
    assert event.body.batch_id == "a1b2c3d4-0000-4000-8000-0000000000b1"


def test_seed_batch_decodes_exactly() -> None:
    """A batch event decodes with size, progress, status and cost."""
    event = decode(load("batch.json"))
    assert isinstance(event, BatchEvent)
    assert event.kind == "batch"
    body = event.body
    assert (body.id, body.from_, body.batch_size, body.processed_count, body.status, body.cost) \
        == ("a1b2c3d4-0000-4000-8000-0000000000b1", "+16505550111", 3, 3, "Completed", 0.021)


@pytest.mark.parametrize(("name", "kind", "active"), [("optout.json", "optout", True),
                                                      ("optin.json", "optin", False)])
def test_seed_opt_events(name: str, kind: str, active: bool) -> None:
    """STOP gives kind 'optout' (active true), START gives 'optin' (active false)."""
    event = decode(load(name))
    assert isinstance(event, OptOutEvent)
    assert event.kind == kind
    assert event.body.active is active
    assert (event.body.from_, event.body.to) == ("+16505550100", "+12125550100")


def test_to_as_string_becomes_a_list() -> None:
    """`to` given as a string (the docs table) is accepted and normalised to a list."""
    doc = load("inbound.json")
    doc["body"]["to"] = "+12406680432"
    event = decode(doc)
    assert isinstance(event, MessageEvent)
    assert event.body.to == ["+12406680432"]


def test_unknown_status_and_fields_are_kept() -> None:
    """Unknown statuses and extra fields pass through to the record unchanged."""
    doc = load("outbound.json")
    doc["body"]["messageStatus"] = "Undeliverable"
    doc["body"]["carrier"] = {"name": "x"}
    doc["extraEnvelope"] = 1
    event = decode(doc)
    record = events.to_record(event)
    assert record["body"]["messageStatus"] == "Undeliverable"
    assert record["body"]["carrier"] == {"name": "x"}
    assert record["extraEnvelope"] == 1


def test_numeric_ids_are_strings() -> None:
    """A message id sent as a number (the REST schema's int64) becomes a string."""
    doc = load("outbound.json")
    doc["body"]["id"] = 7086
    event = decode(doc)
    assert isinstance(event, MessageEvent)
    assert event.body.id == "7086"


def test_bad_phone_number_is_an_error_value() -> None:
    """A non-E.164 number is an EventError naming the field, not an exception."""
    doc = load("outbound.json")
    doc["body"]["from"] = "3102375087"
    result = events.decode_notification(doc, b"raw")
    assert isinstance(result, EventError)
    assert "body.from" in result.reason
    assert result.uuid == "3396141852418552739"
    assert result.raw == b"raw"


def test_missing_uuid_is_an_error_value() -> None:
    """An envelope without a uuid cannot be deduplicated, so it is an error value."""
    doc = load("optout.json")
    del doc["uuid"]
    assert isinstance(events.decode_notification(doc, b""), EventError)


@pytest.mark.parametrize("value", [None, [], "x", 3])
def test_non_object_envelope_is_an_error_value(value: object) -> None:
    """Anything but a JSON object is reported, never raised."""
    assert isinstance(events.decode_notification(value, b""), EventError)


def test_other_event_filters_are_kept_generic() -> None:
    """A notification from a non-A2P filter becomes an OtherEvent with its body intact."""
    doc = {"uuid": "1", "event": "/restapi/v1.0/account/1/extension/1/presence",
           "timestamp": "2026-01-01T00:00:00Z", "body": {"presenceStatus": "Available"}}
    event = decode(doc)
    assert isinstance(event, OtherEvent)
    assert event.kind == "other"
    assert events.to_record(event)["body"] == {"presenceStatus": "Available"}


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.json")))
def test_record_round_trip(name: str) -> None:
    """decode → record → decode gives an equal model for every seed example."""
    event = decode(load(name))
    again = events.from_record(json.loads(events.to_json(event)))
    assert again == event


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.json")))
def test_record_is_the_notification_as_sent(name: str) -> None:
    """The record is the notification as RingCentral sent it, plus `kind`."""
    doc = load(name)
    record = events.to_record(decode(doc))
    assert {k: v for k, v in record.items() if k != "kind"} == doc


def test_bad_time_is_an_error_value() -> None:
    """A timestamp that is not ISO 8601 is reported with its field."""
    doc = load("batch.json")
    doc["body"]["lastModifiedTime"] = "yesterday"
    result = events.decode_notification(doc, b"")
    assert isinstance(result, EventError)
    assert "body.lastModifiedTime" in result.reason


def test_every_time_the_pattern_accepts_is_read_or_named_unreal() -> None:
    """A lower-case "z" and a leap second pass the time pattern, so they are read (they
    were None, and a sink ordering states by time then fell back to another time); a day
    that does not exist stays None."""
    upper = events.parse_time("2026-03-01T10:00:01.250Z")
    assert upper is not None
    assert events.parse_time("2026-03-01T10:00:01.250z") == upper
    assert events.parse_time("2026-12-31T23:59:60Z") == \
        datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert events.parse_time("2026-12-31T23:59:60.5+01:00") == \
        datetime(2026, 12, 31, 22, 59, 59, 999999, tzinfo=UTC)
    for unreal in ("2026-02-30T10:00:00Z", "2026-02-30T10:00:00z", "2026-02-30T10:00:60Z"):
        assert events.parse_time(unreal) is None, unreal
    for text in ("2026-03-01T10:00:01z", "2026-12-31T23:59:60Z"):
        assert re.match(events.ISO_TIME_PATTERN, text)


def test_record_uses_wire_names() -> None:
    """The record a sink writes uses RingCentral's field names plus `kind`."""
    record = events.to_record(decode(load("outbound_failed.json")))
    assert record["kind"] == "outbound"
    assert set(record) == {"kind", "uuid", "event", "timestamp", "subscriptionId", "ownerId",
                           "body"}
    assert record["body"]["from"] == "+16505550111"
    assert record["body"]["errorCode"] == "SMS-CAR-411"


def test_record_json_is_encoded_once_and_matches_the_record() -> None:
    """record_json is the JSON of to_record with ``kind`` first, computed once per event;
    an event with its record cached still equals one without."""
    event = decode(load("outbound.json"))
    first = events.record_json(event)
    assert first.startswith(b'{"kind":"outbound",')
    assert json.loads(first) == events.to_record(event)
    assert events.record_json(event) is first
    assert event == decode(load("outbound.json"))


def test_an_event_from_a_journal_row_writes_the_row_bytes() -> None:
    """from_record_json decodes a stored record and keeps its exact bytes for the sinks."""
    event = decode(load("batch.json"))
    data = events.record_json(event)
    again = events.from_record_json(data)
    assert again == event
    assert events.record_json(again) is data
    assert isinstance(events.from_record_json(b"[1]"), EventError)
    assert isinstance(events.from_record_json(b"{"), EventError)


def test_lifecycle_says_which_objects_may_still_change() -> None:
    """Outbound messages stay open until Delivered or failed, batches until Completed;
    inbound messages and opt-outs are never open; creationTime names the creation."""
    outbound = decode(load("outbound.json"))
    assert isinstance(outbound, events.MessageEvent)
    for status, is_open in (("Queued", True), ("Sent", True), ("Delivered", False),
                            ("DeliveryFailed", False), ("SendingFailed", False),
                            ("SomethingNew", True)):
        body = outbound.body.model_copy(update={"message_status": status})
        state = events.lifecycle(outbound.model_copy(update={"body": body}), 5.0)
        assert state is not None
        assert (state.object, state.batch, state.open) == (
            f"message:{body.id}", body.batch_id, is_open)
        created = events.parse_time(body.creation_time)
        assert created is not None
        assert state.created == (created.timestamp() if is_open else 5.0)
    undated = outbound.body.model_copy(update={"message_status": "Queued",
                                               "creation_time": None})
    state = events.lifecycle(outbound.model_copy(update={"body": undated}), 5.0)
    assert state is not None
    assert state.created == 5.0
    inbound = decode(load("inbound.json"))
    assert isinstance(inbound, MessageEvent)
    assert events.lifecycle(inbound, 5.0) == (f"message:{inbound.body.id}", None, 5.0, False)
    batch = decode(load("batch.json"))
    assert isinstance(batch, BatchEvent)
    processing = batch.model_copy(update={"body": batch.body.model_copy(
        update={"status": "Processing"})})
    state = events.lifecycle(processing, 5.0)
    assert state is not None
    assert (state.object, state.batch, state.open) == (
        f"batch:{batch.body.id}", batch.body.id, True)
    optout = decode(load("optout.json"))
    assert events.lifecycle(optout, 5.0) is None


def test_pair_time_orders_opt_out_states() -> None:
    """An opt-out's pair and time: the list record's lastModifiedTime when rebuilt, else the
    notification's timestamp; None for other events."""
    optout = decode(load("optout.json"))
    assert isinstance(optout, OptOutEvent)
    pair, when = events.pair_time(optout) or ("", 0.0)
    assert pair == f"{optout.body.from_}:{optout.body.to}"
    assert when == events.parse_time(optout.timestamp).timestamp()  # type: ignore[union-attr]
    rebuilt = decode({**load("optout.json"), "backfilled": True,
                      "body": {**load("optout.json")["body"],
                               "lastModifiedTime": "2026-01-10T08:00:00Z"}})
    assert events.pair_time(rebuilt) == (pair, datetime(2026, 1, 10, 8, tzinfo=UTC).timestamp())
    assert events.pair_time(decode(load("outbound.json"))) is None
