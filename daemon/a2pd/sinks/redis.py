"""The Redis Streams sink: one stream entry per notification, for consumers that scale out.

Each event is XADDed to the stream its template names (``a2p:{kind}``) with the fields
``uuid``, ``kind``, ``time`` (the notification time, ISO 8601 UTC; absent when the
notification had none) and ``json`` (the record every sink writes, ``events.to_json``).

Exactly one entry per notification uuid, even when the journal hands a batch over again (a
crash between XADD and the cursor moving, a retry after a connection dropped mid-pipeline,
a batch narrowed down after a permanent failure, a dead letter replayed, two daemons
writing to one Redis): every event goes through one Lua script, run atomically by Redis,
that XADDs only when the key ``<dedup_prefix><stream>:<uuid>`` does not exist and then
sets it, with the entry id as value, for ``dedup_ttl`` (the same effect as SET NX EX then
XADD, ordered so that a refused XADD leaves no key behind: Lua does not roll back). The
TTL bounds the window: a redelivery later than that writes a second entry, so it must
exceed the journal's redelivery horizon.

One EVALSHA per event, pipelined per batch without MULTI (``transaction=False``). Order per
stream is kept: each script call after the first of a pipeline checks that the previous
event's key exists and refuses with ``A2PD_ORDER`` otherwise, so when Redis refuses one
command of a pipeline (OOM, BUSY, ...) nothing after it is written, and the retry sends the
batch again from the first unwritten event (written ones are skipped by the dedup key).
After a Redis restart the script cache is empty: NOSCRIPT makes the sink load the script
and run the batch again at once; a NOSCRIPT right after loading is permanent.

Failures map to ``SinkError``: connection refused/reset, timeouts, LOADING, BUSY, READONLY
(failover), MASTERDOWN, TRYAGAIN, OOM, MISCONF, authentication and ACL refusals are
transient (retried by the pipeline with capped, fully jittered backoff; the operator can
fix the last ones); WRONGTYPE, other command errors and client-side data errors are
permanent (the event goes to the dead letters).

The username and password never appear in a log line, an error or a repr: they are
registered as secrets, and every URL this module prints has its credentials stripped.
This module must never log or raise with the URL the operator wrote.
"""

from __future__ import annotations

import ssl
import string
from collections.abc import Sequence
from datetime import UTC
from typing import Any
from urllib.parse import urlsplit

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from a2pd.errors import SinkError
from a2pd.events import Event, to_json
from a2pd.logging import get_logger, scrub
from a2pd.sinks import Sink, SinkContext
from a2pd.sinks.redis_options import RedisOptions
from a2pd.sinks.templates import template_values

__all__ = ["RedisOptions", "RedisSink", "dedup_script", "error_code"]

log = get_logger("sinks.redis")

#: The script, with the sink's constants (TTL, trimming) filled in by ``dedup_script``.
#: KEYS: 1 the event's dedup key, 2 the stream, 3 (not on a pipeline's first call) the
#: previous event's dedup key. ARGV: uuid, kind, time ('' when none), json.
#: Returns {1, id} when the entry was added, {0, id} when the uuid was already there.
#: XADD comes before SET: a refused XADD leaves no key behind (scripts do not roll back),
#: and Redis runs the whole script atomically, so the check and the add cannot interleave.
#: MINID is computed from the server's clock (scripts are replicated by effects).
DEDUP_XADD = """
if #KEYS > 2 and redis.call('EXISTS', KEYS[3]) == 0 then
  return redis.error_reply('A2PD_ORDER the previous event of this pipeline was not written')
end
local seen = redis.call('GET', KEYS[1])
if seen then
  return {0, seen}
end
local args = {'XADD', KEYS[2]}
%(trim)s
args[#args + 1] = '*'
args[#args + 1] = 'uuid'
args[#args + 1] = ARGV[1]
args[#args + 1] = 'kind'
args[#args + 1] = ARGV[2]
if ARGV[3] ~= '' then
  args[#args + 1] = 'time'
  args[#args + 1] = ARGV[3]
end
args[#args + 1] = 'json'
args[#args + 1] = ARGV[4]
local id = redis.call(unpack(args))
redis.call('SET', KEYS[1], id, 'PX', %(ttl_ms)d)
return {1, id}
"""
_TRIM_MAXLEN = """args[#args + 1] = 'MAXLEN'
args[#args + 1] = '%(op)s'
args[#args + 1] = '%(count)d'"""
_TRIM_MINID = """local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
args[#args + 1] = 'MINID'
args[#args + 1] = '%(op)s'
args[#args + 1] = tostring(math.max(0, now_ms - %(age_ms)d))"""


