"""serving/request_bodies.py: a large JSON body is decoded in a worker thread, not on the event
loop's, on both the direct routes and FastAPI's; a small one in place; answers are the same."""

from __future__ import annotations

import json
import threading
import types

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from pydantic import BaseModel, field_validator

from serving import request_bodies
from serving.direct_routes import DirectRoute, add_direct_routes
from serving.errors import add_exception_handlers
from serving.request_bodies import INLINE_DECODE_BYTES, ThreadedJSONRoute

SMALL = "x"
LARGE = "x" * INLINE_DECODE_BYTES


class Body(BaseModel):
    prompt: str

    @field_validator("prompt")
    @classmethod
    def _note_the_thread(cls, prompt: str) -> str:
        Body.validated_on = threading.get_ident()
        return prompt


class DecodingThreads:
    """Stands for the json module in serving.request_bodies: notes which thread decodes."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    def loads(self, body: bytes) -> object:
        self.threads.append(threading.get_ident())
        return json.loads(body)


@pytest.fixture
def decoding(monkeypatch) -> DecodingThreads:
    threads = DecodingThreads()
    monkeypatch.setattr(request_bodies, "json", types.SimpleNamespace(loads=threads.loads))
    return threads


@pytest.fixture(scope="module")
def client():
    app = FastAPI()
    app.router.route_class = ThreadedJSONRoute
    add_exception_handlers(app)
    loop_threads: list[int] = []

    async def answer(body: Body, headers) -> JSONResponse:
        loop_threads.append(threading.get_ident())
        return JSONResponse({"characters": len(body.prompt), "validated_on_loop": Body.validated_on == loop_threads[-1]})

    @app.post("/fastapi")
    async def via_fastapi(body: Body, request: Request) -> JSONResponse:
        return await answer(body, request.headers)

    @app.post("/raw")
    async def raw(request: Request) -> JSONResponse:
        return JSONResponse({"bytes": len(await request.body())})

    add_direct_routes(app, {"/direct": DirectRoute(Body, answer)})
    with TestClient(app) as client:
        client.loop_threads = loop_threads
        yield client


@pytest.mark.parametrize("prompt, on_loop", [(SMALL, True), (LARGE, False)], ids=["small", "large"])
def test_a_direct_route_validates_a_large_body_off_the_loop(client, prompt, on_loop):
    response = client.post("/direct", json={"prompt": prompt})
    assert response.json() == {"characters": len(prompt), "validated_on_loop": on_loop}


@pytest.mark.parametrize("prompt", [SMALL, LARGE], ids=["small", "large"])
def test_a_fastapi_route_decodes_a_large_body_off_the_loop(client, decoding, prompt):
    response = client.post("/fastapi", json={"prompt": prompt})
    assert response.json()["characters"] == len(prompt)
    if prompt is LARGE:
        assert decoding.threads and decoding.threads[0] != client.loop_threads[-1]
    else:
        assert decoding.threads == []


def test_a_large_body_that_is_not_json_is_refused_as_before(client):
    response = client.post("/fastapi", content=b'{"prompt": "' + b"x" * INLINE_DECODE_BYTES,
                           headers={"content-type": "application/json"})
    assert response.status_code in (400, 422)
    assert "Traceback" not in response.text


def test_a_route_without_a_body_model_reads_its_own_bytes(client, decoding):
    response = client.post("/raw", content=b"x" * (2 * INLINE_DECODE_BYTES))
    assert response.json() == {"bytes": 2 * INLINE_DECODE_BYTES}
    assert decoding.threads == []
