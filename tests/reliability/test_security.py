"""Security at the edges: the router's optional flat API keys file (bearer tokens on the OpenAI edge,
401 in OpenAI's shape, health and metrics open; tenants without limits, router/gateway/), bodies over the limit refused (413) by the router as
by the other servers, and no error body of any component carrying a stack trace.
(Pickle checkpoints and remote code are refused by the loader: tests/engine/test_model_loader.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from router.gateway.setup import ApiKeysError, read_api_keys
from router.gateway.tenants import Tenants
from tests.router.conftest import run_python, start_router, write_config
from tests.router.edge_fakes import running_transformers
from tests.router.graph_fakes import graph_manifest, running_router, sequence
from tests.runtime.conftest import start_server
from tests.servers import MODEL_NAME, Server, free_port
from tests.transformer.conftest import start_transformer

KEYS = ("sk-first-key", "sk-second-key")
KEYS_FILE = f"# the router's API keys\n\n{KEYS[0]}\n  {KEYS[1]}  \n# sk-commented-out\n"
CHAT = "/openai/v1/chat/completions"
MAX_BODY_BYTES = 4096
STACK_TRACE_MARKERS = ("Traceback", 'File "')


def chat(**fields) -> dict:
    return {"model": "auto", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, **fields}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@dataclass
class Stack:
    predictor: Server
    transformer: Server
    router: Server


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    """Predictor and transformer on the demo model; a router in front (the transformer is its small
    model, a fake its large one) that requires API keys and takes bodies up to 4 KiB."""
    directory = tmp_path_factory.mktemp("security")
    keys = directory / "api_keys"
    keys.write_text(KEYS_FILE)
    predictor = start_server(directory, "--max_body_bytes", str(MAX_BODY_BYTES))
    started = [predictor]
    try:
        transformer = start_transformer(directory, f"127.0.0.1:{predictor.http_port}")
        started.append(transformer)
        with running_transformers("llm-large-a") as fakes:
            config = write_config(directory / "router.yaml", targets={
                "small": {"model": MODEL_NAME, "urls": [transformer.url]},
                "large": {"model": "llm-large", "urls": [fakes["llm-large-a"].url]},
            }, cascade={"enabled": False})
            router = start_router(config, directory, "--api_keys_file", str(keys), "--max_body_bytes",
                                  str(MAX_BODY_BYTES))
            started.append(router)
            yield Stack(predictor, transformer, router)
    finally:
        for server in reversed(started):
            server.stop()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60) as client:
        yield client


# API keys

def test_keys_are_read_one_per_line_without_comments(tmp_path):
    path = tmp_path / "keys"
    path.write_text(KEYS_FILE)
    tenants = Tenants.from_api_keys(read_api_keys(path))
    assert tenants.authenticate(f"Bearer {KEYS[0]}") and tenants.authenticate(f"bearer {KEYS[1]}")
    for header in (None, "", "Bearer", f"Basic {KEYS[0]}", f"Bearer {KEYS[0]}x", "Bearer sk-commented-out",
                   f"Bearer {KEYS[0][:-1]}", "Bearer # the router's API keys"):
        assert tenants.authenticate(header) is None, header


def test_without_keys_no_key_is_required():
    assert not Tenants.none().required


def test_a_keys_file_without_keys_stops_the_router(tmp_path):
    empty = tmp_path / "keys"
    empty.write_text("# nothing here\n\n")
    with pytest.raises(ApiKeysError, match="holds no key"):
        read_api_keys(empty)
    finished = run_python("-m", "router", "--config", str(write_config(tmp_path / "router.yaml")),
                          "--api_keys_file", str(empty), "--http_port", str(free_port()))
    assert finished.returncode == 2 and "holds no key" in finished.stderr + finished.stdout


@pytest.mark.parametrize("headers", [{}, bearer("sk-wrong"), {"authorization": KEYS[0]}],
                         ids=["missing", "wrong", "not-bearer"])
def test_the_edge_refuses_a_request_without_a_valid_key(stack, http, headers):
    for method, path, body in (("POST", CHAT, chat()), ("POST", "/openai/v1/completions", {"prompt": "x"}),
                               ("GET", "/openai/v1/models", None)):
        response = http.request(method, stack.router.url + path, json=body, headers=headers)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"] == "Bearer"
        error = response.json()["error"]
        assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key"


def test_the_edge_serves_each_key(stack, http):
    for key in KEYS:
        whole = http.post(stack.router.url + CHAT, json=chat(), headers=bearer(key))
        assert whole.status_code == 200 and whole.headers["x-route"] == "small", whole.text
        streamed = http.post(stack.router.url + CHAT, json=chat(stream=True), headers=bearer(key))
        assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")


def test_health_metrics_and_kserve_routes_stay_open(stack, http):
    router = stack.router.url
    assert http.get(f"{router}/v2/health/ready").status_code == 200
    assert http.get(f"{router}/v2/models/{MODEL_NAME}/ready").status_code == 200
    assert "router" in http.get(f"{router}/metrics").text
    predict = http.post(f"{router}/v1/models/{MODEL_NAME}:predict", json={"instances": [{"prompt": "Hi"}]})
    assert predict.status_code == 200 and predict.json()["route_decisions"][0]["route"] in ("small", "large")


# Body size

@pytest.mark.parametrize("path", [CHAT, f"/v1/models/{MODEL_NAME}:predict"])
def test_the_router_refuses_an_oversized_body_with_413(stack, http, path):
    body = b'{"padding": "' + b"x" * MAX_BODY_BYTES + b'"}'
    response = http.post(stack.router.url + path, content=body,
                         headers={"content-type": "application/json", **bearer(KEYS[0])})
    assert response.status_code == 413 and "limit" in response.text


# No stack trace in any error body

def provoke_errors(client: httpx.Client, base: str, openai: bool) -> list[httpx.Response]:
    """Requests each component must refuse: malformed JSON, wrong types, unknown models and routes,
    a body over the limit."""
    requests = [
        ("POST", f"/v1/models/{MODEL_NAME}:predict", b"{not json"),
        ("POST", f"/v1/models/{MODEL_NAME}:predict", b'{"instances": [{"prompt": 7, "input_ids": "x"}]}'),
        ("POST", f"/v2/models/{MODEL_NAME}/infer", b'{"inputs": [{"name": "x", "shape": [1], "data": "y"}]}'),
        ("POST", "/v1/models/nobody:predict", b'{"instances": []}'),
        ("GET", "/no/such/route", None),
        ("POST", f"/v1/models/{MODEL_NAME}:predict", b"[" + b"1," * MAX_BODY_BYTES + b"1]"),
    ]
    if openai:
        requests += [("POST", CHAT, b'{"model": "auto", "messages": "hi"}'),
                     ("POST", CHAT, b'{"model": "nobody", "messages": [{"role": "user", "content": "x"}]}'),
                     ("POST", "/openai/v1/completions", b'{"model": "auto", "prompt": "x", "max_tokens": -1}')]
    headers = {"content-type": "application/json", **bearer(KEYS[0])}
    return [client.request(method, base + path, content=body, headers=headers) for method, path, body in requests]


def check_no_stack_trace(responses: list[httpx.Response]) -> None:
    for response in responses:
        described = f"{response.request.method} {response.request.url.path} -> {response.status_code}"
        assert response.status_code >= 400, described
        assert not any(marker in response.text for marker in STACK_TRACE_MARKERS), f"{described}: {response.text}"


def test_no_error_body_carries_a_stack_trace(stack, http):
    check_no_stack_trace(provoke_errors(http, stack.predictor.url, openai=False))
    check_no_stack_trace(provoke_errors(http, stack.transformer.url, openai=True))
    check_no_stack_trace(provoke_errors(http, stack.router.url, openai=True))


def test_no_graph_error_carries_a_stack_trace(stack, http):
    """The graph runner passes a step's error on, and answers its own when a step is unreachable."""
    services = {"demo": f"{stack.transformer.url}/v1/models/{MODEL_NAME}:predict",
                "gone": f"http://127.0.0.1:{free_port()}/v1/models/gone:predict"}
    for step in ("demo", "gone"):
        with running_router(graph_manifest({"root": sequence({"serviceName": step})}), services) as url:
            responses = [http.post(url, content=b"{not json", headers={"content-type": "application/json"}),
                         http.post(url, json={"instances": [{"prompt": 7}]})]
        check_no_stack_trace(responses)
