"""A receiver for a2pd's HTTP sink that verifies Standard Webhooks signatures (stdlib only).

    A2PD_WEBHOOK_SECRET=whsec_... python examples/verify_webhook.py 8080

Each request carries ``webhook-id`` (the notification uuid: deduplicate on it, a retry repeats
it), ``webhook-timestamp`` and ``webhook-signature`` (``v1,<base64>``, one per signing key).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import sys
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, HTTPServer

TOLERANCE = 5 * 60  # seconds a timestamp may be off: refuses replays of old requests


def verify(secret: str, headers: Mapping[str, str], body: bytes, now: float | None = None) -> bool:
    """True when ``body`` was signed with ``secret`` and the timestamp is recent."""
    headers = {k.lower(): v for k, v in headers.items()}
    msg_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    signatures = headers.get("webhook-signature", "")
    if not (msg_id and timestamp.isdigit() and signatures):
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > TOLERANCE:
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        version == "v1" and hmac.compare_digest(signature, expected)
        for version, _, signature in (s.partition(",") for s in signatures.split())
    )


class Handler(BaseHTTPRequestHandler):
    seen: set[str] = set()  # a real receiver keeps these in its database

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if not verify(os.environ["A2PD_WEBHOOK_SECRET"], dict(self.headers), body):
            self.send_response(401)
            self.end_headers()
            return
        msg_id = self.headers["webhook-id"]
        if msg_id not in self.seen:  # a retry of something already processed: just ack
            self.seen.add(msg_id)
            event = json.loads(body)
            print(event["kind"], event.get("uuid"), flush=True)
        self.send_response(204)
        self.end_headers()


if __name__ == "__main__":
    HTTPServer(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 8080),
               Handler).serve_forever()
