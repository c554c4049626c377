"""The gateway's middleware in process, in front of a fake app with OpenAI's and KServe's routes,
stacked as the router stacks it (inside ClientConnectionMiddleware), with real stores in memory or
in a real Redis: what a cache hit bills, the semantic cache end to end, a Redis that cannot be
reached (open and closed), the KServe routes' refusals in KServe's shape, GET /v1/usage, a client
that leaves mid-stream, a stream that fails part-way, an answer too large to store, and a body
that is not JSON."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message

from router.features import TokenCounter
from router.gateway.admission_gate import admitted
from router.gateway.gateway import CacheHitBilling, Gateway, GatewaySettings
from router.gateway.idempotency import MemoryIdempotencyStore, RedisIdempotencyStore
from router.gateway.ledger import SQLiteLedger, open_ledger
from router.gateway.limits import MemoryLimiter, RedisLimiter
from router.gateway.middleware import MAX_STORED_BYTES, GatewayMiddleware
from router.gateway.redis_store import FailureMode, RedisStore
from router.gateway.response_cache import MemoryResponseCache, RedisResponseCache
from router.gateway.semantic_cache import MemorySemanticCache
from router.gateway.tenants import Tenants
from serving.middleware import ClientConnectionMiddleware
from serving.sse import DONE_EVENT, encode_event
from tests.servers import free_port

CHAT = "/openai/v1/chat/completions"
COMPLETIONS = "/openai/v1/completions"
V1_PREDICT = "/v1/models/router:predict"
V2_INFER = "/v2/models/router/infer"
USAGE = "/v1/usage"
MODEL = "llm-small"
PROMPT_TOKENS = 7
COMPLETION_TOKENS = 3
MAX_BODY_BYTES = 1 << 20
# A request the gateway answers, or refuses, well within this; one that hangs fails the test.
ANSWER_SECONDS = 2.0
KEYS = {name: f"sk-{name}-0123" for name in ("acme", "other", "admin", "rated", "single", "metered")}
POLICIES = {
    "acme": {},
    "other": {},
    "admin": {"admin": True},
    "rated": {"requests_per_minute": 1},
    "single": {"max_concurrent": 1},
    "metered": {"tokens_per_minute": 1000},
}
DEFAULT_SETTINGS = GatewaySettings()
RATE_LIMIT_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests")


# The fake app ------------------------------------------------------------------------------


@dataclass
class FakeModel:
    """Canned answers on the routes the gateway watches. Each answer says which call made it
    (`answer 1`, ...), so a replayed answer is told from a fresh one. While `hang_after_chunks`
    is set, a stream sends that many chunks and then never ends; while `fail_after_chunks` is,
    it ends after that many with an error event, as a target that fails part-way does."""

    calls: int = 0
    # Generations whose route started (it may be waiting for the gateway's go-ahead).
    started: int = 0
    hang_after_chunks: int | None = None
    fail_after_chunks: int | None = None
    padding_bytes: int = 0
    app: Starlette = field(init=False)

    def __post_init__(self) -> None:
        self.app = Starlette(routes=[
            Route(CHAT, self.generate, methods=["POST"]),
            Route(COMPLETIONS, self.generate, methods=["POST"]),
            Route(V1_PREDICT, self.predict, methods=["POST"]),
            Route(V2_INFER, self.infer, methods=["POST"]),
        ])

    async def generate(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return JSONResponse({"error": {"message": "the body is not JSON", "type": "invalid_request_error"}},
                                status_code=400)
        self.started += 1
        # As the router's OpenAI edge does: nothing goes to a model before the gateway's go-ahead.
        await admitted()
        self.calls += 1
        text = f"answer {self.calls}" + " " * self.padding_bytes
        if body.get("stream") is True:
            return StreamingResponse(self._events(text, body.get("stream_options") or {}),
                                     media_type="text/event-stream")
        return JSONResponse({"id": f"cmpl-{self.calls}", "object": "chat.completion", "model": MODEL,
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                          "finish_reason": "stop"}],
                             "usage": usage(COMPLETION_TOKENS)})

    async def _events(self, text: str, options: dict) -> AsyncIterator[bytes]:
        continuous = options.get("continuous_usage_stats") is True
        for generated in range(1, COMPLETION_TOKENS + 1):
            if generated - 1 == self.hang_after_chunks:
                await asyncio.Event().wait()
            if generated - 1 == self.fail_after_chunks:
                yield encode_event({"error": {"message": "the target failed", "type": "server_error", "code": 500}})
                yield DONE_EVENT
                return
            chunk = {"object": "chat.completion.chunk", "model": MODEL,
                     "choices": [{"index": 0, "delta": {"content": f"{text}[{generated}]"}}]}
            yield encode_event({**chunk, "usage": usage(generated)} if continuous else chunk)
        if options.get("include_usage") is True:
            yield encode_event({"object": "chat.completion.chunk", "model": MODEL, "choices": [],
                                "usage": usage(COMPLETION_TOKENS)})
        yield DONE_EVENT

    async def predict(self, request: Request) -> Response:
        self.calls += 1
        return JSONResponse({"predictions": [1]})

    async def infer(self, request: Request) -> Response:
        self.calls += 1
        return JSONResponse({"model_name": "router", "outputs": [{"name": "output-0", "shape": [1],
                                                                  "datatype": "INT64", "data": [1]}]})


def usage(completion_tokens: int) -> dict:
    return {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion_tokens,
            "total_tokens": PROMPT_TOKENS + completion_tokens}


# The gateway -------------------------------------------------------------------------------


def write_tenants(path: Path) -> Path:
    tenants = [{"name": name, "keys_sha256": [hashlib.sha256(KEYS[name].encode()).hexdigest()], **policy}
               for name, policy in POLICIES.items()]
    path.write_text(yaml.safe_dump({"tenants": tenants}, sort_keys=False))
    return path


def bearer(tenant: str) -> dict[str, str]:
    return {"authorization": f"Bearer {KEYS[tenant]}"}


def chat(content: str = "Hi", **fields) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 5,
            "temperature": 0, **fields}


@dataclass
class Stack:
    """The fake app behind the gateway, as the router stacks them, and a client of it."""

    model: FakeModel
    gateway: Gateway
    asgi: ASGIApp
    client: httpx.AsyncClient
    ledger_path: Path

    def ledger_rows(self) -> list[tuple]:
        """(tenant, endpoint, outcome, prompt_tokens, completion_tokens) of each record, in order."""
        return [row[1:] for row in self._ledger("tenant, endpoint, outcome, prompt_tokens, completion_tokens")]

    def ledger_request_ids(self) -> list[str]:
        return [row[1] for row in self._ledger("request_id")]

    def _ledger(self, columns: str) -> list[tuple]:
        with sqlite3.connect(self.ledger_path) as connection:
            return connection.execute(f"SELECT position, {columns} FROM usage ORDER BY position").fetchall()

    async def post(self, path: str, body: dict | bytes, tenant: str | None = "acme",
                   **headers: str) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        request_headers = {**(bearer(tenant) if tenant else {}), "content-type": "application/json", **headers}
        async with asyncio.timeout(ANSWER_SECONDS):
            return await self.client.post(path, content=content, headers=request_headers)


@asynccontextmanager
async def stack(tmp_path: Path, settings: GatewaySettings = DEFAULT_SETTINGS, *, cache: bool = False,
                semantic_cache: MemorySemanticCache | None = None,
                stores: Callable[[Path], tuple] | None = None) -> AsyncIterator[Stack]:
    """The stack with the tenants of POLICIES and in-memory stores (or those `stores` builds
    from the ledger's path: limiter, ledger, idempotency, cache, RedisStore)."""
    ledger_path = tmp_path / "usage.sqlite3"
    if stores is None:
        limiter, ledger, idempotency = MemoryLimiter(), SQLiteLedger(ledger_path), MemoryIdempotencyStore()
        response_cache, redis = (MemoryResponseCache() if cache else None), None
    else:
        limiter, ledger, idempotency, response_cache, redis = stores(ledger_path)
    tenants = Tenants.from_file(write_tenants(tmp_path / "tenants.yaml"))
    gateway = Gateway(tenants, limiter, ledger, TokenCounter(), settings, idempotency, response_cache,
                      semantic_cache, redis)
    model = FakeModel()
    asgi = ClientConnectionMiddleware(GatewayMiddleware(model.app, gateway), max_body_bytes=MAX_BODY_BYTES)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(asgi), base_url="http://router") as client:
        try:
            yield Stack(model, gateway, asgi, client, ledger_path)
        finally:
            await gateway.close()


