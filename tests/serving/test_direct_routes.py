"""serving/direct_routes.py: a direct route answers as its FastAPI declaration would (the handler's
response; a 400 in the route's error shape for a bad body), other requests go on to FastAPI, and
the route stays documented in /openapi.json."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from serving.direct_routes import DirectRoute, add_direct_routes
from serving.errors import add_exception_handlers


class Body(BaseModel):
    prompt: str
    max_tokens: int = Field(default=4, ge=1)


async def answer(body: Body, headers) -> JSONResponse:
    return JSONResponse({"prompt": body.prompt, "max_tokens": body.max_tokens, "id": headers.get("x-request-id")})


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    add_exception_handlers(app)
    served_by_fastapi = []

    @app.post("/openai/v1/completions")
    async def declared(body: Body, request: Request) -> JSONResponse:
        served_by_fastapi.append(body)
        return await answer(body, request.headers)

    @app.post("/v2/other")
    async def other(body: Body, request: Request) -> JSONResponse:
        return JSONResponse({"served": "fastapi"})

    add_direct_routes(app, {"/openai/v1/completions": DirectRoute(Body, answer)})
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
