"""HTTP forward sink: POST events to a webhook receiver that can trust them.

Every request is signed the Standard Webhooks way (https://www.standardwebhooks.com/):

    webhook-id         the notification uuid (a batch: ``batch_`` + a digest of its uuids),
                       the same on every retry, so receivers deduplicate on it
    webhook-timestamp  Unix seconds of this attempt
    webhook-signature  ``v1,`` + base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}")), one per
                       configured key, space-separated (key rotation: add the new key, move
                       receivers over, remove the old one)

The body is the event record as the file sink writes it (``mode = "event"``) or a JSON array
of records (``mode = "batch"``, cut by ``batch_max_events`` / ``batch_max_bytes``, filled for
up to ``linger``). The signature covers the uncompressed body.

What an answer means:

    2xx                           delivered
    a status in ``retry_statuses``  retried with backoff and full jitter (default 408, 429,
      (or a network error/timeout)  5xx); a Retry-After (seconds or HTTP-date) is honoured,
                                   capped by ``retry_after_max``; after ``max_attempts`` /
                                   ``max_elapsed`` (0: never) the events are dead-lettered
    3xx                           dead letter: the URL is wrong (with follow_redirects,
                                   307/308 to the same origin are followed first)
    any other status              dead letter, with the status and a bounded, scrubbed
                                   snippet of the response body

Events are sent in order, one request at a time, unless ``concurrency`` > 1 lets that many
requests of one batch run at once (the cursor still only moves once all succeeded). Events a
receiver already accepted are not sent again when the pipeline retries the rest of a batch.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import ssl
import time
from collections import OrderedDict
from collections.abc import Sequence
from urllib.parse import unquote, urljoin, urlsplit

import anyio
import httpx
from pydantic import SecretStr

from a2pd import __version__, counts
from a2pd.errors import ConfigError, ConfigProblem, SinkError
from a2pd.events import Event, to_json
from a2pd.logging import get_logger, register_secret, scrub
from a2pd.sinks import RetryPolicy, Sink, SinkContext
from a2pd.sinks.http_options import (
    DEFAULT_RETRY,
    BasicAuth,
    BearerAuth,
    HttpOptions,
    ReadableFile,
    StatusRule,
    sign,
    signing_key,
)
from a2pd.vocab import (
    parse_retry_after,
    redact_url,
)

__all__ = [
    "ACKED_MEMORY",
    "DEFAULT_RETRY",
    "LATENCY_BUCKETS_MS",
    "MAX_REDIRECTS",
    "BasicAuth",
    "BearerAuth",
    "HttpOptions",
    "HttpSink",
    "ReadableFile",
    "StatusRule",
    "scrub_text",
    "sign",
    "signing_key",
]

log = get_logger("sink.http")

#: latency histogram bucket bounds, milliseconds (cumulative counters, Prometheus style)
LATENCY_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
#: redirect hops followed (307/308, same origin) before the answer counts as refused
MAX_REDIRECTS = 5
#: accepted uuids remembered per sink, so a retried batch skips what already arrived
ACKED_MEMORY = 65536


def _same_origin(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.scheme, pa.hostname, pa.port) == (pb.scheme, pb.hostname, pb.port)


class HttpSink(Sink):
    """POST events (or batches of them) to a webhook receiver; see the module docstring."""

    type_name = "http"
    Options = HttpOptions

    def __init__(self, name: str, options: HttpOptions, context: SinkContext) -> None:
        super().__init__(name, options, context)
        self.where = redact_url(options.url)
        self.retry = RetryPolicy(initial=options.retry_initial, maximum=options.retry_max,
                                 max_attempts=options.max_attempts,
                                 max_elapsed=options.max_elapsed,
                                 retry_after_max=options.retry_after_max)
        self.linger = options.linger if options.mode == "batch" else 0.0
        self._codes = {r for r in options.retry_statuses if isinstance(r, int)}
        self._classes = {r[0] for r in options.retry_statuses if isinstance(r, str)}
        self._keys = [signing_key(s) for s in options.signing_secrets]
        self._acked: OrderedDict[str, None] = OrderedDict()
        headers = {"user-agent": f"a2pd/{__version__}", "content-type": "application/json",
                   **options.headers}
        for header, value in options.secret_headers.items():
            headers[header] = self._secret(value)
        auth: httpx.Auth | None = None
        if isinstance(options.auth, BearerAuth):
            headers["authorization"] = "Bearer " + self._secret(options.auth.token)
        elif isinstance(options.auth, BasicAuth):
            auth = httpx.BasicAuth(options.auth.username, self._secret(options.auth.password))
            # what goes on the wire: a receiver echoing headers must not reveal it either
            pair = f"{options.auth.username}:{options.auth.password.get_secret_value()}"
            register_secret(base64.b64encode(pair.encode()).decode(), permanent=True)
        parts = urlsplit(options.url)
        if parts.password:
            register_secret(parts.password, permanent=True)
            pair = f"{unquote(parts.username or '')}:{unquote(parts.password)}"
            register_secret(unquote(parts.password), permanent=True)
            register_secret(base64.b64encode(pair.encode()).decode(), permanent=True)
        if parts.query:
            register_secret(parts.query, permanent=True)
        for secret in options.signing_secrets:
            register_secret(secret.get_secret_value(), permanent=True)
        self._client = httpx.AsyncClient(
            headers=headers, auth=auth, verify=self._tls_context(),
            timeout=httpx.Timeout(options.timeout),
            # redirects are followed by _post itself (307/308, same origin only)
            follow_redirects=False,
            limits=httpx.Limits(max_connections=options.concurrency,
                                max_keepalive_connections=options.concurrency))

    def accepted(self, uuid: str) -> bool:
        return uuid in self._acked

    def adopt(self, previous: Sink) -> None:
        # the same receiver already has these: the replacement must not send them again
        if isinstance(previous, HttpSink) and previous.options.url == self.options.url:
            self._acked.update(previous._acked)

    @staticmethod
    def _secret(value: SecretStr) -> str:
        text = value.get_secret_value()
        register_secret(text, permanent=True)
        return text

    def _tls_context(self) -> ssl.SSLContext | bool:
        options = self.options
        key = f"sinks.{self.name}"
        if not options.tls_verify:
            log.warning("tls_verify_off", sink=self.name, url=self.where,
                        note="the receiver's certificate is not checked")
        try:
            if options.tls_verify:
                context = ssl.create_default_context(
                    cafile=str(options.ca_file) if options.ca_file else None)
            else:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError([ConfigProblem(f"{key}.ca_file", f"not a CA bundle: {exc}")]) \
                from None
        if options.client_cert is not None:
            try:
                context.load_cert_chain(
                    str(options.client_cert),
                    str(options.client_key) if options.client_key else None)
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError([ConfigProblem(f"{key}.client_cert",
                                                 f"cannot load the certificate/key: {exc}")]) \
                    from None
        return context

    # -- sending ------------------------------------------------------------------------------

    async def send(self, batch: Sequence[Event]) -> None:
        todo = [event for event in batch if event.uuid not in self._acked]
        units = [[e] for e in todo] if self.options.mode == "event" else self._chunks(todo)
        if self.options.concurrency == 1 or len(units) == 1:
            for unit in units:
                await self._post(unit)
            return
        failures: list[SinkError] = []
        limiter = anyio.CapacityLimiter(self.options.concurrency)

        async def one(unit: list[Event]) -> None:
            async with limiter:
                try:
                    await self._post(unit)
                except SinkError as exc:
                    failures.append(exc)

        async with anyio.create_task_group() as tg:
            for unit in units:
                tg.start_soon(one, unit)
        if failures:
            transient = [f for f in failures if not f.permanent]
            if not transient:
                raise failures[0]
            waits = [f.retry_after for f in transient if f.retry_after is not None]
            raise SinkError(f"{len(failures)} of {len(units)} requests failed; first: "
                            f"{transient[0].reason}", retry_after=max(waits, default=None))

    def _chunks(self, events: Sequence[Event]) -> list[list[Event]]:
        limit_n, limit_bytes = self.options.batch_max_events, self.options.batch_max_bytes
        chunks: list[list[Event]] = []
        current: list[Event] = []
        size = 2
        for event in events:
            n = len(to_json(event).encode()) + 1
            if current and (len(current) >= limit_n or size + n > limit_bytes):
                chunks.append(current)
                current, size = [], 2
            current.append(event)
            size += n
        if current:
            chunks.append(current)
        return chunks

    def _body(self, unit: Sequence[Event]) -> tuple[str, bytes]:
        if self.options.mode == "event":
            [event] = unit
            return event.uuid, to_json(event).encode()
        digest = hashlib.sha256("\n".join(e.uuid for e in unit).encode()).hexdigest()
        return f"batch_{digest[:32]}", ("[" + ",".join(to_json(e) for e in unit) + "]").encode()

    async def _post(self, unit: Sequence[Event]) -> None:
        msg_id, body = self._body(unit)
        timestamp = int(time.time())
        headers = {"webhook-id": msg_id, "webhook-timestamp": str(timestamp)}
        if self._keys:
            headers["webhook-signature"] = sign(self._keys, msg_id, timestamp, body)
        content = body
        if self.options.compression == "gzip":
            content = gzip.compress(body, compresslevel=5)
            headers["content-encoding"] = "gzip"
        name = self.name
        self.counters.inc(f"{counts.HTTP_REQUESTS}.{name}")
        started = time.monotonic()
        url = self.options.url
        try:
            for _hop in range(MAX_REDIRECTS + 1):
                async with self._client.stream(self.options.method, url, content=content,
                                               headers=headers) as response:
                    status = response.status_code
                    # a 2xx body is read (bounded) so the connection can be reused
                    snippet = await self._snippet(response, 65536 if 200 <= status < 300
                                                  else self.options.response_snippet)
                    retry_after = response.headers.get("retry-after")
                    location = response.headers.get("location", "")
                target = urljoin(url, location) if location else ""
                if not (self.options.follow_redirects and status in (307, 308) and target
                        and _same_origin(url, target)):
                    break
                url = target  # 307/308 keep the method and body; other origins are refused
        except httpx.TimeoutException as exc:
            self._failed()
            raise SinkError(f"{self.where}: timed out ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            self._failed()
            raise SinkError(f"{self.where}: {type(exc).__name__}: {scrub_text(str(exc))}") \
                from None
        self._observe(started, status)
        if 200 <= status < 300:
            self.counters.inc(f"{counts.HTTP_SENT}.{name}", len(unit))
            for event in unit:
                self._acked[event.uuid] = None
            while len(self._acked) > ACKED_MEMORY:
                self._acked.popitem(last=False)
            return
        self.counters.inc(f"{counts.HTTP_FAILURES}.{name}")
        text = scrub(snippet).decode("utf-8", "replace")
        if status in self._codes or str(status)[0] in self._classes:
            wait = parse_retry_after(retry_after, time.time())
            raise SinkError(f"{self.where}: HTTP {status}" + (f": {text}" if text else ""),
                            retry_after=wait)
        if 300 <= status < 400:
            why = ("only 307/308 to the same origin are followed: fix the url"
                   if self.options.follow_redirects else
                   "not followed (fix the url, or set follow_redirects for 307/308)")
            raise SinkError(f"{self.where}: HTTP {status} redirect to "
                            f"{redact_url(urljoin(url, location)) if location else '?'} {why}",
                            permanent=True)
        raise SinkError(f"{self.where}: HTTP {status}" + (f": {text}" if text else ""),
                        permanent=True)

    async def _snippet(self, response: httpx.Response, limit: int) -> bytes:
        kept = b""
        if limit:
            async for chunk in response.aiter_bytes():
                kept += chunk
                if len(kept) >= limit:
                    break
        return kept[:limit]

    def _observe(self, started: float, status: int) -> None:
        name = self.name
        elapsed_ms = (time.monotonic() - started) * 1000.0
        self.counters.inc(f"{counts.HTTP_STATUS}_{status // 100}xx.{name}")
        self.counters.inc(f"{counts.HTTP_LATENCY_MS_SUM}.{name}", round(elapsed_ms))
        self.counters.inc(f"{counts.HTTP_LATENCY_MS_COUNT}.{name}")
        for bound in LATENCY_BUCKETS_MS:
            if elapsed_ms <= bound:
                self.counters.inc(f"{counts.HTTP_LATENCY_MS_LE}_{bound}.{name}")

    def _failed(self) -> None:
        self.counters.inc(f"{counts.HTTP_ERRORS}.{self.name}")
        self.counters.inc(f"{counts.HTTP_FAILURES}.{self.name}")

    async def aclose(self) -> None:
        await self._client.aclose()


def scrub_text(text: str) -> str:
    """``text`` with registered secrets masked (httpx errors can quote the URL)."""
    return scrub(text.encode()).decode("utf-8", "replace")