def redis_stores(url: str, prefix: str) -> Callable[[Path], tuple]:
    """Limits, idempotency and the cache in a live Redis under `prefix`; the ledger in SQLite,
    where the test reads it."""
    def build(ledger_path: Path) -> tuple:
        redis = RedisStore(url, prefix=prefix)
        # Closed: a Redis call that failed shows as a 503, never as a request let through unmetered.
        return (RedisLimiter(redis, FailureMode.CLOSED), SQLiteLedger(ledger_path), RedisIdempotencyStore(redis),
                RedisResponseCache(redis), redis)
    return build


@pytest.fixture
def stores(backend) -> Callable[[Path], tuple] | None:
    """The gateway's stores: in memory (None: `stack`'s own), or in the session's redis-server."""
    return None if backend.redis_url is None else redis_stores(backend.redis_url, backend.prefix)


def openai_error(response: httpx.Response) -> dict:
    error = response.json()["error"]
    assert isinstance(error, dict) and {"message", "type", "code"} <= error.keys(), response.text
    return error


# 0. The route starts while the gateway admits ----------------------------------------------


class HeldLimiter(MemoryLimiter):
    """Admits nothing until `release` is set: a Redis round trip that takes its time."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def admit(self, tenant, reservation):
        await self.release.wait()
        return await super().admit(tenant, reservation)


async def test_a_generation_starts_while_it_is_admitted_and_reaches_the_model_once_admitted(tmp_path):
    async with stack(tmp_path) as edge:
        held = HeldLimiter()
        edge.gateway.limiter = held
        answer = asyncio.ensure_future(edge.post(CHAT, chat()))
        async with asyncio.timeout(ANSWER_SECONDS):
            while edge.model.started == 0:
                await asyncio.sleep(0.001)
        await asyncio.sleep(0.05)
        assert (edge.model.started, edge.model.calls, answer.done()) == (1, 0, False)
        held.release.set()
        response = await answer
        assert response.status_code == 200, response.text
        assert edge.model.calls == 1
        assert "x-ratelimit-limit-requests" not in response.headers  # acme has no limits


async def test_a_refused_generation_never_reaches_the_model(tmp_path):
    async with stack(tmp_path) as edge:
        first = await edge.post(CHAT, chat(), "rated")
        refused = await edge.post(CHAT, {**chat(), "stream": True}, "rated")
        await asyncio.sleep(0.05)
        assert (first.status_code, refused.status_code) == (200, 429)
        assert refused.headers["retry-after"] and openai_error(refused)["code"] == "rate_limit_exceeded"
        # The refused one's route started, waited for the go-ahead, and was cancelled.
        assert (edge.model.started, edge.model.calls) == (2, 1)
        assert [row[2] for row in edge.ledger_rows()] == ["ok"]


# 1. What a cache hit bills ------------------------------------------------------------------


@pytest.mark.parametrize(("billing", "billed"), [
    (CacheHitBilling.NONE, (0, 0)),
    (CacheHitBilling.PROMPT, (PROMPT_TOKENS, 0)),
    (CacheHitBilling.FULL, (PROMPT_TOKENS, COMPLETION_TOKENS)),
])
async def test_a_cache_hit_replays_the_answer_and_bills_as_configured(tmp_path, stores, billing, billed):
    async with stack(tmp_path, GatewaySettings(cache_hit_billing=billing), cache=True, stores=stores) as edge:
        first = await edge.post(CHAT, chat())
        await edge.gateway.settled()  # the answer is cached once the client has it
        again = await edge.post(CHAT, chat())

        assert (first.status_code, first.headers["x-cache"]) == (200, "miss")
        assert (again.status_code, again.headers["x-cache"]) == (200, "hit")
        assert again.json() == first.json()
        assert edge.model.calls == 1
        assert edge.ledger_rows() == [("acme", "chat.completions", "ok", PROMPT_TOKENS, COMPLETION_TOKENS),
                                      ("acme", "chat.completions", "cache_hit", *billed)]
        # Each answer names its own ledger record, the hit's too: a client can match its bill.
        assert [first.headers["x-gateway-request-id"], again.headers.get("x-gateway-request-id")] == \
            edge.ledger_request_ids()


async def test_a_sampled_request_bypasses_the_cache(tmp_path):
    async with stack(tmp_path, cache=True) as edge:
        answers = [await edge.post(CHAT, chat(temperature=0.7)) for _ in range(2)]

        assert [answer.status_code for answer in answers] == [200, 200]
        assert all("x-cache" not in answer.headers for answer in answers)
        assert edge.model.calls == 2


async def test_an_answer_too_large_to_store_is_still_billed_its_usage(tmp_path):
    async with stack(tmp_path) as edge:
        edge.model.padding_bytes = MAX_STORED_BYTES
        answers = [await edge.post(CHAT, chat(), **{"idempotency-key": "retry-1"}) for _ in range(2)]

        assert [answer.status_code for answer in answers] == [200, 200]
        assert answers[0].json()["choices"][0]["message"]["content"].startswith("answer 1")
        # Not stored, so the retry runs again; each run billed what it used.
        assert answers[1].json()["choices"][0]["message"]["content"].startswith("answer 2")
        assert edge.ledger_rows() == 2 * [("acme", "chat.completions", "ok", PROMPT_TOKENS, COMPLETION_TOKENS)]


# 2. The semantic cache ------------------------------------------------------------------------


@pytest.fixture
async def semantic_edge(tmp_path, embedder) -> AsyncIterator[Stack]:
    async with stack(tmp_path, cache=True, semantic_cache=MemorySemanticCache(embedder)) as edge:
        yield edge


async def semantic_post(edge: Stack, body: dict) -> httpx.Response:
    """Posted with time for the prompt's embedding, which the first lookup may wait for."""
    async with asyncio.timeout(30):
        return await edge.client.post(CHAT, json=body, headers=bearer("acme"))