def dedup_script(*, ttl: float, max_len: int = 0, max_age: float = 0.0,
                 approximate: bool = True) -> str:
    """The Lua script for these options (only validated numbers are put in it)."""
    op = "~" if approximate else "="
    if max_len:
        trim = _TRIM_MAXLEN % {"op": op, "count": int(max_len)}
    elif max_age:
        trim = _TRIM_MINID % {"op": op, "age_ms": int(max_age * 1000)}
    else:
        trim = ""
    return DEDUP_XADD % {"trim": trim, "ttl_ms": int(ttl * 1000)}


#: error codes (the first word of a Redis error reply) worth retrying: the server is
#: starting, busy, failing over, out of memory, or refuses us until an operator acts
TRANSIENT_CODES = frozenset({
    "LOADING", "BUSY", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "OOM", "MISCONF",
    "NOREPLICAS", "NOAUTH", "WRONGPASS", "NOPERM", "A2PD_ORDER",
})
#: redis-py strips the code from some messages; these classes still tell it
_CODE_OF_CLASS: tuple[tuple[type[Exception], str], ...] = (
    (redis_errors.BusyLoadingError, "LOADING"),
    (redis_errors.ReadOnlyError, "READONLY"),
    (redis_errors.OutOfMemoryError, "OOM"),
    (redis_errors.NoScriptError, "NOSCRIPT"),
    (redis_errors.NoPermissionError, "NOPERM"),
    (redis_errors.AuthenticationError, "WRONGPASS"),
    (redis_errors.ExecAbortError, "EXECABORT"),
)
_KIND_ONLY = frozenset({"kind"})


def error_code(exc: BaseException) -> str:
    """The Redis error code of an error reply (``WRONGTYPE``, ``OOM``, ...), or ``ERR``.

    The RESP protocol puts the code first in the error text; redis-py keeps it in
    ``status_code`` (newer releases) or maps it to a class (some strip it from the text)."""
    code = getattr(exc, "status_code", None)
    if isinstance(code, str) and code:
        return code
    for cls, known in _CODE_OF_CLASS:
        if isinstance(exc, cls):
            return known
    first = str(exc).split(" ", 1)[0]
    return first if first.isupper() and first.replace("_", "").isalnum() else "ERR"


