"""The gateway on the router's HTTP routes: ASGI middleware inside ClientConnectionMiddleware (the
body has been read, within its bound) and outside the routes. For each request it authenticates
the tenant, replays an answer stored under its Idempotency-Key or cached for its exact request,
admits it against the tenant's limits (429 with OpenAI's headers when refused), and meters what
the answer carries: a whole answer's `usage`, or a stream's usage as its chunks pass
(router/gateway/stream_usage.py). The ledger record is durable before the client sees the usage
that it records: before a whole answer's body, before a stream's closing usage chunk. Every
response it admitted carries the tenant's x-ratelimit-* headers. It also serves GET /v1/usage.
A background submission (`"background": true`) is only authenticated and checked against the
tenant's models here: it is admitted and metered when it runs, as a batch line does.

Streams and Idempotency-Key: a stream is stored once it has ended, and a retry gets its events
again, whole, in one response; a duplicate that arrives while the stream runs waits for its end.
A stream the client left before its end is not stored: its tokens were billed, and a retry runs
(and bills) again."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Coroutine
from http import HTTPStatus

from starlette.datastructures import QueryParams
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router.batch.objects import BACKGROUND_FIELD
from router.gateway.admission_gate import start_gated
from router.gateway.gateway import CacheHitBilling, Gateway, Refusal, Ticket, Unauthorized, refusal_of
from router.gateway.idempotency import (
    IdempotencyConflict,
    IdempotencyInFlight,
    InvalidIdempotencyKey,
    Proceed,
    Replay,
)
from router.gateway.ledger import LedgerUnavailable
from router.gateway.limits import LimitsUnavailable
from router.gateway.redis_store import FailureMode, RedisUnavailable
from router.gateway.reservation import prompt_text, reserved_tokens
from router.gateway.response_cache import CACHE_HEADER, cache_key
from router.gateway.stored_response import StoredResponse, UnreadableStoredResponse, body_digest
from router.gateway.stream_usage import StreamOptions, StreamUsage, ask_for_usage
from router.gateway.tenants import Tenant
from router.gateway.usage_record import Endpoint
from router.gateway.usage_report import parse_period, usage_report
from serving.openai_routes import (
    BACKGROUND_PATH,
    BATCHES_PATH,
    CHAT_COMPLETIONS_PATH,
    COMPLETIONS_PATH,
    DETOKENIZE_PATH,
    FILES_PATH,
    OPENAI_PREFIX,
    TOKENIZE_PATH,
)

logger = logging.getLogger(__name__)

USAGE_PATH = "/v1/usage"
IDEMPOTENCY_HEADER = b"idempotency-key"
# On a semantic cache hit: the similarity of the prompt to the one whose answer it got.
SIMILARITY_HEADER = "x-cache-similarity"
REPLAYED_HEADER = "idempotent-replayed"
# The id of the request's usage ledger record, on every response the gateway metered.
REQUEST_ID_HEADER = "x-gateway-request-id"
# The response headers an answer is stored with, to be replayed: the router's own (x-route...).
STORED_HEADER_PREFIX = b"x-route"
# A response larger than this is not stored for replay or the cache.
MAX_STORED_BYTES = 8 << 20
EVENT_STREAM = "text/event-stream"
# The scope entry naming the tenant of a request made in this process (a batch line, by
# router/batch/dispatch.py): only in-process code can set a scope entry, so it cannot be forged by
# a client. The gateway also sets it on the files and batches routes, for them to know the tenant.
TENANT_SCOPE_KEY = "kserve_llm.tenant"
# Routes that only need to know the tenant: no limits, no metering (they generate nothing).
AUTHENTICATED_ONLY_PREFIXES = (FILES_PATH, BATCHES_PATH, BACKGROUND_PATH)


def classify(method: str, path: str, authenticate_predict: bool) -> Endpoint | None:
    """The gateway's view of a route; None: it passes untouched (health, metrics, metadata)."""
    if path == CHAT_COMPLETIONS_PATH and method == "POST":
        return Endpoint.CHAT
    if path == COMPLETIONS_PATH and method == "POST":
        return Endpoint.COMPLETIONS
    if path.startswith(OPENAI_PREFIX + "/") or path in (TOKENIZE_PATH, DETOKENIZE_PATH):
        return Endpoint.OPENAI
    if authenticate_predict and method == "POST":
        if path.startswith("/v1/models/") and path.endswith(":predict"):
            return Endpoint.V1_PREDICT
        if path.startswith("/v2/models/") and path.endswith("/infer"):
            return Endpoint.V2_INFER
    return None


