"""The emulator's I/O edge: Starlette routes + uvicorn on a socket bound up front.

``Emulator`` ties the pure parts together (``oauth.OAuthServer``, ``gateway.Gateway``,
``traffic.Traffic``) and owns every socket: HTTP endpoints for OAuth and the control API,
and the ``/ws`` endpoint, where each connection has one reader (frames in, timeouts) and
one writer (an ordered queue of frames out). ``running()`` binds the listening socket before
it returns, so clients can connect at once; waits are event-driven (no polling).

This module is the only one that imports Starlette or uvicorn; it never imports from the
rest of ``a2pd``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from a2pd.emulator.config import WS_PERMISSION, EmulatorConfig
from a2pd.emulator.errors import (
    ApiError,
    EmulatorConfigError,
    EmulatorError,
    EmulatorTimeout,
    NotRunning,
)
from a2pd.emulator.faults import Faults, HttpFault
from a2pd.emulator.filters import split_query
from a2pd.emulator.gateway import (
    ConnectionInfo,
    Gateway,
    GeneratedRecord,
    Outgoing,
    Sends,
    SentRecord,
)
from a2pd.emulator.oauth import OAuthServer
from a2pd.emulator.rest import A2pStore, RateLimit
from a2pd.emulator.rest import routes as a2p_routes
from a2pd.emulator.traffic import Traffic

#: how long ``drop_connections`` waits for close frames to be written
DROP_WAIT = 5.0
CONTROL_PREFIX = "/_emulator/"


@dataclass
class _Live:
    """The I/O side of one WebSocket connection."""

    id: int
    websocket: WebSocket
    client: tuple[str, int] | None
    queue: asyncio.Queue[Outgoing] = field(default_factory=asyncio.Queue)
    writer_done: asyncio.Event = field(default_factory=asyncio.Event)
    aborted: bool = False


class _RequestRecorder:
    """ASGI middleware: remember ``(method, path, status)`` of every platform HTTP call."""

    def __init__(self, app: ASGIApp, requests: list[tuple[str, str, int]]) -> None:
        self.app = app
        self.requests = requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or str(scope["path"]).startswith(CONTROL_PREFIX):
            await self.app(scope, receive, send)
            return
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.requests.append((str(scope["method"]), str(scope["path"]), status))


class Emulator:
    """A RingCentral platform emulator: OAuth, WS tokens, the WebSocket Gateway, A2P events."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config if config is not None else EmulatorConfig()
        rng = random.Random(self.config.seed)

        def new_id() -> str:
            return self.gateway.new_id()

        self.oauth = OAuthServer(self.config, time.monotonic, new_id)
        self.gateway = Gateway(self.config, self.oauth, time.monotonic, time.time, rng)
        self.traffic = Traffic(self, seed=self.config.seed)
        #: the A2P REST list endpoints' data: the current state of what was published
        self.a2p = A2pStore(self.config.account_id, time.time, RateLimit(
            self.config.a2p_rate_limit, self.config.a2p_rate_window,
            self.config.a2p_rate_penalty, time.monotonic), self.config.a2p_page_limit)
        #: every notification frame written to a socket, in order (replays included)
        self.sent: list[SentRecord] = []
        #: ``(method, path, status)`` of every platform HTTP call (control API excluded)
        self.requests: list[tuple[str, str, int]] = []
        self._lives: dict[int, _Live] = {}
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._server: uvicorn.Server | None = None
        self._port: int | None = None
        self._background: set[asyncio.Task[Any]] = set()
        #: injected faults (daemon/a2pd/emulator/faults.py)
        self.faults = Faults()
        self._unstalled = asyncio.Event()
        self._unstalled.set()
        self.app: ASGIApp = _RequestRecorder(self._starlette(), self.requests)

    # -- lifecycle -----------------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Emulator]:
        """Serve until the block ends; the socket is bound and accepting on entry."""
        if self._server is not None:
            raise EmulatorError("this emulator is already running")
        sock = _bind(self.config.host, self.config.port)
        server = uvicorn.Server(uvicorn.Config(
            self.app, ws="websockets-sansio", http="h11", lifespan="off", log_config=None,
            log_level="warning", access_log=False, server_header=False,
            ws_ping_interval=self.config.ping_interval, ws_ping_timeout=self.config.pong_timeout,
            timeout_graceful_shutdown=5))
        server.config.load()
        server.lifespan = server.config.lifespan_class(server.config)
        try:
            # we run startup/shutdown ourselves (not serve()): no signal capture, no polling
            await server.startup(sockets=[sock])
        except BaseException:
            sock.close()
            raise
        self._server = server
        self._port = int(sock.getsockname()[1])
        try:
            yield self
        finally:
            await self.traffic.aclose()
            for task in list(self._background):
                task.cancel()
            if self._background:
                await asyncio.wait(self._background)
            await server.shutdown(sockets=[sock])
            self._server = None
            for _, future in self._waiters:
                if not future.done():
                    future.set_exception(NotRunning("the emulator stopped"))
            self._waiters.clear()

    @property
    def port(self) -> int:
        """The TCP port the emulator listens on."""
        if self._port is None or self._server is None:
            raise NotRunning("the emulator is not running")
        return self._port

    @property
    def base_url(self) -> str:
        """The RingCentral "server" URL, e.g. ``http://127.0.0.1:8765``."""
        return f"http://{_url_host(self.config.host)}:{self.port}"

    @property
    def ws_url(self) -> str:
        """The gateway URL handed out by ``/restapi/oauth/wstoken``."""
        return f"ws://{_url_host(self.config.host)}:{self.port}/ws"

    # -- views ---------------------------------------------------------------------------

    @property
    def generated(self) -> list[GeneratedRecord]:
        """Every notification generated (once each), delivered or not."""
        return self.gateway.generated

    @property
    def connections(self) -> list[ConnectionInfo]:
        """Snapshots of every WebSocket connection so far, live and past."""
        return self.gateway.connection_infos()

    def issued_secrets(self) -> list[str]:
        """Every access, refresh and WS token issued (tests check none reaches a log)."""
        return self.oauth.issued_secrets()

    # -- driving -------------------------------------------------------------------------

    async def publish(self, kind: str, body: dict[str, Any]) -> int:
        """Publish an A2P event (``batch``/``message``/``optout``); notifications generated."""
        count, sends = self.gateway.publish(kind, body)
        self.a2p.record(kind, body)
        self._dispatch(sends)
        return count

    async def publish_raw_frame(self, data: str | bytes) -> int:
        """Write an arbitrary frame to every live socket; how many sockets got it."""
        sends = self.gateway.raw_frame(data)
        self._dispatch(sends)
        return len(sends)

    async def drop_connections(self, mode: str = "abrupt") -> int:
        """Drop every live connection (``abrupt``/``close``/``error902``/``error903``)."""
        ids = self.gateway.live_connections()
        sends = self.gateway.drop(mode)
        if mode == "abrupt":
            for connection_id in ids:
                self._abort(connection_id)
        else:
            self._dispatch(sends)
            lives = [self._lives[i] for i in ids if i in self._lives]
            # the close frames are written by each writer; a stuck peer must not hang us
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DROP_WAIT):
                    for live in lives:
                        await live.writer_done.wait()
        self._changed()
        return len(ids)

    # -- faults (daemon/a2pd/emulator/faults.py) -----------------------------------------------

    def fail_http(self, endpoint: str, status: int, *, retry_after: float | str | None = None,
                  times: int = 1, code: str = "") -> None:
        """The next ``times`` calls of ``endpoint`` ("token", "wstoken") answer ``status``."""
        self.faults.answer(endpoint, status, retry_after=retry_after, times=times, code=code)

    def refuse_connections(self) -> None:
        """Refuse WebSocket upgrades (HTTP 503) until ``accept_connections``."""
        self.faults.refusing = True

    def accept_connections(self) -> None:
        self.faults.refusing = False

    def stall_connections(self) -> list[int]:
        """Every live connection stops answering and sending (TCP stays open)."""
        ids = self.gateway.live_connections()
        self.faults.stalled.update(ids)
        self._unstalled.clear()
        return ids

    def unstall_connections(self) -> None:
        self.faults.stalled.clear()
        self._unstalled.set()

    def expire_access_tokens(self) -> None:
        """Every access token issued so far expires now (the sessions and sockets live on)."""
        now = time.monotonic()
        for session in self.oauth.sessions.values():
            session.access_expires = min(session.access_expires, now - 1.0)

    def break_refresh_tokens(self) -> None:
        """Every refresh token issued so far is refused from now on (invalid_grant)."""
        self.oauth.forget_refresh_tokens()

    def fail_next_recovery(self, code: str = "WSG-1005") -> None:
        """Make the next recovery attempt answer ``recoveryState: Failed`` with ``code``."""
        self.gateway.fail_next_recovery(code)

    # -- waiting -------------------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[], bool],
                       timeout: float = 10.0) -> None:  # noqa: ASYNC109 - public API
        """Return once ``predicate()`` holds; re-checked on every state change, no polling."""
        if predicate():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (predicate, future)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError as exc:
            raise EmulatorTimeout(f"condition not met within {timeout} s") from exc
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    async def wait_for_subscription(self, timeout: float = 10.0,  # noqa: ASYNC109 - public API
                                    *, created: int = 1) -> str:
        """The id of a subscription active on a live socket, once there is one (and at least
        ``created`` subscriptions were created in total)."""
        gateway = self.gateway

        def ready() -> bool:
            return (gateway.active_subscription() is not None
                    and gateway.subscriptions_created >= created)

        await self.wait_for(ready, timeout)
        active = gateway.active_subscription()
        assert active is not None, "ready() just said so"
        return active

    async def wait_sent(self, count: int,
                        timeout: float = 10.0) -> list[SentRecord]:  # noqa: ASYNC109 - public API
        """Return ``emu.sent`` once at least ``count`` notification frames were written."""
        await self.wait_for(lambda: len(self.sent) >= count, timeout)
        return self.sent

    def _changed(self) -> None:
        for predicate, future in list(self._waiters):
            if not future.done() and predicate():
                future.set_result(None)

    # -- sockets -------------------------------------------------------------------------

    def _dispatch(self, sends: Sends) -> None:
        for connection_id, outgoing in sends:
            live = self._lives.get(connection_id)
            if live is not None and not live.aborted:
                live.queue.put_nowait(outgoing)
        self._changed()

    def _abort(self, connection_id: int) -> None:
        """Close the TCP transport under a connection: no close frame at all."""
        live = self._lives.get(connection_id)
        if live is None or self._server is None:
            return
        live.aborted = True
        for protocol in list(self._server.server_state.connections):
            if live.client is not None and getattr(protocol, "client", None) == live.client:
                transport = getattr(protocol, "transport", None)
                if transport is not None:
                    transport.abort()

    async def _websocket(self, websocket: WebSocket) -> None:
        raw_query = bytes(websocket.scope.get("query_string", b"")).decode("latin-1")
        query = dict(split_query(raw_query))
        if self.faults.refuse():
            await websocket.send_denial_response(_error(ApiError(
                503, "CMN-211", "Service temporarily unavailable")))
            return
        await websocket.accept()
        client = websocket.scope.get("client")
        live = _Live(self.gateway.new_connection_id(), websocket,
                     (str(client[0]), int(client[1])) if client else None)
        self._lives[live.id] = live
        try:
            async with asyncio.TaskGroup() as group:
                writer = group.create_task(self._writer(live))
                self._dispatch(self.gateway.connect(live.id, query))
                await self._reader(live)
                self.gateway.disconnected(live.id)
                writer.cancel()
        finally:
            self.gateway.disconnected(live.id)
            del self._lives[live.id]
            self._changed()

    async def _reader(self, live: _Live) -> None:
        while True:
            deadline = self.gateway.deadline(live.id)
            try:
                if deadline is None:
                    message = await live.websocket.receive()
                else:
                    async with asyncio.timeout(max(0.0, deadline[0] - time.monotonic())):
                        message = await live.websocket.receive()
            except TimeoutError:
                assert deadline is not None, "only a deadline times out"
                self._dispatch(self.gateway.expire(live.id, deadline[1]))
                continue
            except WebSocketDisconnected:
                return
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("text")
            if data is None:
                data = message.get("bytes")
            if data is not None and live.id not in self.faults.stalled:
                self._dispatch(self.gateway.receive(live.id, data))

    async def _writer(self, live: _Live) -> None:
        try:
            while True:
                item = await live.queue.get()
                while live.id in self.faults.stalled and not live.aborted:
                    await self._unstalled.wait()  # held, not lost: sent if unstalled
                if live.aborted:
                    return
                try:
                    if item.close is not None:
                        await live.websocket.close(*item.close)
                        return
                    if isinstance(item.data, bytes):
                        await live.websocket.send_bytes(item.data)
                    elif item.data is not None:
                        await live.websocket.send_text(item.data)
                except (WebSocketDisconnect, WebSocketDisconnected, OSError):
                    return  # the peer is gone; the reader sees the disconnect
                if item.notification is not None:
                    n = item.notification
                    self.sent.append(SentRecord(
                        n.uuid, n.subscription_id, n.event, n.body, n.sequence, item.replay,
                        live.id, n.session_id, n.timestamp))
                    self._changed()
        finally:
            live.writer_done.set()

    # -- HTTP ----------------------------------------------------------------------------

    def _starlette(self) -> Starlette:
        control = CONTROL_PREFIX
        return Starlette(routes=[
            Route("/restapi/oauth/token", self._token, methods=["POST"]),
            Route("/restapi/oauth/revoke", self._revoke, methods=["POST"]),
            Route("/restapi/oauth/wstoken", self._wstoken, methods=["POST"]),
            Route("/restapi/v1.0/subscription", self._subscriptions, methods=["GET"]),
            Route("/restapi/v1.0/subscription/{subscription_id}", self._subscription,
                  methods=["DELETE"]),
            WebSocketRoute("/ws", self._websocket),
            Route(control + "health", self._health, methods=["GET"]),
            Route(control + "publish", self._control_publish, methods=["POST"]),
            Route(control + "publish-raw", self._control_publish_raw, methods=["POST"]),
            Route(control + "drop", self._control_drop, methods=["POST"]),
            Route(control + "fail-next-recovery", self._control_fail, methods=["POST"]),
            Route(control + "fault", self._control_fault, methods=["POST"]),
            Route(control + "sent", self._control_sent, methods=["GET"]),
            Route(control + "generated", self._control_generated, methods=["GET"]),
            Route(control + "connections", self._control_connections, methods=["GET"]),
            Route(control + "requests", self._control_requests, methods=["GET"]),
            Route(control + "traffic", self._control_traffic, methods=["POST"]),
            *a2p_routes(self.a2p, self.oauth),
            Route("/{path:path}", self._not_found,
                  methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        ])

    async def _token(self, request: Request) -> Response:
        form = await _form(request)
        fault = self.faults.next_http("token")
        if fault is not None:
            return _fault_response(fault)
        try:
            info, evicted = self.oauth.token(form, request.headers.get("authorization"))
        except ApiError as exc:
            return _error(exc)
        self._dispatch(self.gateway.end_oauth_sessions(evicted))
        return JSONResponse(info)

    async def _revoke(self, request: Request) -> Response:
        form = await _form(request)
        try:
            ended = self.oauth.revoke(form, request.headers.get("authorization"))
        except ApiError as exc:
            return _error(exc)
        self._dispatch(self.gateway.end_oauth_sessions(ended))
        return Response(status_code=200)

    async def _wstoken(self, request: Request) -> Response:
        await request.body()  # any body (empty, {} as JSON, form) is fine
        fault = self.faults.next_http("wstoken")
        if fault is not None:
            return _fault_response(fault)
        try:
            session = self.oauth.authenticate(request.headers.get("authorization"))
            if self.config.ws_permission_refused_at == "wstoken":
                self.oauth.require(WS_PERMISSION)
        except ApiError as exc:
            return _error(exc)
        return JSONResponse({**self.oauth.issue_ws_token(session), "uri": self.ws_url})

    async def _subscriptions(self, request: Request) -> Response:
        """The REST list of the user and app's subscriptions (WebSocket ones included)."""
        try:
            self.oauth.authenticate(request.headers.get("authorization"))
        except ApiError as exc:
            return _error(exc)
        return JSONResponse(self.gateway.list_subscriptions())

    async def _subscription(self, request: Request) -> Response:
        """REST ``DELETE /restapi/v1.0/subscription/{id}``: cancels any of them."""
        try:
            self.oauth.authenticate(request.headers.get("authorization"))
            self.gateway.delete_subscription(request.path_params["subscription_id"])
        except ApiError as exc:
            return _error(exc)
        return Response(status_code=204)

    async def _not_found(self, request: Request) -> Response:
        return _error(ApiError(404, "CMN-102", f"Resource for path [{request.url.path}] "
                                               "is not found"))

    # -- control API ---------------------------------------------------------------------

    async def _health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "live_connections":
                             len(self.gateway.live_connections()),
                             "subscription_id": self.gateway.active_subscription(),
                             "sent": len(self.sent), "generated": len(self.generated),
                             "traffic": self.traffic.running})

    async def _control_publish(self, request: Request) -> Response:
        doc = await _json(request)
        body = doc.get("body")
        if not isinstance(body, dict):
            return JSONResponse({"error": "'body' must be a JSON object"}, status_code=400)
        try:
            count = await self.publish(str(doc.get("kind")), body)
        except EmulatorConfigError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"generated": count})

    async def _control_publish_raw(self, request: Request) -> Response:
        return JSONResponse({"sockets": await self.publish_raw_frame(await request.body())})

    async def _control_drop(self, request: Request) -> Response:
        doc = await _json(request)
        try:
            count = await self.drop_connections(str(doc.get("mode", "abrupt")))
        except EmulatorConfigError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"dropped": count})

    async def _control_fail(self, request: Request) -> Response:
        doc = await _json(request)
        try:
            self.fail_next_recovery(str(doc.get("code", "WSG-1005")))
        except EmulatorConfigError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"ok": True})

    async def _control_fault(self, request: Request) -> Response:
        """``{"fault": "http", "endpoint", "status", "retry_after"?, "times"?}`` or one of
        ``refuse``, ``accept``, ``stall``, ``unstall``, ``expire-access``, ``break-refresh``."""
        doc = await _json(request)
        fault = doc.get("fault")
        try:
            if fault == "http":
                self.fail_http(str(doc.get("endpoint")), int(doc.get("status", 0)),
                               retry_after=doc.get("retry_after"),
                               times=int(doc.get("times", 1)))
            elif fault == "refuse":
                self.refuse_connections()
            elif fault == "accept":
                self.accept_connections()
            elif fault == "stall":
                return JSONResponse({"stalled": self.stall_connections()})
            elif fault == "unstall":
                self.unstall_connections()
            elif fault == "expire-access":
                self.expire_access_tokens()
            elif fault == "break-refresh":
                self.break_refresh_tokens()
            else:
                return JSONResponse({"error": f"unknown fault {fault!r}"}, status_code=400)
        except (ValueError, TypeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"ok": True})

    async def _control_sent(self, request: Request) -> Response:
        return JSONResponse([asdict(r) for r in self.sent])

    async def _control_generated(self, request: Request) -> Response:
        return JSONResponse([asdict(r) for r in self.generated])

    async def _control_connections(self, request: Request) -> Response:
        return JSONResponse([asdict(c) for c in self.connections])

    async def _control_requests(self, request: Request) -> Response:
        return JSONResponse([list(r) for r in self.requests])

    async def _control_traffic(self, request: Request) -> Response:
        doc = await _json(request)
        try:
            counts = {name: int(doc.get(name, default)) for name, default in
                      (("batches", 1), ("batch_size", 5), ("inbound", 0), ("optouts", 0))}
            rate = doc.get("rate")
            published = await self.traffic.run(
                **counts, rate=None if rate is None else float(rate))
        except (EmulatorConfigError, TypeError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"published": published})


def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket, bound before the server starts (no readiness polling)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _error(exc: ApiError) -> Response:
    return JSONResponse(exc.body(), status_code=exc.status)


def _fault_response(fault: HttpFault) -> Response:
    response = _error(ApiError(fault.status, fault.code, fault.message))
    if fault.retry_after is not None:
        response.headers["Retry-After"] = fault.retry_after
    return response


async def _form(request: Request) -> dict[str, str]:
    """Form fields (``application/x-www-form-urlencoded``), or a JSON object's fields."""
    raw = await request.body()
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            doc = json.loads(raw or b"{}")
        except ValueError:
            return {}
        return {str(k): str(v) for k, v in doc.items()} if isinstance(doc, dict) else {}
    return dict(parse_qsl(raw.decode("utf-8", errors="replace"), keep_blank_values=True))


async def _json(request: Request) -> Mapping[str, Any]:
    raw = await request.body()
    try:
        doc = json.loads(raw or b"{}")
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}