class RedisSink(Sink):
    """XADDs each event, once per uuid, to the stream its template names."""

    type_name = "redis"
    Options = RedisOptions

    def __init__(self, name: str, options: RedisOptions, context: SinkContext) -> None:
        super().__init__(name, options, context)
        options.register_secrets()
        self.url = options.safe_url
        self._client: Redis | None = None
        self._sha: str | None = None
        self._script = dedup_script(ttl=options.dedup_ttl, max_len=options.max_len,
                                    max_age=options.max_age,
                                    approximate=options.trim == "approximate")
        self._stream_fields = frozenset(
            name for _lit, name, _spec, _conv in string.Formatter().parse(options.stream)
            if name)
        #: entries added, uuids found already written, script loads (for tests and benches)
        self.written = 0
        self.duplicates = 0
        self.script_loads = 0

    def _connect(self) -> Redis:
        if self._client is not None:
            return self._client
        opts = self.options
        assert isinstance(opts, RedisOptions)
        parts = urlsplit(opts.url)
        password = opts.resolved_password
        tls: dict[str, Any] = {}
        if parts.scheme == "rediss":
            tls = {
                "ssl": True,
                "ssl_ca_certs": str(opts.tls_ca_file) if opts.tls_ca_file else None,
                "ssl_certfile": str(opts.tls_cert_file) if opts.tls_cert_file else None,
                "ssl_keyfile": str(opts.tls_key_file) if opts.tls_key_file else None,
                "ssl_cert_reqs": ssl.CERT_REQUIRED if opts.tls_verify else ssl.CERT_NONE,
                "ssl_check_hostname": opts.tls_verify,
            }
        db = parts.path.strip("/")
        self._client = Redis(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            db=int(db) if db else 0,
            username=opts.resolved_username,
            password=password.get_secret_value() if password is not None else None,
            socket_connect_timeout=opts.connect_timeout,
            socket_timeout=opts.timeout,
            # the pipeline retries with backoff and full jitter; the client must not retry
            # on its own (it would hide outages from the counters and the logs)
            retry=Retry(NoBackoff(), 0),
            decode_responses=False,
            **tls,
        )
        return self._client

    def stream_for(self, event: Event) -> str:
        """The stream ``event`` goes to."""
        template: str = self.options.stream
        names = self._stream_fields
        if not names:
            return template
        if names == _KIND_ONLY:
            # the common case, without computing every template value
            return template.format_map({"kind": event.kind})
        return template.format_map(template_values(event))

    def _args(self, event: Event) -> tuple[str, str, str, str]:
        """The script's ARGV for ``event``: uuid, kind, time, json."""
        stamp = event.time
        text = ""
        if stamp is not None:
            text = stamp.astimezone(UTC).isoformat(timespec="milliseconds")
            text = text.replace("+00:00", "Z")
        return event.uuid, event.kind, text, to_json(event)

    async def send(self, batch: Sequence[Event]) -> None:
        if not batch:
            return
        client = self._connect()
        if self._sha is None:
            await self._load_script(client)
        for attempt in (1, 2):
            results = await self._run(client, batch)
            failure = next(((i, r) for i, r in enumerate(results)
                            if isinstance(r, BaseException)), None)
            added = sum(1 for r in results if isinstance(r, list) and r and r[0] == 1)
            already = sum(1 for r in results if isinstance(r, list) and r and r[0] == 0)
            self.written += added
            self.duplicates += already
            if already:
                log.info("redis_duplicates_skipped", sink=self.name, events=already)
            if failure is None:
                return
            index, exc = failure
            code = error_code(exc)
            if code == "NOSCRIPT" and attempt == 1:
                # a restarted or flushed server: load the script and run the batch again
                # (what was written before the failure is skipped by its dedup key)
                await self._load_script(client)
                continue
            raise self._refused(exc, code, batch[index], index)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _run(self, client: Redis, batch: Sequence[Event]) -> list[Any]:
        prefix = self.options.dedup_prefix
        pipe = client.pipeline(transaction=False)
        previous: str | None = None
        for event in batch:
            stream = self.stream_for(event)
            # per stream: the same event routed to two streams (two sinks) lands in both
            key = f"{prefix}{stream}:{event.uuid}"
            keys = [key, stream]
            if previous is not None:
                keys.append(previous)
            pipe.evalsha(self._sha or "", len(keys), *keys, *self._args(event))
            previous = key
        try:
            results: list[Any] = await pipe.execute(raise_on_error=False)
        except redis_errors.RedisError as exc:
            raise self._unreachable(exc) from exc
        except OSError as exc:
            raise SinkError(f"redis at {self.url}: {exc.strerror or exc}") from exc
        return results

    async def _load_script(self, client: Redis) -> None:
        try:
            sha = await client.script_load(self._script)
        except redis_errors.RedisError as exc:
            raise self._unreachable(exc) from exc
        except OSError as exc:
            raise SinkError(f"redis at {self.url}: {exc.strerror or exc}") from exc
        self._sha = sha.decode() if isinstance(sha, bytes) else str(sha)
        self.script_loads += 1
        log.info("redis_script_loaded", sink=self.name, url=self.url)

    def _unreachable(self, exc: redis_errors.RedisError) -> SinkError:
        """A failure of the connection or of a whole command (not of one event)."""
        if isinstance(exc, redis_errors.ResponseError):
            code = error_code(exc)
            text = str(exc) if str(exc).startswith(code) else f"{code} {exc}"
            return SinkError(self._say(f"redis at {self.url} refused: {text}"),
                             permanent=code not in TRANSIENT_CODES and code != "NOSCRIPT")
        if isinstance(exc, redis_errors.AuthenticationError):
            return SinkError(self._say(f"redis at {self.url} refused the credentials: {exc}"))
        if isinstance(exc, redis_errors.DataError):
            return SinkError(self._say(f"redis client refused the data: {exc}"), permanent=True)
        # ConnectionError, TimeoutError, BusyLoadingError and the rest: retry
        kind = type(exc).__name__
        return SinkError(self._say(f"redis at {self.url} unreachable ({kind}): {exc}"))

    def _refused(self, exc: BaseException, code: str, event: Event, index: int) -> SinkError:
        """Redis refused one event's command: transient or permanent by its error code."""
        if not isinstance(exc, redis_errors.ResponseError):
            return self._unreachable(exc) if isinstance(exc, redis_errors.RedisError) \
                else SinkError(self._say(f"redis: {exc!r}"))
        permanent = code not in TRANSIENT_CODES
        where = f"stream {self.stream_for(event)!r}, event {index + 1}"
        text = str(exc)
        if not text.startswith(code):
            text = f"{code} {text}"
        return SinkError(self._say(f"redis at {self.url} refused ({where}): {text}"),
                         permanent=permanent)

    @staticmethod
    def _say(text: str) -> str:
        # the second line of defence: a message that carries a registered secret anyway
        return scrub(text.encode("utf-8", "replace")).decode("utf-8", "replace")

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.aclose()
            except (redis_errors.RedisError, OSError) as exc:
                log.warning("redis_close_failed", sink=self.name, error=self._say(str(exc)))

    def __repr__(self) -> str:
        return f"RedisSink({self.name!r}, url={self.url!r})"
