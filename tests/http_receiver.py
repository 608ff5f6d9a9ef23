"""A real HTTP/1.1 webhook receiver on loopback (anyio sockets + h11) that can be told to fail.

Each request takes the next scripted answer (or the ``rule`` for its body, or 200):

    Answer(status, headers, body)   answer with that status
    DROP                            close the connection without answering
    Stall(seconds)                  answer nothing for that long, then close (a timeout)
    Slow(seconds)                   wait, then answer 200

A request counts as *accepted* only when it was answered 2xx: that is what a real receiver
has processed. Every request (accepted or not) is kept with its arrival time.
"""

from __future__ import annotations

import gzip
import json
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import h11
from anyio.abc import SocketStream
from anyio.streams.tls import TLSListener

from a2pd.observe import Counters


@dataclass(frozen=True)
class Answer:
    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


@dataclass(frozen=True)
class Stall:
    seconds: float


@dataclass(frozen=True)
class Slow:
    seconds: float


DROP = "drop"
Script = Answer | Stall | Slow | str


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes  # decompressed when the request was gzip-encoded
    raw_body: bytes
    at: float
    answer: int | str = 0
    tls_client_cert: bool = False

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Start with ``async with receiver.running():``; then ``receiver.url`` is set."""

    ssl_context: ssl.SSLContext | None = None
    script: deque[Script] = field(default_factory=deque)
    #: decides the answer from the request when the script is empty (None: 200)
    rule: Callable[[Request], Script | None] | None = None
    requests: list[Request] = field(default_factory=list)
    accepted: list[Request] = field(default_factory=list)
    counters: Counters = field(default_factory=Counters)
    url: str = ""
    port: int = 0

    @asynccontextmanager
    async def running(self, path: str = "/hook") -> AsyncIterator[Receiver]:
        listener: Any = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610
        scheme = "http"
        if self.ssl_context is not None:
            listener = TLSListener(listener, self.ssl_context, standard_compatible=False)
            scheme = "https"
        self.url = f"{scheme}://{'localhost' if self.ssl_context else '127.0.0.1'}:" \
                   f"{self.port}{path}"
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(listener.serve, self._connection)
                try:
                    yield self
                finally:
                    tg.cancel_scope.cancel()
        finally:
            await listener.aclose()

    def bodies(self) -> list[Any]:
        """The JSON bodies of the accepted requests, in arrival order."""
        return [r.json() for r in self.accepted]

    async def _connection(self, stream: SocketStream) -> None:
        self.counters.inc("connections")
        conn = h11.Connection(h11.SERVER)
        tls = anyio.streams.tls.TLSAttribute
        peer_cert = bool(stream.extra(tls.peer_certificate, None))  # noqa: S610
        async with stream:
            while True:
                request = await self._read_request(conn, stream)
                if request is None:
                    return
                request.tls_client_cert = peer_cert
                keep_going = await self._answer(conn, stream, request)
                if not keep_going or conn.our_state is not h11.DONE:
                    return
                try:
                    conn.start_next_cycle()
                except h11.LocalProtocolError:
                    return

    async def _read_request(self, conn: h11.Connection, stream: SocketStream) -> Request | None:
        head: h11.Request | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return None
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                headers = {k.decode().lower(): v.decode() for k, v in head.headers}
                plain = gzip.decompress(body) if headers.get("content-encoding") == "gzip" \
                    else body
                return Request(head.method.decode(), head.target.decode(), headers, plain,
                               body, anyio.current_time())
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def _answer(self, conn: h11.Connection, stream: SocketStream, request: Request) -> bool:
        self.requests.append(request)
        self.counters.inc("requests")
        what: Script | None = self.script.popleft() if self.script else None
        if what is None and self.rule is not None:
            what = self.rule(request)
        if what is None:
            what = Answer(200)
        if what == DROP:
            request.answer = DROP
            self.counters.inc("dropped")
            return False
        if isinstance(what, Stall):
            request.answer = "stall"
            self.counters.inc("stalled")
            await anyio.sleep(what.seconds)
            return False
        if isinstance(what, Slow):
            await anyio.sleep(what.seconds)
            what = Answer(200)
        assert isinstance(what, Answer)
        request.answer = what.status
        if 200 <= what.status < 300:
            self.accepted.append(request)
            self.counters.inc("accepted")
        headers = [("content-length", str(len(what.body))), *what.headers]
        try:
            await stream.send(conn.send(h11.Response(status_code=what.status, headers=headers)))
            if what.body:
                await stream.send(conn.send(h11.Data(data=what.body)))
            await stream.send(conn.send(h11.EndOfMessage()))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return False
        return True