class GatewayMiddleware:
    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == USAGE_PATH:
            await self._usage(scope, receive, send)
            return
        if scope["path"].startswith(AUTHENTICATED_ONLY_PREFIXES):
            await self._authenticated_only(scope, receive, send)
            return
        endpoint = classify(scope["method"], scope["path"], self.gateway.settings.authenticate_predict)
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        await Exchange(self.app, self.gateway, endpoint, scope, receive, send).run()

    async def _authenticated_only(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The files and batches routes: the tenant is named to the route in the scope (401 without
        a valid key); what their batches run is admitted and metered line by line."""
        try:
            tenant = self.gateway.authenticate(_header(scope, b"authorization"))
        except Unauthorized as exc:
            await refusal_of(exc).response(openai=True)(scope, receive, send)
            return
        await self.app({**scope, TENANT_SCOPE_KEY: tenant.name}, receive, send)

    async def _usage(self, scope: Scope, receive: Receive, send: Send) -> None:
        """GET /v1/usage?period=day|...|start_time=&end_time=[&tenant=]: a tenant's token usage by
        model (an admin's key: every tenant's, or the one it names)."""
        try:
            tenant = self.gateway.authenticate(_header(scope, b"authorization"))
            query = QueryParams(scope["query_string"])
            named = query.get("tenant")
            if named is not None and named != tenant.name and not tenant.admin:
                raise PermissionError(f"the key of tenant {tenant.name!r} may only read its own usage")
            start, end = parse_period(query, time.time())
            wanted = named if named is not None else (None if tenant.admin else tenant.name)
            totals = await self.gateway.ledger.totals(wanted, start, end)
            response: Response = JSONResponse(usage_report(totals, start, end))
        except Exception as exc:
            response = _usage_error(exc)
        await response(scope, receive, send)


class Exchange:
    """One request through the gateway."""

    def __init__(self, app: ASGIApp, gateway: Gateway, endpoint: Endpoint, scope: Scope, receive: Receive,
                 send: Send) -> None:
        self.app = app
        self.gateway = gateway
        self.endpoint = endpoint
        self.scope = scope
        self.receive = receive
        self.send = send
        self.openai = endpoint not in (Endpoint.V1_PREDICT, Endpoint.V2_INFER)

    async def run(self) -> None:
        try:
            tenant = self._tenant()
            message = await self.receive()
            body = _json_object(message.get("body", b"")) if self.endpoint.generates else None
            if body is not None:
                self.gateway.check_model(tenant, body.get("model"))
            if body is not None and body.get(BACKGROUND_FIELD) is True:
                await self._submit_background(tenant, message)
                return
            await self._serve(tenant, message, body)
        except Exception as exc:
            refusal = refusal_of(exc) or _client_error(exc)
            if refusal is None:
                raise
            await self._refuse(refusal)

    async def _submit_background(self, tenant: Tenant, message: Message) -> None:
        """A background submission (router/batch/background.py) is only queued here: it is
        admitted and metered when it runs, as a batch line, so it passes as authenticated only."""
        pending = [message]

        async def receive() -> Message:
            return pending.pop() if pending else await self.receive()

        await self.app({**self.scope, TENANT_SCOPE_KEY: tenant.name}, receive, self.send)

    def _tenant(self) -> Tenant:
        """The tenant this process named in the scope (a batch line), or the one whose key the
        request carries."""
        named = self.scope.get(TENANT_SCOPE_KEY)
        if named is not None:
            return self.gateway.named_tenant(named)
        return self.gateway.authenticate(_header(self.scope, b"authorization"))

    async def _serve(self, tenant: Tenant, message: Message, body: dict | None) -> None:
        """The admission and the lookups (a stored answer under the Idempotency-Key, a cached one)
        run at once, their Redis round trips overlapping. Meanwhile the route starts: an OpenAI
        generation validates its body and chooses its target, and waits for the gateway's
        go-ahead before it calls the target (admission_gate.py), so the round trips cost the
        request little of its time to first token. A stored answer gives back the admission's
        tokens; the request's own answer is kept for its key and the caches once the client has
        it."""
        key = self._cache_key(tenant, body)
        semantic = self._semantic_query(tenant, body) if key is not None else None
        reservation = reserved_tokens(self.endpoint is Endpoint.CHAT, body, self.gateway.counter,
                                      self.gateway.settings.unbounded_max_tokens) if body is not None else 0
        # Each of the three sends its Redis command as it is called: the commands leave together,
        # in one write, at the end of this turn of the event loop, before the route's own work
        # starts, and their answers come back while the route works. The claim goes first: a bad
        # Idempotency-Key is refused before anything is taken.
        claiming = asyncio.ensure_future(self._begin_idempotent(tenant, message, body))
        caching = asyncio.ensure_future(self._cached(key, semantic))
        admitting = self.gateway.start_admission(tenant, reservation)
        streams = body is not None and body.get("stream") is True
        relay = Relay(self.send, StreamOptions.of(body) if streams else None)
        route = self._start_route(relay, _with_body(message, ask_for_usage(body)) if streams else message)
        admission = None
        try:
            admission = await self.gateway.admission(admitting)
            claim = await claiming
            cached, marker = await caching
        except BaseException:
            route.cancel()
            if admission is not None:
                # Admitted, but a lookup failed or the client left: give the admission back (one
                # cancelled before its end is given back by Gateway.admission).
                self.gateway.later(self.gateway.limiter.settle(admission, 0))
            self._undo(claiming, caching)
            raise
        ticket = self.gateway.ticket(admission, self.endpoint, self._model(body))
        if isinstance(claim, Replay):
            proceed, stored, marker = None, claim.response, {REPLAYED_HEADER: "true"}
        else:
            proceed, stored = claim, cached
        if stored is not None:
            route.cancel()
            await self._answer_stored(ticket, stored, marker)
            if REPLAYED_HEADER not in marker:
                self.gateway.later(self._keep(proceed, None, None, stored))
            return
        relay.admit(ticket, {CACHE_HEADER: "miss"} if key else {})
        try:
            answer = await self._forward(ticket, relay, route)
        except BaseException:
            self.gateway.later(self._abandon(proceed))
            raise
        self.gateway.later(self._keep(proceed, key, semantic, answer))

    def _undo(self, claiming: asyncio.Future, caching: asyncio.Future) -> None:
        """The request goes no further: its lookups stop. A claim still waiting for another
        request's answer is cancelled; one that got its key frees it."""
        claiming.add_done_callback(lambda done: _succeeded(done) and self.gateway.later(self._abandon(done.result())))
        caching.add_done_callback(_retrieve_exception)
        claiming.cancel()
        caching.cancel()

    async def _keep(self, proceed: Proceed | None, key: str | None, semantic: tuple[str, str] | None,
                    answer: StoredResponse | None) -> None:
        """Store an answer for its Idempotency-Key (below 500: a client error is deterministic too)
        and, a 200, for the caches; an answer that did not end, or failed, frees the key."""
        if answer is None or answer.status >= HTTPStatus.INTERNAL_SERVER_ERROR:
            await self._abandon(proceed)
            return
        await self._complete(proceed, answer)
        if key is not None and answer.status == HTTPStatus.OK:
            await self._cache_put(key, semantic, answer)

    # Forwarding and metering -----------------------------------------------------------

    def _start_route(self, relay: Relay, message: Message) -> asyncio.Task:
        """The route, as a task that sends through `relay` (which holds what it sends until the
        request is admitted). An OpenAI generation starts at once and waits for the go-ahead
        before it calls its target; any other route starts once admitted (a KServe predict
        counts its decision as it makes it)."""
        pending = [message]

        async def receive() -> Message:
            return pending.pop() if pending else await self.receive()

        route = self.app(self.scope, receive, relay.send)
        if self.endpoint.generates:
            task = start_gated(route, relay.admitted)
        else:
            task = asyncio.ensure_future(_after(relay.admitted, route))
        # A route cancelled before its admission may have failed first: its exception is not news.
        task.add_done_callback(_retrieve_exception)
        return task

    async def _forward(self, ticket: Ticket, relay: Relay, route: asyncio.Task) -> StoredResponse | None:
        """Let the admitted route go on, metering its answer; the answer as stored (None if it did
        not end, or was too large to store)."""
        outcome = "failed"
        holding = ticket.hold_slot()
        try:
            await route
            outcome = relay.outcome()
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            if holding is not None:
                holding.cancel()
            # Shielded: a client that leaves cancels this task, and what it used is still billed.
            await asyncio.shield(ticket.finish(outcome))
        return relay.stored()

    def _model(self, body: dict | None) -> str:
        if body is not None and isinstance(body.get("model"), str):
            return body["model"]
        path = self.scope["path"]
        return path.split("/")[3].split(":")[0] if self.endpoint in (Endpoint.V1_PREDICT, Endpoint.V2_INFER) else "-"

    # Idempotency and the cache ---------------------------------------------------------

    def _begin_idempotent(self, tenant: Tenant, message: Message,
                          body: dict | None) -> Awaitable[Proceed | Replay | None]:
        """The claim of the request's Idempotency-Key (None without one), sent before this returns;
        InvalidIdempotencyKey at once. The body's digest is of its JSON (`body`, parsed already) or
        of its bytes."""
        key = _header(self.scope, IDEMPOTENCY_HEADER)
        store = self.gateway.idempotency
        if key is None or store is None:
            return _resolved(None)
        digest = body_digest(body if body is not None else message.get("body", b""))
        return self._claimed(store.begin(tenant.name, key, digest, self.gateway.settings.idempotency_wait_seconds))

    async def _claimed(self, beginning: Awaitable[Proceed | Replay]) -> Proceed | Replay | None:
        try:
            return await beginning
        except RedisUnavailable:
            self._fail_open_or_closed("idempotency")
            return None

    async def _complete(self, proceed: Proceed | None, response: StoredResponse) -> None:
        if isinstance(proceed, Proceed):
            try:
                await self.gateway.idempotency.complete(proceed, response)
            except RedisUnavailable:
                logger.warning("an idempotent answer could not be stored: Redis is unavailable")

    async def _abandon(self, proceed: Proceed | None) -> None:
        if isinstance(proceed, Proceed):
            try:
                await self.gateway.idempotency.abandon(proceed)
            except RedisUnavailable:
                logger.warning("an idempotency key could not be freed: Redis is unavailable (it expires)")

    def _cache_key(self, tenant: Tenant, body: dict | None) -> str | None:
        """The request's exact-cache key; None when no cache is on or the request is not
        deterministic (temperature 0, or a seed)."""
        if (self.gateway.cache is None and self.gateway.semantic_cache is None) or body is None:
            return None
        return cache_key(tenant.name, self.endpoint.value, body)

    def _semantic_query(self, tenant: Tenant, body: dict) -> tuple[str, str] | None:
        """(scope, text) of the semantic cache: the request's key without its prompt (so that every
        other field must match exactly), and the prompt's text."""
        text = prompt_text(self.endpoint is Endpoint.CHAT, body)
        if self.gateway.semantic_cache is None or text is None:
            return None
        scope = cache_key(tenant.name, self.endpoint.value, {**body, "prompt": None, "messages": None})
        return None if scope is None else (scope, text)

    def _cached(self, key: str | None,
                semantic: tuple[str, str] | None) -> Awaitable[tuple[StoredResponse | None, dict]]:
        """The stored answer to this request, or to a near duplicate of it, and the headers that
        say which; a miss when a cache cannot be reached (or 503, failing closed). The exact
        lookup is sent before this returns."""
        if key is None:
            return _resolved((None, {}))
        exact = self.gateway.cache.get(key) if self.gateway.cache is not None else None
        return self._looked_up(exact, semantic)

    async def _looked_up(self, exact: Awaitable[StoredResponse | None] | None,
                         semantic: tuple[str, str] | None) -> tuple[StoredResponse | None, dict]:
        try:
            if exact is not None and (hit := await exact) is not None:
                return hit, {CACHE_HEADER: "hit"}
            if semantic is not None and (near := await self.gateway.semantic_cache.lookup(*semantic)) is not None:
                return StoredResponse.from_bytes(near.value), {CACHE_HEADER: "hit",
                                                               SIMILARITY_HEADER: f"{near.similarity:.4f}"}
        except RedisUnavailable:
            self._fail_open_or_closed("the response cache")
        except UnreadableStoredResponse:
            pass  # written by another version of the router: a miss, overwritten by this answer
        return None, {}

    async def _cache_put(self, key: str, semantic: tuple[str, str] | None, stored: StoredResponse) -> None:
        try:
            if self.gateway.cache is not None:
                await self.gateway.cache.put(key, stored)
            if semantic is not None:
                await self.gateway.semantic_cache.store(*semantic, stored.to_bytes())
        except RedisUnavailable:
            pass  # counted and logged by the store; the next request simply misses

    def _fail_open_or_closed(self, what: str) -> None:
        if self.gateway.settings.failure_mode is FailureMode.CLOSED:
            raise LimitsUnavailable(f"{what} cannot be reached (Redis) and the gateway fails closed; retry later")

    async def _answer_stored(self, ticket: Ticket, stored: StoredResponse, marker: dict[str, str]) -> None:
        """A stored answer: an idempotent replay is never billed again, a cache hit as the gateway
        is configured; either way its admission is settled before the client has it."""
        if REPLAYED_HEADER in marker:
            await ticket.release()
        else:
            ticket.meter.observe(*self._hit_usage(stored), model=_answer_model(stored))
            await ticket.finish("cache_hit")
            marker = {**marker, REQUEST_ID_HEADER: ticket.meter.request_id}
        headers = {**stored.headers, **ticket.headers(), **marker}
        response = Response(stored.body, status_code=stored.status, media_type=stored.content_type, headers=headers)
        await response(self.scope, self.receive, self.send)

    def _hit_usage(self, stored: StoredResponse) -> tuple[int, int]:
        billing = self.gateway.settings.cache_hit_billing
        if billing is CacheHitBilling.FULL:
            return stored.prompt_tokens, stored.completion_tokens
        return (stored.prompt_tokens, 0) if billing is CacheHitBilling.PROMPT else (0, 0)

    async def _refuse(self, refusal: Refusal) -> None:
        await refusal.response(self.openai)(self.scope, self.receive, self.send)


class Relay:
    """The route's response on its way to the client, once the request is admitted (what the
    route sends before then waits): the gateway's headers added, its usage metered (and
    committed to the ledger before the client sees it), its bytes kept for storing."""

    def __init__(self, send: Send, stream_options: StreamOptions | None) -> None:
        self._send = send
        self.stream_options = stream_options
        self.admitted = asyncio.Event()
        self.ticket: Ticket | None = None
        self.added_headers: list[tuple[bytes, bytes]] = []
        self.usage: StreamUsage | None = None
        self.status: int | None = None
        self.content_type: str | None = None
        self.response_headers: dict[str, str] = {}
        self.chunks: list[bytes] | None = []
        self.size = 0
        self.ended = False

    def admit(self, ticket: Ticket, extra_headers: dict[str, str]) -> None:
        """The request is admitted: its route may go on, and its answer to the client."""
        self.ticket = ticket
        headers = {**ticket.headers(), **extra_headers, REQUEST_ID_HEADER: ticket.meter.request_id}
        self.added_headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
        self.admitted.set()

    async def send(self, message: Message) -> None:
        if not self.admitted.is_set():
            await self.admitted.wait()
        if message["type"] == "http.response.start":
            message = self._start(message)
        elif message["type"] == "http.response.body":
            message = await self._body(message)
        await self._send(message)

    def _start(self, message: Message) -> Message:
        """The route's headers, less any the gateway sets, then the gateway's: one pass, which also
        reads the content type and the headers to store."""
        self.status = message["status"]
        replaced = {name for name, _ in self.added_headers}
        raw = []
        for name, value in message.get("headers", []):
            if name in replaced:
                continue
            raw.append((name, value))
            if name == b"content-type":
                self.content_type = value.decode("latin-1")
            elif name.startswith(STORED_HEADER_PREFIX):
                self.response_headers[name.decode("latin-1")] = value.decode("latin-1")
        raw.extend(self.added_headers)
        if self.stream_options is not None and (self.content_type or "").startswith(EVENT_STREAM):
            self.usage = StreamUsage(self.stream_options, self.ticket.meter.observe)
        return {**message, "headers": raw}

    async def _body(self, message: Message) -> Message:
        chunk = message.get("body", b"")
        more = message.get("more_body", False)
        if self.usage is not None:
            chunk = self.usage.feed(chunk)
            if self.usage.final:
                # The closing usage chunk (or the end): billed and settled before the client has it.
                await self.ticket.finish("failed" if self.usage.failed else "ok")
        self._keep(chunk)
        if not more:
            self.ended = True
            if self.usage is None:
                self._meter_whole_answer()
                await self.ticket.finish(self.outcome())
        return {**message, "body": chunk}

    def _meter_whole_answer(self) -> None:
        answer = _json_object(b"".join(self.chunks)) if self.status == HTTPStatus.OK else None
        if answer is not None and isinstance(answer.get("usage"), dict):
            self.ticket.meter.observe_usage(answer["usage"], answer.get("model"))

    def _keep(self, chunk: bytes) -> None:
        if self.chunks is None:
            return
        self.size += len(chunk)
        self.chunks.append(chunk)
        # A whole answer is kept to its end however large, for its usage is read from its bytes
        # (the route holds all of them anyway); a stream's usage is read as it passes.
        if self.size > MAX_STORED_BYTES and self.usage is not None:
            self.chunks = None

    def outcome(self) -> str:
        if not self.ended:
            return "cancelled"
        if self.status is None or self.status >= HTTPStatus.INTERNAL_SERVER_ERROR or (self.usage and self.usage.failed):
            return "failed"
        return "refused" if self.status >= HTTPStatus.BAD_REQUEST else "ok"

    def stored(self) -> StoredResponse | None:
        """The answer to store for replay and the cache; None for one cut short, too large, or
        failed (a stream's error event comes under a 200: a retry must run again, not replay it)."""
        if not self.ended or self.chunks is None or self.size > MAX_STORED_BYTES or self.outcome() == "failed":
            return None
        meter = self.ticket.meter
        return StoredResponse(self.status, self.content_type, b"".join(self.chunks), self.response_headers,
                              meter.prompt_tokens, meter.completion_tokens)


async def _after(event: asyncio.Event, work: Coroutine[object, object, None]) -> None:
    try:
        await event.wait()
    except BaseException:
        work.close()  # never started: refused, or answered from the store
        raise
    await work


async def _resolved(value: object) -> object:
    return value


def _retrieve_exception(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()


def _succeeded(done: asyncio.Future) -> bool:
    return not done.cancelled() and done.exception() is None


def _with_body(message: Message, body: dict) -> Message:
    return {**message, "body": json.dumps(body).encode()}


def _json_object(data: bytes) -> dict | None:
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


_MODEL_FIELD = re.compile(rb'"model":\s*"([^"\\]{1,200})"')


def _answer_model(stored: StoredResponse) -> str | None:
    """The model that wrote a stored answer (a whole answer's or a stream's first `model`)."""
    match = _MODEL_FIELD.search(stored.body)
    return match.group(1).decode() if match else None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _client_error(exc: Exception) -> Refusal | None:
    """The client's own mistakes with the gateway's headers and keys: 400 or 409."""
    if isinstance(exc, InvalidIdempotencyKey):
        return Refusal(HTTPStatus.BAD_REQUEST, str(exc), "invalid_request_error", "invalid_idempotency_key", {})
    if isinstance(exc, IdempotencyConflict):
        return Refusal(HTTPStatus.CONFLICT, str(exc), "invalid_request_error", "idempotency_key_reused", {})
    if isinstance(exc, IdempotencyInFlight):
        return Refusal(HTTPStatus.CONFLICT, str(exc), "invalid_request_error", "idempotency_key_in_flight",
                       {"retry-after": "1"})
    return None


def _usage_error(exc: Exception) -> Response:
    refusal = refusal_of(exc)
    if refusal is None:
        if isinstance(exc, ValueError):
            refusal = Refusal(HTTPStatus.BAD_REQUEST, str(exc), "invalid_request_error", None, {})
        elif isinstance(exc, PermissionError):
            refusal = Refusal(HTTPStatus.FORBIDDEN, str(exc), "permission_error", None, {})
        elif isinstance(exc, LedgerUnavailable):
            refusal = Refusal(HTTPStatus.SERVICE_UNAVAILABLE, f"the usage ledger cannot be read now: {exc}",
                              "server_error", None, {"retry-after": "1"}, 1.0)
        else:
            raise exc
    return refusal.response(openai=True)

