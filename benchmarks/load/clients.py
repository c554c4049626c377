"""Streaming clients, one per target: the predictor's generate_stream (`direct`, token ids in), the
transformer's OpenAI completions route over server-sent events (`transformer`), the router's
OpenAI edge with `model: "auto"` (`router`), the same edge behind the gateway with every feature
on (`gateway`: a tenant's key with limits, an Idempotency-Key per request, the response cache,
state in Redis), and the transformer's WebSocket (`websocket`, all requests multiplexed on one
connection, as a real-time client would). `llamacpp` is a peer, not a hop of ours: llama.cpp's
`llama-server` on the same model, through its OpenAI completions route, sent the same token ids
that the transformer makes of the prompt text."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass

import httpx
import websockets

from benchmarks.load.metrics import SERVICE_UNAVAILABLE, Sample
from benchmarks.load.workload import Request

DIRECT, TRANSFORMER, ROUTER, GATEWAY, WEBSOCKET = "direct", "transformer", "router", "gateway", "websocket"
LLAMACPP = "llamacpp"
TARGETS = (DIRECT, TRANSFORMER, ROUTER, GATEWAY, WEBSOCKET, LLAMACPP)
PEERS = (LLAMACPP,)  # other servers of the same model: no hop of ours, so no cost over `direct`
AUTO_MODEL = "auto"
ROUTE_HEADER = "x-route"


@dataclass(frozen=True, slots=True)
class Endpoints:
    model_name: str
    predictor_url: str
    transformer_url: str | None = None
    router_url: str | None = None
    gateway_url: str | None = None  # a router with the gateway on, in front of the same transformer
    gateway_key: str | None = None  # a tenant's API key there
    llamacpp_url: str | None = None  # llama.cpp's llama-server on the same model


class MultiplexedSocket:
    """One WebSocket connection to the transformer's /ws/v1/generate, requests multiplexed on it by
    id: a reader hands each message to its request's queue."""

    def __init__(self, socket: websockets.ClientConnection) -> None:
        self.socket = socket
        self.queues: dict[str, asyncio.Queue] = {}
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.socket:
            message = json.loads(raw)
            self.queues[message["id"]].put_nowait(message)

    async def stream(self, body: dict) -> AsyncIterator[dict]:
        """The request's messages up to its done or error."""
        request_id = uuid.uuid4().hex
        queue = self.queues[request_id] = asyncio.Queue()
        try:
            await self.socket.send(json.dumps({"type": "generate", "id": request_id, **body}))
            while True:
                message = await queue.get()
                yield message
                if message["type"] != "delta":
                    return
        finally:
            del self.queues[request_id]

    async def close(self) -> None:
        self.reader.cancel()
        await self.socket.close()


