"""The HTTP side of the local InferenceGraph router: an app that runs the graph on a request to
any path and answers readiness on /readyz, within the bounds of `spec.routerTimeouts`."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router.graph_condition import MISSING, parse_json
from router.graph_executor import ROUTING_ERROR, GraphExecutor, GraphRoutingError
from router.graph_spec import InferenceGraph
from serving.middleware import ClientConnectionMiddleware
from serving.request_bodies import off_loop_if_large

logger = logging.getLogger(__name__)

READINESS_PATH = "/readyz"  # KServe's constants.RouterReadinessEndpoint
# The graph runner's default --max_body_bytes. KServe's Go router, which it stands in for, reads
# bodies without a limit and leaves the limit to the services behind it: this only bounds what one
# request can hold in memory. It is well above COMPONENT_MAX_BODY_BYTES so that the graph refuses
# nothing its steps take (their own limits may be raised) and a step's own 413 is what a client sees.
GRAPH_MAX_BODY_BYTES = 16 << 20
# Go's mux sends every method to the graph handler.
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@dataclass(frozen=True, slots=True)
class ServerDeadlines:
    """Seconds, None for no limit. `write` bounds a whole request (Go's WriteTimeout starts once
    the headers are read), from serverWrite or the Knative revision timeout, whichever is less."""

    read: float | None
    write: float | None
    write_limit: str
    idle: float

    @classmethod
    def of(cls, graph: InferenceGraph) -> ServerDeadlines:
        timeouts = graph.router_timeouts
        limits = [(seconds, name) for seconds, name in ((timeouts.server_write, "routerTimeouts.serverWrite"),
                                                        (graph.timeout, "spec.timeout")) if seconds]
        write, write_limit = min(limits) if limits else (None, "")
        # Go's IdleTimeout: 0 falls back to ReadTimeout; both 0, connections idle forever.
        idle = timeouts.server_idle or timeouts.server_read or math.inf
        return cls(timeouts.server_read or None, write, write_limit, idle)


class ServerTimeoutsMiddleware:
    """A body not received within `read` seconds gets 408; a request not answered within `write`
    seconds is cancelled (its steps with it) and gets 504. KServe's Go server instead routes the
    part of the body it got, and drops the connection without a response, respectively."""

    def __init__(self, app: ASGIApp, deadlines: ServerDeadlines) -> None:
        self.app = app
        self.deadlines = deadlines

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            async with asyncio.timeout(self.deadlines.write) as write_deadline:
                await self.app(scope, self._receive_within_read_deadline(receive), tracking_send)
        except _BodyReadTimeout:
            response = routing_error_response(408, f"the request body did not arrive within routerTimeouts"
                                                   f".serverRead ({self.deadlines.read:g} s)")
            response.headers["connection"] = "close"
            await response(scope, receive, send)
        except TimeoutError:
            if not write_deadline.expired() or response_started:
                raise
            cause = f"the graph did not answer within {self.deadlines.write_limit} ({self.deadlines.write:g} s)"
            await routing_error_response(504, cause)(scope, receive, send)

    def _receive_within_read_deadline(self, receive: Receive) -> Receive:
        if self.deadlines.read is None:
            return receive
        deadline = asyncio.get_running_loop().time() + self.deadlines.read
        body_received = False

        async def receive_in_time() -> Message:
            nonlocal body_received
            if body_received:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise _BodyReadTimeout from None
            body_received = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        return receive_in_time


class _BodyReadTimeout(Exception):
    pass


class Readiness:
    """What /readyz reports: 503 "shutting down" from SIGTERM on, as KServe's router does."""

    def __init__(self) -> None:
        self.draining = False

    def start_draining(self) -> None:
        self.draining = True


def routing_error_response(status: int, cause: str) -> JSONResponse:
    return JSONResponse({"error": ROUTING_ERROR, "cause": cause}, status_code=status)


async def _run_graph(request: Request) -> Response:
    executor: GraphExecutor = request.app.state.executor
    body = await request.body()
    try:
        result = await executor.run(body, request.headers.items())
    except GraphRoutingError as error:
        logger.warning("%d: %s", error.status, error.cause)
        return routing_error_response(error.status, error.cause)
    # Go sets a JSON content type only on a body that is JSON; no upstream header comes back.
    is_json = await off_loop_if_large(len(result.body), lambda: parse_json(result.body) is not MISSING)
    media_type = "application/json" if is_json else None
    return Response(result.body, status_code=result.status, media_type=media_type)


async def _readiness(request: Request) -> Response:
    if request.app.state.readiness.draining:
        return PlainTextResponse("shutting down\n", status_code=503)
    return Response(status_code=200)


def create_app(graph: InferenceGraph, service_urls: Mapping[str, str],
               propagate_headers: Sequence[re.Pattern[str]] = (), rng: random.Random | None = None,
               max_body_bytes: int = GRAPH_MAX_BODY_BYTES) -> FastAPI:
    """The router's ASGI app. Raises ValueError when a service the graph names has no URL."""
    # One client for every step of every request: connections to the services are pooled. No
    # client-wide timeout (Go's default client has none); routerTimeouts.serviceClient bounds a step.
    client = httpx.AsyncClient(timeout=None, follow_redirects=True, trust_env=False)
    executor = GraphExecutor(graph, service_urls, client, propagate_headers, rng)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await client.aclose()

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.executor = executor
    app.state.readiness = Readiness()
    app.add_api_route(READINESS_PATH, _readiness, methods=ALL_METHODS)
    app.add_api_route("/{path:path}", _run_graph, methods=ALL_METHODS)
    app.add_middleware(ClientConnectionMiddleware, max_body_bytes=max_body_bytes)
    app.add_middleware(ServerTimeoutsMiddleware, deadlines=ServerDeadlines.of(graph))  # outermost
    return app
