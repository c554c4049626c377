"""The gateway's decisions for one request, whatever route it came by: who the tenant is (its API
key), whether it may use the model, whether its limits admit it now (a reservation of prompt +
max_tokens), and, once it ends, what it used: the Meter's tokens go to the usage ledger, and the
reservation is settled to them. router/gateway/middleware.py applies it to the HTTP routes,
router/websocket_edge.py to each WebSocket request."""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from enum import StrEnum
from http import HTTPStatus

from starlette.responses import JSONResponse

from router.features import TokenCounter
from router.gateway.idempotency import IdempotencyStore
from router.gateway.ledger import UsageLedger
from router.gateway.limits import DEFAULT_LEASE_SECONDS, Admission, Limit, Limiter, LimitsUnavailable, RateLimited
from router.gateway.metering import Meter
from router.gateway.redis_store import FailureMode, RedisStore
from router.gateway.response_cache import ResponseCache
from router.gateway.semantic_cache import SemanticCache
from router.gateway.tenants import Tenant, TenantPolicy, Tenants
from router.gateway.usage_record import Endpoint
from serving.openai_protocol import openai_error_body

logger = logging.getLogger(__name__)

# The tenant of every request when no tenants are configured (the cache or idempotency is on).
ANONYMOUS = Tenant("anonymous", TenantPolicy())
DEFAULT_UNBOUNDED_MAX_TOKENS = 4096
# A request holding a concurrency slot renews its lease this often: the lease outlives a router
# killed mid-request by at most DEFAULT_LEASE_SECONDS, and a long stream keeps its slot.
LEASE_RENEWAL_SECONDS = DEFAULT_LEASE_SECONDS / 3


class CacheHitBilling(StrEnum):
    """What a response-cache hit costs its tenant."""

    NONE = "none"  # nothing: no model ran
    PROMPT = "prompt"  # the prompt's tokens, as if it had been read
    FULL = "full"  # the usage of the answer it replays


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    # Reserved as max_tokens for a chat that sets none (it may then generate up to the model's
    # context, which the router does not know); settled to the real use at its end.
    unbounded_max_tokens: int = DEFAULT_UNBOUNDED_MAX_TOKENS
    # How long a duplicate of an in-flight Idempotency-Key waits for the first one's answer.
    idempotency_wait_seconds: float = 60.0
    cache_hit_billing: CacheHitBilling = CacheHitBilling.NONE
    # Whether the KServe predict routes need a key too (an InferenceGraph must then propagate
    # Authorization: router.headers.propagate).
    authenticate_predict: bool = True
    # What a request gets when Redis (limits, idempotency, cache) cannot be reached.
    failure_mode: FailureMode = FailureMode.OPEN


class Unauthorized(Exception):
    """No key, or not one of the tenants' keys."""


class ModelNotAllowed(Exception):
    """The tenant may not use the model it asked for."""


class Ticket:
    """One admitted request: its tenant, its reservation and its meter. `finish` (once, whatever
    happened) commits the meter to the ledger and settles the reservation to what was used."""

    def __init__(self, gateway: Gateway, admission: Admission, meter: Meter) -> None:
        self.gateway = gateway
        self.admission = admission
        self.meter = meter
        self._finished = False

    @property
    def tenant(self) -> Tenant:
        return self.admission.tenant

    def headers(self) -> dict[str, str]:
        """The tenant's x-ratelimit-* headers as of its admission."""
        return self.admission.state.headers()

    def hold_slot(self) -> asyncio.Task | None:
        """A task that renews the concurrency slot's lease until cancelled, run beside a long
        request; None when the request holds no slot."""
        if self.admission.lease_id is None:
            return None
        return asyncio.ensure_future(self._renew_lease())

    async def _renew_lease(self) -> None:
        while True:
            await asyncio.sleep(LEASE_RENEWAL_SECONDS)
            await self.gateway.limiter.refresh(self.admission)

    async def release(self) -> None:
        """Give the admission back unused, with no ledger record (an idempotent replay, a request
        that never went on)."""
        if not self._finished:
            self._finished = True
            await self.gateway.limiter.settle(self.admission, 0)

    async def finish(self, outcome: str) -> None:
        if self._finished:
            return
        self._finished = True
        # The settlement goes beside the ledger's record (in Redis: their commands share a write);
        # the counts are final, and it goes on whether or not the record could be written.
        settling = asyncio.ensure_future(
            self.gateway.limiter.settle(self.admission, self.meter.prompt_tokens + self.meter.completion_tokens))
        try:
            if not self.meter.committed:
                await self.meter.commit(outcome)
        finally:
            await settling


