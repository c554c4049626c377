"""Test doubles of the graph router's tests: fake upstream services and the router itself, each a
real uvicorn server on 127.0.0.1 with a free port in a background thread, stopped on exit."""

from __future__ import annotations

import asyncio
import json
import random
import re
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from router.graph_server import ServerDeadlines, create_app
from router.graph_spec import parse_graph

START_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve_in_thread(app: Any, **config: Any) -> Iterator[str]:
    """Serves an ASGI app on 127.0.0.1 until the block ends; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(START_TIMEOUT)


@dataclass
class Answer:
    status: int = 200
    body: bytes = b"{}"
    delay: float = 0.0


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class FakeServices:
    """Stands for every upstream service at once: the step's URL path picks the answer. Unless told
    otherwise a path answers 200 with {"path": ..., "received": <the JSON it was sent>}."""

    answers: dict[str, Answer] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    abandoned: list[str] = field(default_factory=list)  # paths whose caller left while they waited
    in_flight: int = 0
    max_in_flight: int = 0

    def answer(self, path: str, status: int = 200, body: Any = None, raw: bytes | None = None,
               delay: float = 0.0) -> None:
        content = raw if raw is not None else json.dumps({} if body is None else body).encode()
        self.answers[path] = Answer(status, content, delay)

    def reset(self) -> None:
        self.answers.clear()
        self.received.clear()
        self.abandoned.clear()
        self.max_in_flight = 0

    def paths(self) -> list[str]:
        return [request.path for request in self.received]

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self._handle, methods=["POST"])])

    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        path = request.url.path
        headers = {name: ", ".join(request.headers.getlist(name)) for name in request.headers.keys()}
        self.received.append(Received(path, headers, body))
        echo = json.dumps({"path": path, "received": _json_or_text(body)}).encode()
        answer = self.answers.get(path) or Answer(body=echo)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if not await _wait_unless_abandoned(request, answer.delay):
                self.abandoned.append(path)
        finally:
            self.in_flight -= 1
        return Response(answer.body, status_code=answer.status, media_type="application/json")


def _json_or_text(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return body.decode(errors="replace")


async def _wait_unless_abandoned(request: Request, delay: float) -> bool:
    """Sleeps `delay` seconds; False as soon as the caller disconnects."""
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline:
        if await request.is_disconnected():
            return False
        await asyncio.sleep(0.02)
    return True


@contextmanager
def running_services() -> Iterator[tuple[FakeServices, str]]:
    services = FakeServices()
    with serve_in_thread(services.app()) as url:
        yield services, url


def sequence(*steps: dict[str, Any]) -> dict[str, Any]:
    return node("Sequence", *steps)


def node(router_type: str, *steps: dict[str, Any]) -> dict[str, Any]:
    return {"routerType": router_type, "steps": list(steps)}


def graph_manifest(nodes: Mapping[str, Any], router_timeouts: Mapping[str, int] | None = None,
                   **spec: Any) -> dict[str, Any]:
    """A whole InferenceGraph manifest around the given nodes."""
    spec = {"nodes": dict(nodes), **spec}
    if router_timeouts is not None:
        spec["routerTimeouts"] = dict(router_timeouts)
    return {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "InferenceGraph",
            "metadata": {"name": "test-graph"}, "spec": spec}


@contextmanager
def running_router(manifest: Mapping[str, Any] | str, service_urls: Mapping[str, str] | None = None,
                   propagate: tuple[str, ...] = (), seed: int | None = None,
                   max_body_bytes: int | None = None) -> Iterator[str]:
    """The graph router (create_app, as the CLI builds it) served in a thread; yields its URL."""
    graph = parse_graph(yaml.safe_load(manifest) if isinstance(manifest, str) else manifest)
    options: dict[str, Any] = {} if max_body_bytes is None else {"max_body_bytes": max_body_bytes}
    app = create_app(graph, service_urls or {}, [re.compile(pattern) for pattern in propagate],
                     random.Random(seed) if seed is not None else None, **options)
    with serve_in_thread(app, timeout_keep_alive=ServerDeadlines.of(graph).idle) as url:
        yield url