async def test_a_reworded_chat_gets_the_first_ones_answer(semantic_edge):
    first = await semantic_post(semantic_edge, chat("How do I reverse a list in Python?"))
    reworded = await semantic_post(semantic_edge, chat("How can I reverse a list in Python?"))

    assert first.headers["x-cache"] == "miss"
    assert reworded.headers["x-cache"] == "hit"
    assert 0.9 < float(reworded.headers["x-cache-similarity"]) < 1
    assert reworded.json() == first.json()
    assert semantic_edge.model.calls == 1


@pytest.mark.parametrize("second", [chat("What is 12 + 31?"), chat("What is 12 + 30?", max_tokens=50)],
                         ids=["another-number", "another-max-tokens"])
async def test_a_near_duplicate_that_asks_for_something_else_misses(semantic_edge, second):
    first = await semantic_post(semantic_edge, chat("What is 12 + 30?"))
    other = await semantic_post(semantic_edge, second)

    assert (first.headers["x-cache"], other.headers["x-cache"]) == ("miss", "miss")
    assert "x-cache-similarity" not in other.headers
    assert other.json() != first.json()
    assert semantic_edge.model.calls == 2


# 3. Redis cannot be reached -------------------------------------------------------------------


def dead_redis_stores(failure_mode: FailureMode) -> Callable[[Path], tuple]:
    """Every store in a Redis on a port where nothing listens, each call bounded to 0.2 s."""
    def build(ledger_path: Path) -> tuple:
        redis = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout_seconds=0.2)
        return (RedisLimiter(redis, failure_mode), open_ledger(ledger_path, redis), RedisIdempotencyStore(redis),
                RedisResponseCache(redis), redis)
    return build