class Clients:
    """An HTTP client for every HTTP target and, when asked for, the WebSocket connection."""

    def __init__(self, endpoints: Endpoints, http: httpx.AsyncClient, socket: MultiplexedSocket | None) -> None:
        self.endpoints = endpoints
        self.http = http
        self.socket = socket

    @classmethod
    async def open(cls, stack: AsyncExitStack, endpoints: Endpoints, targets: tuple[str, ...]) -> Clients:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=600, limits=limits))
        socket = None
        if WEBSOCKET in targets:
            url = endpoints.transformer_url.replace("http", "ws", 1) + "/ws/v1/generate"
            socket = MultiplexedSocket(await websockets.connect(url, max_size=None))
            stack.push_async_callback(socket.close)
        return cls(endpoints, http, socket)

    async def send(self, request: Request, sample: Sample, max_tokens: int | None = None) -> None:
        """Stream `request` to `sample.target`, recording into `sample` as tokens come (so a
        request cancelled midway keeps what it measured)."""
        max_tokens = max_tokens or request.max_tokens
        started = time.perf_counter()
        if sample.target == WEBSOCKET:
            await self._stream_websocket(request.prompt, max_tokens, sample, started)
        elif sample.target == DIRECT:
            body = {"input_ids": request.prompt_ids,
                    "parameters": {"max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}}
            url = f"{self.endpoints.predictor_url}/v2/models/{self.endpoints.model_name}/generate_stream"
            await self._stream_sse(url, body, _record_generate_event, sample, started)
        elif sample.target == LLAMACPP:
            # Token ids, so both servers see prompts of one length; ignore_eos, so both make max_tokens.
            body = {"prompt": request.prompt_ids, "max_tokens": max_tokens, "temperature": 0, "stream": True,
                    "ignore_eos": True, "stream_options": {"include_usage": True}}
            # A fresh connection each: llama-server drops idle kept-alive ones after 5 s, and a request
            # sent on one as it closes fails (RemoteProtocolError). Connecting costs TTFT ~0.1 ms here.
            await self._stream_sse(f"{self.endpoints.llamacpp_url}/v1/completions", body, _record_openai_event,
                                   sample, started, {"connection": "close"})
        else:
            model, base = {ROUTER: (AUTO_MODEL, self.endpoints.router_url),
                           GATEWAY: (AUTO_MODEL, self.endpoints.gateway_url)}.get(
                sample.target, (self.endpoints.model_name, self.endpoints.transformer_url))
            body = {"model": model, "prompt": request.prompt, "max_tokens": max_tokens, "temperature": 0,
                    "stream": True, "ignore_eos": True, "stream_options": {"include_usage": True}}
            headers = self._gateway_headers() if sample.target == GATEWAY else None
            await self._stream_sse(f"{base}/openai/v1/completions", body, _record_openai_event, sample, started,
                                   headers)
        sample.e2e = time.perf_counter() - started

    def _gateway_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.endpoints.gateway_key}", "idempotency-key": uuid.uuid4().hex}

    async def _stream_sse(self, url: str, body: dict, record: Callable[[Sample, dict, float], None],
                          sample: Sample, started: float, headers: dict[str, str] | None = None) -> None:
        try:
            async with self.http.stream("POST", url, json=body, headers=headers) as response:
                sample.route = response.headers.get(ROUTE_HEADER)
                if response.status_code != 200:
                    sample.status, sample.error = response.status_code, f"HTTP {response.status_code}"
                    return
                async for line in response.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        record(sample, json.loads(line[6:]), time.perf_counter() - started)
        except httpx.HTTPError as exc:
            sample.error = type(exc).__name__

    async def _stream_websocket(self, prompt: str, max_tokens: int, sample: Sample, started: float) -> None:
        body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
        async for message in self.socket.stream(body):
            if message["type"] == "delta" and message["text"]:
                sample.token_times.append(time.perf_counter() - started)
            elif message["type"] == "done" and message.get("usage"):
                sample.output_tokens = message["usage"]["completion_tokens"]
            elif message["type"] == "error":
                sample.error = message["code"]
                sample.status = SERVICE_UNAVAILABLE if message["code"] == "overloaded" else None


def _record_generate_event(sample: Sample, event: dict, elapsed: float) -> None:
    if event.get("output_ids"):
        sample.token_times.append(elapsed)
        sample.output_tokens += len(event["output_ids"])
    if event.get("error"):
        sample.error = str(event["error"])


def _record_openai_event(sample: Sample, event: dict, elapsed: float) -> None:
    """A token is an event with text (the detokenizer may hold text back); the count comes from
    the closing usage chunk."""
    choices = event.get("choices")
    if choices and choices[0].get("text"):
        sample.token_times.append(elapsed)
    if event.get("usage"):
        sample.output_tokens = event["usage"]["completion_tokens"]
    if event.get("error"):
        sample.error = str(event["error"])


async def prefix_cache_counters(http: httpx.AsyncClient, predictor_url: str) -> tuple[float, float]:
    """The predictor's prefix-cache (hits, queries) token counters, from its /metrics."""
    text = (await http.get(f"{predictor_url}/metrics")).text
    values = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0]
        if name in ("vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"):
            values[name] = values.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return values.get("vllm:prefix_cache_hits_total", 0.0), values.get("vllm:prefix_cache_queries_total", 0.0)
