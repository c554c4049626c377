"""The gateway's connection to Redis, where router replicas share their limits, ledger, idempotency
keys and cache. Every call is bounded in time (a Redis that stops answering must never hang a
request), and every failure becomes RedisUnavailable, counted in `gateway_redis_errors_total{use}` and
shown by `gateway_redis_up{failure_mode}`. What a caller does then depends on its FailureMode: let the
request through (`open`) or refuse it with a 503 (`closed`), which the gauge's label says. A process
without Redis exports no gauge (rather than one that reads as down)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Sequence
from enum import StrEnum
from typing import TypeVar

from prometheus_client import Counter, Gauge
from redis import asyncio as redis_asyncio
from redis.exceptions import NoScriptError, RedisError

from router.gateway.redis_pipeline import Argument, LuaScript, PipelinedConnection, Reply

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS = 1.0
# Connections to Redis per router process. A call that finds them all busy waits for one, within
# the call's timeout (redis-py's default pool refuses it at once instead).
MAX_CONNECTIONS = 256
# A failure is logged at most this often: an outage would otherwise log once per request.
LOG_INTERVAL_SECONDS = 10.0

REDIS_ERRORS = Counter("gateway_redis_errors", "Redis calls of the gateway that failed or timed out, by use.",
                       ["use"])
REDIS_UP = Gauge("gateway_redis_up", "Whether the gateway's last Redis call succeeded (1) or failed (0), labelled "
                 "with what the gateway does while it fails (open: serve unmetered, closed: refuse with 503).",
                 ["failure_mode"])

Result = TypeVar("Result")


class FailureMode(StrEnum):
    """What the gateway does with a request when Redis cannot be reached."""

    OPEN = "open"  # serve it, unmetered against the shared limits (the ledger spools locally)
    CLOSED = "closed"  # refuse it: 503 with Retry-After


class RedisUnavailable(Exception):
    """A Redis call failed or did not answer in time; the message says which call and why."""


class RedisStore:
    """The gateway's connections to one Redis, each with a timeout on every operation, and the key
    prefix that keeps this deployment's keys apart from others on the same server: a pipelined
    connection for the commands of every request (`send`, `run_script`), and a redis-py client
    (a connection pool) for the rest. `failure_mode` only labels gateway_redis_up: the callers
    act on it."""

    def __init__(self, url: str, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS, prefix: str = "kllm:",
                 failure_mode: FailureMode = FailureMode.OPEN) -> None:
        self.url = url
        self.failure_mode = failure_mode
        self.prefix = prefix
        self.timeout_seconds = timeout_seconds
        pool = redis_asyncio.BlockingConnectionPool.from_url(
            url, max_connections=MAX_CONNECTIONS, timeout=timeout_seconds, socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds, health_check_interval=30, decode_responses=False,
        )
        # from_pool: closing the client closes its pool.
        self.client = redis_asyncio.Redis.from_pool(pool)
        self._pipelined = PipelinedConnection(url, timeout_seconds)
        self._up = REDIS_UP.labels(failure_mode)  # set on every call: the labelled gauge is looked up once
        self._last_logged = 0.0

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def call(self, use: str, operation: Awaitable[Result]) -> Result:
        """The result of `operation` (a coroutine of self.client, or a reply awaited), or
        RedisUnavailable. `use` labels the failure metric: limits, ledger, idempotency, cache."""
        try:
            result = await operation
        except (RedisError, OSError, TimeoutError) as exc:
            REDIS_ERRORS.labels(use).inc()
            self._up.set(0)
            self._log_failure(use, exc)
            raise RedisUnavailable(
                f"Redis at {self.describe()} failed for {use}: {type(exc).__name__}: {exc}") from None
        self._up.set(1)
        return result

    def send(self, use: str, *arguments: Argument) -> Awaitable[Reply]:
        """The reply to a command that answers at once (never a blocking one), or RedisUnavailable.
        It is written before this returns: it leaves with the others of this turn of the event
        loop, on the pipelined connection."""
        return self.call(use, self._pipelined.submit(arguments))

    def run_script(self, use: str, script: LuaScript, keys: Sequence[Argument],
                   arguments: Sequence[Argument]) -> Awaitable[Reply]:
        """`script`'s reply, or RedisUnavailable; sent as `send` sends, by its SHA1."""
        sent = self._pipelined.submit(("EVALSHA", script.sha, len(keys), *keys, *arguments))
        return self.call(use, self._script_reply(sent, script, keys, arguments))

    async def _script_reply(self, sent: Awaitable[Reply], script: LuaScript, keys: Sequence[Argument],
                            arguments: Sequence[Argument]) -> Reply:
        try:
            return await sent
        except NoScriptError:
            # A Redis that restarted (or was flushed) has forgotten it: EVAL sends the text, which
            # Redis keeps for the next EVALSHA.
            return await self._pipelined.submit(("EVAL", script.text, len(keys), *keys, *arguments))

    async def ping(self) -> None:
        await self.call("ping", self.client.ping())

    def describe(self) -> str:
        """The URL without its password."""
        scheme, _, rest = self.url.partition("://")
        return f"{scheme}://{rest.rpartition('@')[2]}"

    async def close(self) -> None:
        await self._pipelined.close()
        await self.client.aclose()

    def _log_failure(self, use: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_logged >= LOG_INTERVAL_SECONDS:
            self._last_logged = now
            logger.error("Redis at %s failed for %s (%s: %s); logged at most every %g s, counted in "
                         "gateway_redis_errors_total", self.describe(), use, type(exc).__name__, exc,
                         LOG_INTERVAL_SECONDS)


def milliseconds(seconds: float) -> int:
    """A duration for PEXPIRE and SET PX, which take whole milliseconds (at least 1)."""
    return max(1, round(seconds * 1000))