async def test_a_redis_that_is_down_fails_open_unmetered_without_idempotency_or_cache(tmp_path):
    async with stack(tmp_path, stores=dead_redis_stores(FailureMode.OPEN)) as edge:
        started = time.monotonic()
        answers = [await edge.post(CHAT, chat(), "rated", **{"idempotency-key": "retry-1"}) for _ in range(2)]

        assert time.monotonic() - started < 2 * ANSWER_SECONDS
        assert [answer.status_code for answer in answers] == [200, 200]
        # "rated" may send one request a minute: unmetered, both went through, and both ran.
        assert all("x-ratelimit-limit-requests" not in answer.headers for answer in answers)
        assert all(answer.headers["x-cache"] == "miss" for answer in answers)
        assert "idempotent-replayed" not in answers[1].headers
        assert answers[0].json() != answers[1].json()
        assert edge.model.calls == 2
        # Billed all the same: the ledger spools what Redis cannot take.
        assert edge.ledger_rows() == 2 * [("rated", "chat.completions", "ok", PROMPT_TOKENS, COMPLETION_TOKENS)]


@pytest.mark.parametrize("headers", [{}, {"idempotency-key": "retry-1"}], ids=["plain", "idempotent"])
async def test_a_redis_that_is_down_fails_closed_with_503_in_openais_shape(tmp_path, headers):
    async with stack(tmp_path, GatewaySettings(failure_mode=FailureMode.CLOSED),
                     stores=dead_redis_stores(FailureMode.CLOSED)) as edge:
        refused = await edge.post(CHAT, chat(), **headers)

        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert openai_error(refused)["type"] == "server_error"
        assert "Redis" in openai_error(refused)["message"]
        assert edge.model.calls == 0


