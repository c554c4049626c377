"""serving/direct_routes.py: a direct route answers as its FastAPI declaration would (the handler's
response; a 400 in the route's error shape for a bad body; our and KServe's errors with their
status codes, as the app's exception handlers answer them), other requests go on to FastAPI, and
the route stays documented in /openapi.json."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from kserve.errors import InvalidInput
from pydantic import BaseModel, Field

from serving.direct_routes import DirectRoute, add_direct_routes
from serving.errors import ServiceUnavailable, add_exception_handlers
from serving.middleware import RetryAfterMiddleware


class Body(BaseModel):
    prompt: str
    max_tokens: int = Field(default=4, ge=1)


async def answer(body: Body, headers) -> JSONResponse:
    if body.prompt == "overload":
        raise ServiceUnavailable("llm", "the waiting queue is full")
    if body.prompt == "invalid":
        raise InvalidInput("the prompt is invalid")
    return JSONResponse({"prompt": body.prompt, "max_tokens": body.max_tokens, "id": headers.get("x-request-id")})


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    app.add_middleware(RetryAfterMiddleware)
    add_exception_handlers(app)
    served_by_fastapi = []

    @app.post("/openai/v1/completions")
    async def declared(body: Body, request: Request) -> JSONResponse:
        served_by_fastapi.append(body)
        return await answer(body, request.headers)

    @app.post("/v2/other")
    async def other(body: Body, request: Request) -> JSONResponse:
        return JSONResponse({"served": "fastapi"})

    add_direct_routes(app, {"/openai/v1/completions": DirectRoute(Body, answer),
                            "/v2/models/llm/generate": DirectRoute(Body, answer)})
    with TestClient(app) as client:
        client.served_by_fastapi = served_by_fastapi
        yield client


def test_a_direct_route_runs_the_handler_without_fastapi(client):
    response = client.post("/openai/v1/completions", json={"prompt": "hi"}, headers={"x-request-id": "r1"})
    assert response.status_code == 200
    assert response.json() == {"prompt": "hi", "max_tokens": 4, "id": "r1"}
    assert client.served_by_fastapi == []


@pytest.mark.parametrize("content, message", [
    (b'{"prompt": "hi", "max_tokens": 0}', "max_tokens: Input should be greater than or equal to 1"),
    (b'{"max_tokens": 2}', "prompt: Field required"),
    (b'{"prompt": ', "malformed JSON body"),
])
def test_a_bad_body_gets_a_400_in_the_routes_error_shape(client, content, message):
    response = client.post("/openai/v1/completions", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error"


def test_other_routes_and_methods_go_on_to_fastapi(client):
    assert client.post("/v2/other", json={"prompt": "x"}).json() == {"served": "fastapi"}
    assert client.get("/openai/v1/completions").status_code == 405


def test_the_route_stays_documented(client):
    schema = client.get("/openapi.json").json()
    assert "post" in schema["paths"]["/openai/v1/completions"]


@pytest.mark.parametrize("prompt, status, message", [
    ("overload", 503, "the waiting queue is full"),
    ("invalid", 400, "the prompt is invalid"),
])
def test_a_handlers_error_gets_its_status_in_the_routes_shape(client, prompt, status, message):
    kserve_shaped = client.post("/v2/models/llm/generate", json={"prompt": prompt})
    assert kserve_shaped.status_code == status and message in kserve_shaped.json()["error"]
    openai_shaped = client.post("/openai/v1/completions", json={"prompt": prompt})
    assert openai_shaped.status_code == status and message in openai_shaped.json()["error"]["message"]
    if status == 503:
        assert kserve_shaped.headers["retry-after"] and openai_shaped.headers["retry-after"]
