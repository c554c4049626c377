"""A fake transformer for the OpenAI edge's tests: OpenAI completions and chat completions (whole or
streamed) whose status, delay, token logprobs and finish reason a test sets, and a predictor-style
/metrics with the load a test sets. Served on a real socket in a background thread."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import httpx

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.router.graph_fakes import serve_in_thread

STREAM_EVENT_SECONDS = 0.05


@dataclass
class FakeTransformer:
    name: str
    status: int = 200
    delay: float = 0.0
    token_logprobs: list[float] = field(default_factory=lambda: [-0.1, -0.2])
    finish_reason: str = "stop"
    stream_events: int = 3
    stream_breaks: bool = False  # the connection drops after the stream's events, before [DONE]
    # A chat stream opens with the assistant's role, as the transformer's does on admission.
    opens_with_role: bool = False
    # The stream's first event (after the role) is a server error, as when the predictor fails
    # an admitted request before its first token.
    fails_before_first_token: bool = False
    waiting: float | None = None  # the load /metrics reports; None: /metrics answers 404
    kv_cache_usage: float = 0.0
    received: list[dict] = field(default_factory=list)
    abandoned_streams: int = 0
    # Requests answering at once (whole answers, while their delay runs), and the most seen.
    in_flight: int = 0
    max_in_flight: int = 0
    # Scrapes of /metrics so far: a test that sets `waiting` knows when the router has seen it.
    metrics_scrapes: int = 0
    url: str = ""

    def reset(self) -> None:
        defaults = FakeTransformer(self.name)
        for name in ("status", "delay", "token_logprobs", "finish_reason", "stream_events", "stream_breaks",
                     "opens_with_role", "fails_before_first_token", "waiting", "kv_cache_usage"):
            setattr(self, name, getattr(defaults, name))
        self.received.clear()
        self.abandoned_streams = 0
        self.in_flight = self.max_in_flight = 0

    @property
    def text(self) -> str:
        return f"{self.name} answers"

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/openai/v1/completions", self._complete, methods=["POST"]),
            Route("/openai/v1/chat/completions", self._complete, methods=["POST"]),
            Route("/metrics", self._metrics, methods=["GET"]),
            Route("/tokenize", self._tokenize, methods=["POST"]),
        ])

    async def _tokenize(self, request: Request) -> Response:
        body = await request.json()
        self.received.append({"path": request.url.path, "headers": dict(request.headers), "body": body})
        if self.status != 200:
            return JSONResponse({"error": {"message": f"{self.name} answered {self.status}"}}, status_code=self.status)
        # A token per character, so that each fake's answer is easy to predict.
        tokens = [ord(character) for character in body.get("prompt", "")]
        return JSONResponse({"count": len(tokens), "max_model_len": 64, "tokens": tokens})

    async def _complete(self, request: Request) -> Response:
        body = await request.json()
        self.received.append({"path": request.url.path, "headers": dict(request.headers), "body": body})
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        if self.status != 200:
            error = {"error": {"message": f"{self.name} answered {self.status}", "type": "server_error",
                               "param": None, "code": None}}
            return JSONResponse(error, status_code=self.status)
        chat = request.url.path.endswith("/chat/completions")
        if body.get("stream"):
            return StreamingResponse(self._events(body, chat), media_type="text/event-stream")
        return JSONResponse(self._completion(body, chat))

    def _completion(self, body: dict, chat: bool) -> dict:
        wants_logprobs = body.get("logprobs") if chat else body.get("logprobs") is not None
        if chat:
            logprobs = {"content": [{"token": "x", "logprob": value, "bytes": [120], "top_logprobs": []}
                                    for value in self.token_logprobs]} if wants_logprobs else None
            choice = {"index": 0, "message": {"role": "assistant", "content": self.text}, "logprobs": logprobs,
                      "finish_reason": self.finish_reason}
        else:
            logprobs = {"tokens": ["x"] * len(self.token_logprobs), "token_logprobs": self.token_logprobs,
                        "top_logprobs": None, "text_offset": list(range(len(self.token_logprobs)))}
            choice = {"index": 0, "text": self.text, "logprobs": logprobs if wants_logprobs else None,
                      "finish_reason": self.finish_reason}
        usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        return {"id": "cmpl-1", "object": "chat.completion" if chat else "text_completion", "created": 0,
                "model": body["model"], "choices": [choice], "usage": usage}

    async def _events(self, body: dict, chat: bool) -> AsyncIterator[bytes]:
        finished = False
        try:
            if chat and (self.opens_with_role or self.fails_before_first_token):
                role = {"id": "cmpl-1", "model": body["model"],
                        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
                yield b"data: " + json.dumps(role).encode() + b"\n\n"
                await asyncio.sleep(STREAM_EVENT_SECONDS)
            if not chat and body.get("echo"):
                # As the transformer does: the prompt, at once, before any token.
                echoed = {"id": "cmpl-1", "model": body["model"],
                          "choices": [{"index": 0, "text": body["prompt"], "logprobs": None, "finish_reason": None}]}
                yield b"data: " + json.dumps(echoed).encode() + b"\n\n"
                await asyncio.sleep(STREAM_EVENT_SECONDS)
            if self.fails_before_first_token:
                error = {"error": {"message": "the request timed out in the queue", "type": "server_error",
                                   "param": None, "code": None}}
                yield b"data: " + json.dumps(error).encode() + b"\n\ndata: [DONE]\n\n"
                finished = True
                return
            for index in range(self.stream_events):
                delta = {"delta": {"content": f"{index} "}} if chat else {"text": f"{index} "}
                event = {"id": "cmpl-1", "model": body["model"], "choices": [{"index": 0, **delta}]}
                yield b"data: " + json.dumps(event).encode() + b"\n\n"
                await asyncio.sleep(STREAM_EVENT_SECONDS)
            if self.stream_breaks:
                raise ConnectionAbortedError("the fake transformer breaks its stream")
            if (body.get("stream_options") or {}).get("include_usage"):
                for event in self._usage_events(body, chat):
                    yield b"data: " + json.dumps(event).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"
            finished = True
        finally:
            # Starlette cancels the stream when its client disconnects.
            if not finished:
                self.abandoned_streams += 1

    def _usage_events(self, body: dict, chat: bool) -> list[dict]:
        """The finish reason, then the usage, as a transformer ends a stream asked to include usage."""
        finish = {"index": 0, "delta": {}} if chat else {"index": 0, "text": ""}
        usage = {"prompt_tokens": 3, "completion_tokens": self.stream_events,
                 "total_tokens": 3 + self.stream_events}
        return [{"id": "cmpl-1", "model": body["model"], "choices": [{**finish, "finish_reason": self.finish_reason}]},
                {"id": "cmpl-1", "model": body["model"], "choices": [], "usage": usage}]

    async def _metrics(self, request: Request) -> Response:
        self.metrics_scrapes += 1
        if self.waiting is None:
            return PlainTextResponse("no metrics here", status_code=404)
        labels = f'{{model_name="{self.name.rsplit("-", 1)[0]}"}}'
        return PlainTextResponse(f"vllm:num_requests_waiting{labels} {self.waiting}\n"
                                 f"vllm:kv_cache_usage_perc{labels} {self.kv_cache_usage}\n")


@contextmanager
def edge_client(router_url: str, fakes: dict[str, FakeTransformer]) -> Iterator[httpx.Client]:
    """A client of the router at `router_url`, with the fakes behind it reset first."""
    for fake in fakes.values():
        fake.reset()
    with httpx.Client(base_url=router_url, timeout=30) as client:
        yield client


@contextmanager
def running_transformers(*names: str) -> Iterator[dict[str, FakeTransformer]]:
    """Fake transformers by name (`llm-small-a` serves model `llm-small`), each on its own port."""
    fakes = {name: FakeTransformer(name) for name in names}
    with ExitStack() as servers:
        for fake in fakes.values():
            fake.url = servers.enter_context(serve_in_thread(fake.app()))
        yield fakes