# 4. KServe's routes -----------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "endpoint"), [(V1_PREDICT, "v1.predict"), (V2_INFER, "v2.infer")])
async def test_a_kserve_route_needs_a_key_and_is_metered_with_no_tokens(tmp_path, path, endpoint):
    body = {"instances": [[1]]} if path == V1_PREDICT else {"inputs": []}
    async with stack(tmp_path) as edge:
        anonymous = await edge.post(path, body, tenant=None)
        keyed = await edge.post(path, body)

        assert anonymous.status_code == 401
        assert set(anonymous.json()) == {"error"} and "API key" in anonymous.json()["error"]
        assert keyed.status_code == 200
        assert edge.ledger_rows() == [("acme", endpoint, "ok", 0, 0)]


@pytest.mark.parametrize("path", [V1_PREDICT, V2_INFER])
async def test_a_kserve_route_past_the_request_limit_is_429_in_kserves_shape(tmp_path, path):
    async with stack(tmp_path) as edge:
        admitted = await edge.post(path, {"inputs": []}, "rated")
        refused = await edge.post(path, {"inputs": []}, "rated")

        assert admitted.status_code == 200
        assert admitted.headers["x-ratelimit-limit-requests"] == "1"
        assert refused.status_code == 429
        assert set(refused.json()) == {"error"} and "requests per min" in refused.json()["error"]
        assert int(refused.headers["retry-after"]) >= 1
        assert all(name in refused.headers for name in RATE_LIMIT_HEADERS)
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert edge.model.calls == 1


# 5. GET /v1/usage ---------------------------------------------------------------------------------


async def get_usage(edge: Stack, caller: str | None, **query: str) -> httpx.Response:
    async with asyncio.timeout(ANSWER_SECONDS):
        return await edge.client.get(USAGE, params=query, headers=bearer(caller) if caller else {})


async def test_usage_is_refused_to_the_wrong_caller_and_a_bad_period(tmp_path):
    async with stack(tmp_path) as edge:
        anonymous = await get_usage(edge, None)
        someone_elses = await get_usage(edge, "acme", tenant="other")
        bad_period = await get_usage(edge, "acme", period="fortnight")

        assert anonymous.status_code == 401
        assert openai_error(anonymous)["code"] == "invalid_api_key"
        assert someone_elses.status_code == 403
        assert openai_error(someone_elses)["type"] == "permission_error"
        assert bad_period.status_code == 400
        assert "fortnight" in openai_error(bad_period)["message"]


async def test_usage_is_503_while_the_ledger_cannot_be_read(tmp_path):
    async with stack(tmp_path, stores=dead_redis_stores(FailureMode.OPEN)) as edge:
        unreadable = await get_usage(edge, "acme")

        assert unreadable.status_code == 503
        assert unreadable.headers["retry-after"] == "1"
        assert "ledger" in openai_error(unreadable)["message"]


async def test_usage_shows_a_tenant_its_own_and_an_admin_everyones(tmp_path):
    async with stack(tmp_path) as edge:
        await edge.post(CHAT, chat(), "acme")
        await edge.post(CHAT, chat(), "other")
        await edge.post(CHAT, chat(), "other")

        own = (await get_usage(edge, "other")).json()
        everyone = (await get_usage(edge, "admin")).json()
        named = (await get_usage(edge, "admin", tenant="acme")).json()

        assert [(row["tenant"], row["requests"]) for row in own["data"]] == [("other", 2)]
        assert [(row["tenant"], row["requests"]) for row in everyone["data"]] == [("acme", 1), ("other", 2)]
        assert everyone["total"]["total_tokens"] == 3 * (PROMPT_TOKENS + COMPLETION_TOKENS)
        assert [row["tenant"] for row in named["data"]] == ["acme"]


# 6. A client that leaves mid-stream -------------------------------------------------------------


