"""A seeded generator of hostile WebSocket frames, each with the outcome it is built for.

Used by the end-to-end fuzz run (tests/test_fuzz.py). Every frame belongs to one class and
each class has one designed outcome:

    frame         the frame does not decode (FrameError): counted as frames_malformed and
                  dead-lettered with source "frame"
    notification  a ServerNotification whose envelope does not decode (EventError):
                  dead-lettered with source "notification"
    ignored       a well-formed frame that is not a notification (Heartbeat, unknown type,
                  an unmatched reply, an unknown gateway error): neither delivered nor
                  dead-lettered
    valid         an A2P event body the emulator publishes as a real notification (extra
                  fields, missing optional fields, ``to`` as a string, numbers as strings,
                  unknown statuses, long text, non-BMP characters): delivered exactly once

Hostile frames never imitate what the session acts on (ConnectionDetails, ``wsc`` headers,
gateway errors that end the session, replies to our own requests): those are protocol,
not input, and have their own tests.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from tests.harness import seed

Outcome = Literal["frame", "notification", "ignored", "valid"]

ACCOUNT = "400123456789"
EVENT_PATHS = {
    "batch": f"/restapi/v1.0/account/{ACCOUNT}/a2p-sms/batches",
    "message": f"/restapi/v1.0/account/{ACCOUNT}/a2p-sms/messages?direction=Outbound",
    "optout": f"/restapi/v1.0/account/{ACCOUNT}/a2p-sms/opt-outs",
}
SEEDS: dict[str, list[dict[str, Any]]] = {
    "batch": [seed("batch.json")["body"]],
    "message": [seed(n)["body"] for n in ("outbound.json", "outbound_failed.json",
                                          "inbound.json")],
    "optout": [seed("optout.json")["body"], seed("optin.json")["body"]],
}
NON_BMP = "😀𝄞𠜎🂡"
ALPHABET = string.printable + "äöü€" + NON_BMP + "\u0000\u2028\u2029\x85\ufeff"
#: the seed bodies as JSON text: loading one is a cheaper deep copy
_SEED_TEXTS = {kind: [json.dumps(body) for body in bodies] for kind, bodies in SEEDS.items()}


def dumps(value: Any) -> str:
    """Compact JSON, as frames go on the wire (non-ASCII kept)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@dataclass
class Item:
    """One thing to put on the socket: a raw frame, or an event for the emulator to publish."""

    outcome: Outcome
    label: str
    frame: str | bytes | None = None
    kind: str | None = None
    body: dict[str, Any] | None = None

    @property
    def raw(self) -> bytes:
        assert self.frame is not None
        return self.frame if isinstance(self.frame, bytes) else self.frame.encode("utf-8")