class Gateway:
    """The tenants and the stores their requests go through (in process, or in Redis)."""

    def __init__(self, tenants: Tenants, limiter: Limiter, ledger: UsageLedger, counter: TokenCounter,
                 settings: GatewaySettings, idempotency: IdempotencyStore | None = None,
                 cache: ResponseCache | None = None, semantic_cache: SemanticCache | None = None,
                 store: RedisStore | None = None) -> None:
        self.tenants = tenants
        self.limiter = limiter
        self.ledger = ledger
        self.counter = counter
        self.settings = settings
        self.idempotency = idempotency
        self.cache = cache
        self.semantic_cache = semantic_cache
        self.store = store
        self._background: set[asyncio.Task] = set()

    def authenticate(self, authorization: str | None) -> Tenant:
        if not self.tenants.required:
            return ANONYMOUS
        tenant = self.tenants.authenticate(authorization)
        if tenant is None:
            raise Unauthorized("a valid API key is required: send it as 'Authorization: Bearer <key>'")
        return tenant

    def named_tenant(self, name: str) -> Tenant:
        """The tenant of work this process runs for it (a batch's lines), by its name; Unauthorized
        if no tenant has it any more (the tenants file changed since the batch was created)."""
        if not self.tenants.required:
            return ANONYMOUS
        tenant = self.tenants.by_name(name)
        if tenant is None:
            raise Unauthorized(f"tenant {name!r} is no longer configured")
        return tenant

    def check_model(self, tenant: Tenant, model: object) -> None:
        if isinstance(model, str) and not tenant.policy.allows_model(model):
            allowed = ", ".join(sorted(tenant.policy.models or ()))
            raise ModelNotAllowed(f"the key of tenant {tenant.name!r} may not use model {model!r} (allowed: {allowed})")

    async def admit(self, tenant: Tenant, endpoint: Endpoint, reservation: int, model: str) -> Ticket:
        """The request's ticket; RateLimited when a limit refuses it, LimitsUnavailable when
        the limits cannot be checked and the gateway fails closed. A request cancelled while
        its admission is under way gives back what the admission took."""
        return self.ticket(await self.admission(self.start_admission(tenant, reservation)), endpoint, model)

    def start_admission(self, tenant: Tenant, reservation: int) -> asyncio.Task[Admission]:
        """The admission, started now as a task of its own: its Redis command is on its way as
        soon as the running task yields, ahead of work scheduled after this call."""
        return asyncio.ensure_future(self.limiter.admit(tenant, reservation))

    async def admission(self, admitting: asyncio.Task[Admission]) -> Admission:
        """What `admitting` admits. A caller cancelled meanwhile leaves it to finish, and what it
        took is given back (its Redis script may already have run)."""
        try:
            return await asyncio.shield(admitting)
        except asyncio.CancelledError:
            admitting.add_done_callback(self._give_back)
            raise

    def ticket(self, admission: Admission, endpoint: Endpoint, model: str) -> Ticket:
        meter = Meter(self.ledger, uuid.uuid4().hex, admission.tenant.name, endpoint.value, model)
        return Ticket(self, admission, meter)

    def later(self, work: Awaitable[object]) -> None:
        """Run `work` after the answer has gone (storing it for replays and the caches); close()
        waits for it, and a failure is logged."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._done_later)

    def _done_later(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("the gateway's bookkeeping after an answer failed", exc_info=task.exception())

    def _give_back(self, admitting: asyncio.Future) -> None:
        if not admitting.cancelled() and admitting.exception() is None:
            self.later(self.limiter.settle(admitting.result(), 0))

    async def settled(self) -> None:
        """Wait for the work `later` started: once it returns, the answers given so far are
        stored for their keys and the caches."""
        await asyncio.gather(*self._background, return_exceptions=True)

    async def close(self) -> None:
        await self.settled()
        for store in (self.idempotency, self.cache, self.semantic_cache):
            if store is not None:
                await store.close()
        await self.limiter.close()
        await self.ledger.close()
        if self.store is not None:
            await self.store.close()


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request the gateway answers itself: status, OpenAI error type and code, message, headers,
    and how long the client should wait before retrying (None: no wait is known)."""

    status: int
    message: str
    error_type: str
    code: str | None
    headers: dict[str, str]
    retry_after_seconds: float | None = None

    def response(self, openai: bool) -> JSONResponse:
        """In OpenAI's error shape, or KServe's (`{"error": message}`) for its predict routes."""
        if openai:
            body = openai_error_body(self.status, self.message, code=self.code)
            body["error"]["type"] = self.error_type
        else:
            body = {"error": self.message}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def refusal_of(exc: Exception) -> Refusal | None:
    """How the gateway answers one of its own failures (None: not the gateway's)."""
    if isinstance(exc, RateLimited):
        retry_after = max(exc.retry_after_seconds, 0.001)
        headers = {**exc.state.headers(), "retry-after": str(max(1, math.ceil(retry_after))),
                   "retry-after-ms": str(math.ceil(retry_after * 1000))}
        error_type, code = LIMIT_ERRORS[exc.limit]
        return Refusal(HTTPStatus.TOO_MANY_REQUESTS, exc.message, error_type, code, headers, retry_after)
    if isinstance(exc, LimitsUnavailable):
        return Refusal(HTTPStatus.SERVICE_UNAVAILABLE, str(exc), "server_error", None, {"retry-after": "1"}, 1.0)
    if isinstance(exc, Unauthorized):
        return Refusal(HTTPStatus.UNAUTHORIZED, str(exc), "authentication_error", "invalid_api_key",
                       {"www-authenticate": "Bearer"})
    if isinstance(exc, ModelNotAllowed):
        return Refusal(HTTPStatus.FORBIDDEN, str(exc), "permission_error", "model_not_allowed", {})
    return None


# OpenAI's error `type` and `code` of a 429, by the limit that refused (its budget refusal is
# `insufficient_quota`; the official clients raise RateLimitError for every 429).
LIMIT_ERRORS = {
    Limit.REQUESTS: ("requests", "rate_limit_exceeded"),
    Limit.TOKENS: ("tokens", "rate_limit_exceeded"),
    Limit.REQUEST_TOO_LARGE: ("tokens", "rate_limit_exceeded"),
    Limit.CONCURRENCY: ("requests", "concurrency_limit_exceeded"),
    Limit.BUDGET: ("insufficient_quota", "insufficient_quota"),
}