async def leave_mid_stream(edge: Stack, body: dict, tenant: str, events_seen: int, **headers: str) -> bytes:
    """POSTs a stream straight into the ASGI stack and disconnects once `events_seen` events
    have come; what the client got."""
    left = asyncio.Event()
    received: list[bytes] = []
    request_sent = False

    async def receive() -> Message:
        nonlocal request_sent
        if not request_sent:
            request_sent = True
            return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            received.append(message.get("body", b""))
            if b"".join(received).count(b"data: ") >= events_seen:
                left.set()

    raw_headers = [(name.encode(), value.encode()) for name, value in {**bearer(tenant), **headers}.items()]
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": CHAT, "raw_path": CHAT.encode(), "query_string": b"",
             "root_path": "", "headers": raw_headers, "client": ("127.0.0.1", 1), "server": ("router", 80)}
    async with asyncio.timeout(ANSWER_SECONDS):
        await edge.asgi(scope, receive, send)
    return b"".join(received)


async def test_a_stream_left_mid_way_bills_what_it_delivered_and_frees_its_slot(tmp_path, stores):
    async with stack(tmp_path, stores=stores) as edge:
        edge.model.hang_after_chunks = 2
        delivered = await leave_mid_stream(edge, chat(stream=True), "single", events_seen=2)
        edge.model.hang_after_chunks = None
        next_one = await edge.post(CHAT, chat(), "single")

        assert b"answer 1[2]" in delivered and b"[DONE]" not in delivered
        # The gateway asked the target for usage on every chunk; the client, which did not, sees none.
        assert b'"usage"' not in delivered
        assert next_one.status_code == 200
        assert edge.ledger_rows() == [("single", "chat.completions", "cancelled", PROMPT_TOKENS, 2),
                                      ("single", "chat.completions", "ok", PROMPT_TOKENS, COMPLETION_TOKENS)]


async def test_an_idempotent_stream_left_mid_way_runs_again_on_retry(tmp_path, stores):
    body = chat(stream=True)
    async with stack(tmp_path, stores=stores) as edge:
        edge.model.hang_after_chunks = 1
        await leave_mid_stream(edge, body, "acme", events_seen=1, **{"idempotency-key": "retry-1"})
        edge.model.hang_after_chunks = None
        retry = await edge.post(CHAT, body, **{"idempotency-key": "retry-1"})

        assert retry.status_code == 200
        assert "idempotent-replayed" not in retry.headers
        assert "answer 2[3]" in retry.text and retry.text.endswith("data: [DONE]\n\n")
        assert [row[2:] for row in edge.ledger_rows()] == [("cancelled", PROMPT_TOKENS, 1),
                                                           ("ok", PROMPT_TOKENS, COMPLETION_TOKENS)]


async def test_a_stream_that_failed_part_way_is_neither_cached_nor_replayed(tmp_path):
    body = chat(stream=True)
    async with stack(tmp_path, cache=True) as edge:
        edge.model.fail_after_chunks = 1
        failed = await edge.post(CHAT, body, **{"idempotency-key": "retry-1"})
        edge.model.fail_after_chunks = None
        retry = await edge.post(CHAT, body, **{"idempotency-key": "retry-1"})
        await edge.gateway.settled()
        again = await edge.post(CHAT, body)

        assert '"error"' in failed.text
        assert (retry.headers["x-cache"], "idempotent-replayed" in retry.headers) == ("miss", False)
        assert "answer 2[3]" in retry.text
        assert again.headers["x-cache"] == "hit" and again.text == retry.text
        assert [row[2:] for row in edge.ledger_rows()] == [("failed", PROMPT_TOKENS, 1),
                                                           ("ok", PROMPT_TOKENS, COMPLETION_TOKENS),
                                                           ("cache_hit", 0, 0)]


# 7. A body that is not JSON ---------------------------------------------------------------------


@pytest.mark.parametrize(("path", "endpoint"), [(CHAT, "chat.completions"), (COMPLETIONS, "completions")])
async def test_a_body_that_is_not_json_reaches_the_route_reserving_no_tokens(tmp_path, path, endpoint):
    async with stack(tmp_path) as edge:
        answer = await edge.post(path, b"{not json", "metered")

        assert answer.status_code == 400
        assert "not JSON" in answer.json()["error"]["message"]
        # Nothing reserved, and nothing used: the tenant's whole minute of tokens is left.
        assert answer.headers["x-ratelimit-remaining-tokens"] == "1000"
        assert edge.ledger_rows() == [("metered", endpoint, "refused", 0, 0)]