@dataclass
class Generator:
    """Seeded, so a run is reproducible; ``valid_every``: one valid event per N items."""

    seed: int = 0
    valid_every: int = 5
    rng: random.Random = field(init=False)
    counter: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    # -- helpers ----------------------------------------------------------------------------

    def _text(self, low: int = 0, high: int = 40) -> str:
        return "".join(self.rng.choices(ALPHABET, k=self.rng.randint(low, high)))

    def _seed_body(self, kind: str) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.rng.choice(_SEED_TEXTS[kind]))
        return body

    def _uuid(self) -> str:
        self.counter += 1
        return f"fuzz-{self.seed}-{self.counter}"

    def _header(self) -> dict[str, Any]:
        return {"type": "ServerNotification", "messageId": self._uuid(), "status": 200,
                "headers": {"RCRequestId": self._uuid()}}

    def _envelope(self, kind: str) -> dict[str, Any]:
        return {"uuid": self._uuid(), "event": EVENT_PATHS[kind],
                "timestamp": "2026-01-10T08:00:00.000Z", "subscriptionId": "fuzz-sub",
                "ownerId": ACCOUNT, "body": self._seed_body(kind)}

    def _notification(self, kind: str | None = None) -> str:
        kind = kind or self.rng.choice(list(EVENT_PATHS))
        return dumps([self._header(), self._envelope(kind)])

    # -- the classes --------------------------------------------------------------------------

    def _frame_errors(self) -> list[tuple[str, Callable[[], str | bytes]]]:
        rng = self.rng

        def random_bytes() -> bytes:
            return rng.randbytes(rng.randint(1, 300)) + b"\xff"  # never valid UTF-8

        def garbage() -> str:
            return "x" + self._text(0, 200)  # starts with x: never JSON

        def truncated() -> str:
            text = self._notification()
            return text[: rng.randint(1, len(text) - 1)]

        def not_an_array() -> str:
            return rng.choice(['{"type":"ServerNotification"}', "42", '"frame"', "null",
                               "true", "[]", "[{},{},{}]", dumps([{}, {}, {}, {}])])

        def bad_header() -> str:
            return rng.choice([
                dumps(["header", {}]), dumps([[], {}]), dumps([None]),
                dumps([{"messageId": "no type"}]), dumps([{"type": 7}]),
                dumps([{"type": "ServerNotification", "status": "two hundred"}, {}]),
                dumps([{"type": "Heartbeat", "wsc": {"token": "", "sequence": "x"}}]),
            ])

        def body_not_object() -> str:
            return dumps([self._header(), rng.choice(["text", 1, None, [1, 2], True])])

        def notification_without_body() -> str:
            return dumps([self._header()])

        def too_deep() -> str:
            depth = rng.choice([64, 100, 250, 990, 5000, 50_000])
            return ('[{"type":"ServerNotification"},{"body":' + "[" * depth + "]" * depth
                    + "}]")

        def bom() -> str:
            return "\ufeff" + self._notification()

        def huge_number() -> str:
            return '[{"type":"Heartbeat","n":' + "9" * rng.randint(5000, 8000) + "}]"

        def nul_and_controls() -> str:
            text = self._notification()
            cut = rng.randint(1, len(text) - 1)
            return text[:cut] + rng.choice(["\u0000", "\u0001", "\n\u0000"]) + text[cut:]

        def invalid_utf8_inside() -> bytes:
            raw = self._notification().encode()
            cut = rng.randint(1, len(raw) - 1)
            return raw[:cut] + rng.choice([b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80"]) \
                + raw[cut:]

        return [
            ("random_bytes", random_bytes), ("garbage", garbage), ("truncated", truncated),
            ("not_an_array", not_an_array), ("bad_header", bad_header),
            ("body_not_object", body_not_object),
            ("notification_without_body", notification_without_body),
            ("too_deep", too_deep), ("bom", bom), ("huge_number", huge_number),
            ("nul_and_controls", nul_and_controls), ("invalid_utf8", invalid_utf8_inside),
        ]

    def _notification_errors(self) -> list[tuple[str, Callable[[], str]]]:
        rng = self.rng

        def mutate(change: Callable[[dict[str, Any]], None], kind: str | None = None) -> str:
            envelope = self._envelope(kind or rng.choice(list(EVENT_PATHS)))
            change(envelope)
            return dumps([self._header(), envelope])

        def bad_phone() -> str:
            return mutate(lambda e: e["body"].update({"from": rng.choice(
                ["not-a-number", "+0123", "1" * 30, "", "+1 650 555", NON_BMP, None, 5])}),
                "message")

        def bad_to() -> str:
            return mutate(lambda e: e["body"].update({"to": rng.choice(
                [["x"], [1], {"a": 1}, None, ["+16505550100", "nope"]])}), "message")

        def bad_direction() -> str:
            return mutate(lambda e: e["body"].update(
                {"direction": rng.choice(["inbound", "", None, 1, "Sideways"])}), "message")

        def missing_required() -> str:
            kind = rng.choice(list(EVENT_PATHS))
            required = {"batch": ["id", "status"], "message": ["id", "from", "to", "direction",
                                                                "messageStatus"],
                        "optout": ["from", "to", "active"]}[kind]
            return mutate(lambda e: e["body"].pop(rng.choice(required)), kind)

        def wrong_types() -> str:
            return mutate(lambda e: e["body"].update({"batchSize": rng.choice(
                ["many", [], {}, 1.5, "1.5"])}), "batch")

        def bad_time() -> str:
            return mutate(lambda e: e.update({"timestamp": rng.choice(
                ["yesterday", "2026-13-45T99:00:00Z", "T", 17, "2026-01-10"])}))

        def bad_uuid() -> str:
            return mutate(lambda e: e.update({"uuid": rng.choice(["", None, True, [], {}])}))

        def no_event() -> str:
            return mutate(lambda e: e.update({"event": rng.choice([None, 1, [], {}])}))

        def body_not_object() -> str:
            return mutate(lambda e: e.update({"body": rng.choice(["text", 1, None, [], True])}))

        def unpaired_surrogate() -> str:
            # valid JSON, valid UTF-8 on the wire, but "\\ud800" decodes to a lone surrogate
            text = mutate(lambda e: e["body"].update({"text": "SURROGATE"}), "message")
            return text.replace("SURROGATE", rng.choice(["\\ud800", "a\\udfffb", "\\udc00x"]))

        def deep_but_allowed_frame() -> str:
            # within the frame limit (64) but in a typed field: the model refuses it
            nested: Any = 1
            for _ in range(40):
                nested = [nested]
            return mutate(lambda e: e["body"].update({"to": nested}), "message")

        return [
            ("bad_phone", bad_phone), ("bad_to", bad_to), ("bad_direction", bad_direction),
            ("missing_required", missing_required), ("wrong_types", wrong_types),
            ("bad_time", bad_time), ("bad_uuid", bad_uuid), ("no_event", no_event),
            ("envelope_body_not_object", body_not_object),
            ("unpaired_surrogate", unpaired_surrogate),
            ("deep_typed_field", deep_but_allowed_frame),
        ]

    def _ignored(self) -> list[tuple[str, Callable[[], str]]]:
        rng = self.rng
        return [
            ("heartbeat", lambda: dumps([{"type": "Heartbeat", "messageId": self._uuid()}])),
            ("unknown_type", lambda: dumps([{"type": self._text(1, 20) + "X",
                                             "extra": self._text()}, {"any": "thing"}])),
            ("unmatched_reply", lambda: dumps([{"type": "ClientRequest",
                                                "messageId": self._uuid(),
                                                "status": rng.choice([200, 400, 500])},
                                               {"whatever": [1, 2, 3]}])),
            ("unknown_error", lambda: dumps([{"type": "Error", "messageId": self._uuid()},
                                             {"errorCode": "FUZZ-1", "message": self._text()}])),
        ]

    def _valid(self) -> tuple[str, str, dict[str, Any]]:
        """A tolerated variation of a seed body, published by the emulator."""
        rng = self.rng
        kind = rng.choice(list(EVENT_PATHS))
        body = self._seed_body(kind)
        label = rng.choice(["plain", "extra_fields", "missing_optional", "to_string",
                            "numbers_as_strings", "unknown_status", "long_text", "non_bmp"])
        if label == "extra_fields":
            body[f"x-{self._text(1, 8)}"] = {"nested": [self._text(), 1, None, 2.5]}
        elif label == "missing_optional":
            for key in ("cost", "creationTime", "lastModifiedTime", "segmentCount",
                        "batchSize", "processedCount", "text"):
                body.pop(key, None)
        elif label == "to_string" and kind == "message":
            body["to"] = body["to"][0]
        elif label == "numbers_as_strings":
            for key in ("segmentCount", "batchSize", "processedCount"):
                if key in body:
                    body[key] = str(body[key])
            if "cost" in body:
                body["cost"] = str(body["cost"])
            if "id" in body:
                body["id"] = rng.randint(1, 2**62)  # ids may be numbers
        elif label == "unknown_status":
            body["status" if kind == "batch" else "messageStatus"] = "Fuzz" + self._text(1, 9)
            if kind == "optout":
                body["status"] = "Whatever"
        elif label == "long_text" and kind == "message":
            body["text"] = self._text(0, 30) * rng.randint(50, 400)
        elif label == "non_bmp":
            body["text"] = NON_BMP * rng.randint(1, 50) + self._text()
        return label, kind, body

    # -- the stream ------------------------------------------------------------------------------

    def items(self, count: int) -> list[Item]:
        """``count`` items; one in ``valid_every`` is valid, the rest hostile."""
        frame_errors = self._frame_errors()
        notification_errors = self._notification_errors()
        ignored = self._ignored()
        out: list[Item] = []
        for _ in range(count):
            roll = self.rng.random()
            if self.rng.randrange(self.valid_every) == 0:
                label, kind, body = self._valid()
                out.append(Item("valid", label, kind=kind, body=body))
            elif roll < 0.55:
                label, make = self.rng.choice(frame_errors)
                out.append(Item("frame", label, frame=make()))
            elif roll < 0.95:
                label, make_n = self.rng.choice(notification_errors)
                out.append(Item("notification", label, frame=make_n()))
            else:
                label, make_i = self.rng.choice(ignored)
                out.append(Item("ignored", label, frame=make_i()))
        return out
