"""JSON POST routes served ahead of FastAPI's router: the endpoints on every streamed token's path
(the OpenAI completions and chat routes, the predictor's generate routes). FastAPI's route
matching, dependency solving and exception middleware cost about a third of a millisecond per
request on a small CPU; here the body (already read, and bounded, by ClientConnectionMiddleware)
is validated by its pydantic model (off the event loop when large: serving/request_bodies.py) and
handed to the handler. The same handlers stay declared on the FastAPI app, which documents them in
/openapi.json and serves them wherever this layer is not installed: both ways run one function."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ValidationError
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.errors import ANSWERED_ERRORS, error_response, validation_error_response
from serving.request_bodies import validate_json_body


@dataclass(frozen=True, slots=True)
class DirectRoute:
    body_model: type[BaseModel]
    # (the validated body, the request's headers) -> the response
    handler: Callable[[Any, Headers], Awaitable[Response]]


class DirectRoutes:
    def __init__(self, app: ASGIApp, routes: Mapping[str, DirectRoute]) -> None:
        self.app = app
        self.routes = dict(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        try:
            parsed = await validate_json_body(route.body_model, body)
        except ValidationError as exc:
            response = validation_error_response(exc.errors(), scope["path"])
        else:
            try:
                response = await route.handler(parsed, Headers(scope=scope))
            except ANSWERED_ERRORS as exc:
                # As the app's exception handlers answer them; anything else is a 500 by type
                # (ClientConnectionMiddleware), as it would be on FastAPI's path.
                response = error_response(exc, scope["path"])
        await response(scope, receive, send)


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b""
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def add_direct_routes(app: FastAPI, routes: Mapping[str, DirectRoute]) -> None:
    """Install the routes as the app's innermost middleware, inside ClientConnectionMiddleware
    (bounded bodies, handlers cancelled when the client leaves, 500s by type) and the others of
    serving/server.py. Call before the server starts."""
    app.user_middleware.append(Middleware(DirectRoutes, routes=routes))
