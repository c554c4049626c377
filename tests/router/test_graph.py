"""The local InferenceGraph router behaves as KServe's router: every rule of cmd/router/main.go
and its edge cases, seen by a client over HTTP, with fake services on real sockets behind it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.graph import main, service_url
from router.graph_server import ServerDeadlines
from router.graph_spec import parse_graph
from serving.request_bodies import INLINE_DECODE_BYTES
from tests.router.graph_fakes import (
    FakeServices,
    free_port,
    graph_manifest,
    node,
    running_router,
    running_services,
    sequence,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
NO_MATCH = {"error": "Failed to process request", "cause": "None of the routes matched with the switch condition"}
NAMES = ("a", "b", "c")


def predict(name: str) -> str:
    return f"/v1/models/{name}:predict"


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[FakeServices, str]]:
    with running_services() as running:
        yield running


@pytest.fixture
def services(upstream: tuple[FakeServices, str]) -> FakeServices:
    upstream[0].reset()
    return upstream[0]


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


@pytest.fixture
def service_urls(upstream: tuple[FakeServices, str]) -> dict[str, str]:
    return {name: service_url(name, upstream[1], "v1") for name in NAMES}


# Sequence

def test_sequence_sends_the_request_or_the_previous_response(services: FakeServices, service_urls: dict,
                                                             http: httpx.Client) -> None:
    graph = graph_manifest({"root": sequence({"serviceName": "a"}, {"serviceName": "b", "data": "$response"},
                                             {"serviceName": "c", "data": "$request"})})
    with running_router(graph, service_urls) as url:
        response = http.post(url + "/v1/models/whatever:predict", json={"instances": [1]})
    first, second, third = services.received
    assert [first.path, second.path, third.path] == [predict("a"), predict("b"), predict("c")]
    assert first.json() == {"instances": [1]}
    assert second.json() == {"path": predict("a"), "received": {"instances": [1]}}
    assert third.json() == {"instances": [1]}
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"path": predict("c"), "received": {"instances": [1]}}


def test_the_first_step_gets_the_request_even_with_data_response(services: FakeServices,
                                                                 service_urls: dict, http: httpx.Client) -> None:
    with running_router(graph_manifest({"root": sequence({"serviceName": "a", "data": "$response"})}),
                        service_urls) as url:
        http.post(url, json={"x": 1})
    assert services.received[0].json() == {"x": 1}


def cascade(**large_step: Any) -> dict[str, Any]:
    return graph_manifest({"root": sequence(
        {"serviceName": "a"},
        {"serviceName": "b", "data": "$response", "condition": "predictions.#(confidence<-2)", **large_step})})


def test_a_met_condition_runs_the_step(services: FakeServices, service_urls: dict, http: httpx.Client) -> None:
    services.answer(predict("a"), body={"predictions": [{"confidence": -0.5}, {"confidence": -3.0}]})
    with running_router(cascade(), service_urls) as url:
        response = http.post(url, json={"instances": []})
    assert services.paths() == [predict("a"), predict("b")]
    assert response.json()["path"] == predict("b")


def test_an_unmet_condition_ends_the_sequence_with_the_previous_response(services: FakeServices,
                                                                        service_urls: dict, http: httpx.Client) -> None:
    services.answer(predict("a"), status=201, body={"predictions": [{"confidence": -0.5}]})
    with running_router(cascade(), service_urls) as url:
        response = http.post(url, json={"instances": []})
    assert services.paths() == [predict("a")]
    assert (response.status_code, response.json()) == (200, {"predictions": [{"confidence": -0.5}]})


def test_an_unmet_condition_after_a_soft_failure_answers_200_with_its_body(
        services: FakeServices, service_urls: dict, http: httpx.Client) -> None:
    services.answer(predict("a"), status=503, body={"error": "overloaded"})
    with running_router(cascade(), service_urls) as url:
        response = http.post(url, json={})
    assert (response.status_code, response.json()) == (200, {"error": "overloaded"})


def test_a_condition_on_a_response_that_is_not_json_fails_the_request(services: FakeServices,
                                                                     service_urls: dict, http: httpx.Client) -> None:
    services.answer(predict("a"), raw=b"plain text")
    with running_router(cascade(), service_urls) as url:
        response = http.post(url, json={})
    assert (response.status_code, response.json()) == (500, {"error": "Failed to process request",
                                                             "cause": "invalid response"})
    assert services.paths() == [predict("a")]


def test_a_failing_hard_step_stops_the_sequence_with_its_status_and_body(services: FakeServices,
                                                                        service_urls: dict, http: httpx.Client) -> None:
    services.answer(predict("a"), status=429, body={"error": "slow down"})
    graph = graph_manifest({"root": sequence({"serviceName": "a", "dependency": "Hard"}, {"serviceName": "b"})})
    with running_router(graph, service_urls) as url:
        response = http.post(url, json={})
    assert (response.status_code, response.json()) == (429, {"error": "slow down"})
    assert services.paths() == [predict("a")]


def test_a_failing_soft_step_lets_the_sequence_go_on(services: FakeServices, service_urls: dict,
                                                     http: httpx.Client) -> None:
    services.answer(predict("a"), status=500, body={"error": "boom"})
    graph = graph_manifest({"root": sequence({"serviceName": "a"}, {"serviceName": "b", "data": "$response"})})
    with running_router(graph, service_urls) as url:
        response = http.post(url, json={})
    assert response.status_code == 200
    assert response.json() == {"path": predict("b"), "received": {"error": "boom"}}


def test_the_last_steps_status_is_the_answer_even_a_soft_failure(services: FakeServices,
                                                                 service_urls: dict, http: httpx.Client) -> None:
    services.answer(predict("b"), status=503, body={"error": "draining"})
    graph = graph_manifest({"root": sequence({"serviceName": "a"}, {"serviceName": "b"})})
    with running_router(graph, service_urls) as url:
        response = http.post(url, json={})
    assert (response.status_code, response.json()) == (503, {"error": "draining"})


def test_map_predictions_to_instances_keeps_only_instances(services: FakeServices, service_urls: dict,
                                                           http: httpx.Client) -> None:
    services.answer(predict("a"), body={"predictions": [{"id": 1}, {"id": 2}], "model_name": "a"})
    graph = graph_manifest({"root": sequence(
        {"serviceName": "a"}, {"serviceName": "b", "data": "$response", "mapPredictionsToInstances": True})})
    with running_router(graph, service_urls) as url:
        http.post(url, json={})
    assert services.received[1].body == b'{"instances":[{"id":1},{"id":2}]}'


def test_a_body_that_is_not_json_comes_back_without_a_json_content_type(services: FakeServices,
                                                                       service_urls: dict, http: httpx.Client) -> None:
    services.answer(predict("a"), raw=b"tokens: 1 2 3")
    with running_router(graph_manifest({"root": sequence({"serviceName": "a"})}), service_urls) as url:
        response = http.post(url, json={})
    assert response.content == b"tokens: 1 2 3"
    assert "content-type" not in response.headers


@pytest.mark.parametrize("filler", [0, INLINE_DECODE_BYTES], ids=["decoded inline", "decoded in a worker thread"])
def test_conditions_on_large_bodies_decide_as_on_small_ones(services: FakeServices, service_urls: dict,
                                                            http: httpx.Client, filler: int) -> None:
    """Bodies past INLINE_DECODE_BYTES are parsed and matched off the event loop: same answers."""
    padding = "x" * filler
    with running_router(switch(("a", "[@this].#(route==small)"), ("b", "route")), service_urls) as url:
        http.post(url, json={"route": "small", "padding": padding})
        http.post(url, json={"route": "large", "padding": padding})
        unmatched = http.post(url, json={"padding": padding})
    services.answer(predict("a"), body={"predictions": [{"confidence": -3.0}], "padding": padding})
    with running_router(cascade(), service_urls) as url:
        escalated = http.post(url, json={"instances": []})
    assert (unmatched.status_code, unmatched.json()) == (404, NO_MATCH)
    assert services.paths() == [predict("a"), predict("b"), predict("a"), predict("b")]
    assert escalated.json()["path"] == predict("b")
    assert escalated.headers["content-type"] == "application/json"


# Switch

def switch(*conditions: tuple[str, str]) -> dict[str, Any]:
    steps = [{"serviceName": name, "condition": condition} for name, condition in conditions]
    return graph_manifest({"root": node("Switch", *steps)})


def test_the_first_matching_switch_step_wins(services: FakeServices, service_urls: dict, http: httpx.Client) -> None:
    graph = switch(("a", "[@this].#(route==small)"), ("b", "[@this].#(route_score>0.5)"), ("c", "route"))
    with running_router(graph, service_urls) as url:
        http.post(url, json={"route": "large", "route_score": 0.9})
        http.post(url, json={"route": "small", "route_score": 0.9})
        http.post(url, json={"route": "large", "route_score": 0.1})
    assert services.paths() == [predict("b"), predict("a"), predict("c")]


def test_a_switch_with_no_match_answers_404(services: FakeServices, service_urls: dict, http: httpx.Client) -> None:
    with running_router(switch(("a", "[@this].#(route==small)")), service_urls) as url:
        unmatched = http.post(url, json={"route": "large"})
        not_json = http.post(url, content=b"route=small")
    for response in (unmatched, not_json):
        assert (response.status_code, response.json()) == (404, NO_MATCH)
        assert response.headers["content-type"] == "application/json"
    assert services.received == []


def test_a_switch_answers_its_steps_failure_soft_or_hard(services: FakeServices, service_urls: dict,
                                                         http: httpx.Client) -> None:
    services.answer(predict("a"), status=503, body={"error": "down"})
    with running_router(switch(("a", "route")), service_urls) as url:
        response = http.post(url, json={"route": "x"})
    assert (response.status_code, response.json()) == (503, {"error": "down"})


# Splitter

SPLIT = graph_manifest({"root": node("Splitter", {"serviceName": "a", "weight": 30},
                                     {"serviceName": "b", "weight": 70}, {"serviceName": "c", "weight": 0})})


def split_paths(services: FakeServices, service_urls: dict, seed: int | None, draws: int) -> list[str]:
    services.reset()
    with running_router(SPLIT, service_urls, seed=seed) as url, httpx.Client(timeout=10) as client:
        for _ in range(draws):
            assert client.post(url, json={}).status_code == 200
    return services.paths()


def test_a_splitter_shares_requests_by_weight(services: FakeServices, service_urls: dict) -> None:
    paths = split_paths(services, service_urls, seed=0, draws=200)
    share_a = paths.count(predict("a")) / len(paths)
    assert 0.22 < share_a < 0.38  # 30 % expected; 2.5 standard deviations either side (seeded: no flakes)
    assert paths.count(predict("b")) == len(paths) - paths.count(predict("a"))


def test_a_seeded_splitter_draws_the_same_sequence(services: FakeServices, service_urls: dict) -> None:
    first = split_paths(services, service_urls, seed=7, draws=30)
    assert split_paths(services, service_urls, seed=7, draws=30) == first
    assert split_paths(services, service_urls, seed=8, draws=30) != first


# Ensemble

def test_an_ensemble_merges_by_step_name_or_index(services: FakeServices, service_urls: dict,
                                                  http: httpx.Client) -> None:
    services.answer(predict("a"), body={"score": 1, "label": "<cat>"}, delay=0.2)
    services.answer(predict("b"), body={"score": 2}, delay=0.2)
    services.answer(predict("c"), status=500, body={"error": "soft failure"})
    graph = graph_manifest({"root": node("Ensemble", {"name": "small", "serviceName": "a"}, {"serviceName": "b"},
                                         {"name": "flaky", "serviceName": "c"})})
    with running_router(graph, service_urls) as url:
        response = http.post(url, json={"instances": [1]})
    assert response.status_code == 200
    assert response.content == (b'{"1":{"score":2},"flaky":{"error":"soft failure"},'
                                b'"small":{"label":"<cat>","score":1}}')
    assert services.max_in_flight >= 2  # the steps ran side by side


def test_a_failing_hard_ensemble_step_decides_the_answer(services: FakeServices, service_urls: dict,
                                                         http: httpx.Client) -> None:
    services.answer(predict("b"), status=502, body={"error": "bad gateway", "detail": {"z": 1, "a": 2}})
    graph = graph_manifest({"root": node("Ensemble", {"serviceName": "a"},
                                         {"serviceName": "b", "dependency": "Hard"})})
    with running_router(graph, service_urls) as url:
        response = http.post(url, json={})
    assert response.status_code == 502
    assert response.content == b'{"detail":{"a":2,"z":1},"error":"bad gateway"}'


def test_an_ensemble_step_that_answers_no_json_object_fails_the_node(services: FakeServices,
                                                                    service_urls: dict, http: httpx.Client) -> None:
    services.answer(predict("b"), body=[1, 2])
    graph = graph_manifest({"root": node("Ensemble", {"serviceName": "a"}, {"name": "listy", "serviceName": "b"})})
    with running_router(graph, service_urls) as url:
        response = http.post(url, json={})
    assert response.status_code == 500
    assert response.json() == {"error": "Failed to process request",
                               "cause": "Ensemble step 'listy' answered 200 with a body that is not a JSON object"}


# Nested nodes and URLs

def test_nodes_nest_through_node_name(services: FakeServices, service_urls: dict, http: httpx.Client) -> None:
    graph = graph_manifest({
        "root": sequence({"serviceName": "a"}, {"nodeName": "choose", "data": "$response"}),
        "choose": node("Switch", {"nodeName": "both", "condition": "[@this].#(path%\"*a:predict\")"}),
        "both": node("Ensemble", {"name": "b", "serviceName": "b"}, {"name": "c", "serviceName": "c"}),
    })
    with running_router(graph, service_urls) as url:
        response = http.post(url, json={"q": 1})
    step_a = {"path": predict("a"), "received": {"q": 1}}
    assert response.json() == {"b": {"path": predict("b"), "received": step_a},
                               "c": {"path": predict("c"), "received": step_a}}


def test_a_service_url_is_called_verbatim(upstream: tuple[FakeServices, str], services: FakeServices,
                                          http: httpx.Client) -> None:
    graph = graph_manifest({"root": sequence({"serviceUrl": upstream[1] + "/openai/v1/completions"})})
    with running_router(graph) as url:
        assert http.post(url, json={"prompt": "hi"}).status_code == 200
    assert services.paths() == ["/openai/v1/completions"]


@pytest.mark.parametrize(("base", "protocol", "expected"), [
    ("http://127.0.0.1:9001", "v1", "http://127.0.0.1:9001/v1/models/small:predict"),
    ("http://127.0.0.1:9001/", "v2", "http://127.0.0.1:9001/v2/models/small/infer"),
    ("http://127.0.0.1:9001/v2/models/other/infer", "v1", "http://127.0.0.1:9001/v2/models/other/infer"),
])
def test_a_service_name_gets_the_predict_path_of_its_protocol(base: str, protocol: str, expected: str) -> None:
    assert service_url("small", base, protocol) == expected


def test_a_service_that_cannot_be_reached_fails_the_request_with_500(http: httpx.Client) -> None:
    dead = service_url("a", f"http://127.0.0.1:{free_port()}", "v1")
    with running_router(graph_manifest({"root": sequence({"serviceName": "a"})}), {"a": dead}) as url:
        response = http.post(url, json={})
    assert response.status_code == 500
    assert response.json()["error"] == "Failed to process request"
    assert response.json()["cause"].startswith(f'Post "{dead}": ConnectError')


def test_a_service_name_without_a_url_is_refused() -> None:
    with pytest.raises(ValueError, match="no URL for the service.s. a"):
        with running_router(graph_manifest({"root": sequence({"serviceName": "a"})})):
            pass


# Timeouts and limits

def test_service_client_timeout_fails_the_step_with_500(services: FakeServices, service_urls: dict,
                                                        http: httpx.Client) -> None:
    services.answer(predict("a"), delay=5)
    graph = graph_manifest({"root": sequence({"serviceName": "a"})}, router_timeouts={"serviceClient": 1})
    with running_router(graph, service_urls) as url:
        response = http.post(url, json={})
        assert response.status_code == 500
        assert "Client.Timeout exceeded" in response.json()["cause"]
        wait_for(lambda: services.abandoned == [predict("a")])


def test_server_write_timeout_cancels_the_graph_with_504(services: FakeServices, service_urls: dict,
                                                         http: httpx.Client) -> None:
    services.answer(predict("a"), delay=5)
    graph = graph_manifest({"root": sequence({"serviceName": "a"})}, router_timeouts={"serverWrite": 1})
    with running_router(graph, service_urls) as url:
        response = http.post(url, json={})
        assert response.status_code == 504
        assert response.json() == {"error": "Failed to process request",
                                   "cause": "the graph did not answer within routerTimeouts.serverWrite (1 s)"}
        wait_for(lambda: services.abandoned == [predict("a")])


def test_the_shorter_of_server_write_and_the_revision_timeout_applies() -> None:
    def deadlines(**spec: Any) -> ServerDeadlines:
        return ServerDeadlines.of(parse_graph(graph_manifest({"root": sequence({"serviceName": "a"})}, **spec)))

    assert (deadlines().write, deadlines().write_limit) == (60, "routerTimeouts.serverWrite")
    assert (deadlines(timeout=30).write, deadlines(timeout=30).write_limit) == (30, "spec.timeout")
    unlimited = deadlines(router_timeouts={"serverWrite": 0, "serverRead": 0, "serverIdle": 0})
    assert (unlimited.write, unlimited.read, unlimited.idle) == (None, None, float("inf"))
    assert deadlines(router_timeouts={"serverIdle": 0, "serverRead": 7}).idle == 7  # Go falls back to read


def test_a_client_that_leaves_cancels_the_steps(services: FakeServices, service_urls: dict) -> None:
    services.answer(predict("a"), delay=5)
    with running_router(graph_manifest({"root": sequence({"serviceName": "a"})}), service_urls) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url, json={}, timeout=0.5)
        wait_for(lambda: services.abandoned == [predict("a")])


def raw_connection(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def read_until_closed(connection: socket.socket) -> bytes:
    chunks = []
    while chunk := connection.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_server_read_timeout_answers_408_to_a_slow_body(service_urls: dict) -> None:
    graph = graph_manifest({"root": sequence({"serviceName": "a"})}, router_timeouts={"serverRead": 1})
    with running_router(graph, service_urls) as url, raw_connection(url) as connection:
        connection.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"partial\":")
        reply = read_until_closed(connection)
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert b"routerTimeouts.serverRead (1 s)" in reply


def test_server_idle_timeout_closes_idle_connections(service_urls: dict) -> None:
    graph = graph_manifest({"root": sequence({"serviceName": "a"})}, router_timeouts={"serverIdle": 1})
    with running_router(graph, service_urls) as url, raw_connection(url) as connection:
        connection.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert connection.recv(65536).startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        assert connection.recv(65536) == b""  # closed by the server
    assert time.monotonic() - started < 5


def test_a_body_over_the_limit_gets_413(service_urls: dict, http: httpx.Client) -> None:
    with running_router(graph_manifest({"root": sequence({"serviceName": "a"})}), service_urls,
                        max_body_bytes=100) as url:
        response = http.post(url, content=b"x" * 101)
    assert response.status_code == 413


def wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# Headers

def test_no_header_is_propagated_by_default(services: FakeServices, service_urls: dict, http: httpx.Client) -> None:
    with running_router(graph_manifest({"root": sequence({"serviceName": "a"})}), service_urls) as url:
        http.post(url, json={}, headers={"Authorization": "Bearer t", "X-Request-Id": "r1"})
    headers = services.received[0].headers
    assert "authorization" not in headers and "x-request-id" not in headers
    assert headers["content-type"] == "application/json"


def test_headers_matching_a_pattern_are_propagated(services: FakeServices, service_urls: dict,
                                                   http: httpx.Client) -> None:
    graph = graph_manifest({"root": sequence({"serviceName": "a"}, {"serviceName": "b"})})
    # Go matches canonical names (X-Request-Id), unanchored: a lower-case pattern finds nothing.
    with running_router(graph, service_urls, propagate=("Authorization", "^X-Req", "x-trace")) as url:
        http.post(url, content=b"{}", headers=[
            ("authorization", "Bearer t"), ("x-request-id", "r1"), ("x-trace", "t1"), ("x-tenant", "acme"),
            ("x-request-tag", "one"), ("x-request-tag", "two"), ("content-type", "text/plain")])
    for received in services.received:
        assert received.headers["authorization"] == "Bearer t"
        assert received.headers["x-request-id"] == "r1"
        assert received.headers["x-request-tag"] == "one, two"
        assert "x-trace" not in received.headers and "x-tenant" not in received.headers
        assert received.headers["content-type"] == "application/json"


def test_a_propagated_content_type_replaces_the_json_default(services: FakeServices, service_urls: dict,
                                                             http: httpx.Client) -> None:
    with running_router(graph_manifest({"root": sequence({"serviceName": "a"})}), service_urls,
                        propagate=("Content-Type",)) as url:
        http.post(url, content=b"hi", headers={"content-type": "text/plain"})
    assert services.received[0].headers["content-type"] == "text/plain"


# Readiness and the command line

def test_readyz_answers_readiness_and_calls_nothing(services: FakeServices, service_urls: dict,
                                                    http: httpx.Client) -> None:
    with running_router(graph_manifest({"root": sequence({"serviceName": "a"})}), service_urls) as url:
        ready = http.get(url + "/readyz")
        posted = http.post(url + "/readyz")
        graph_by_get = http.get(url + "/healthz")
    assert (ready.status_code, ready.content, posted.status_code) == (200, b"", 200)
    assert graph_by_get.status_code == 200  # any other path and method runs the graph, as in Go
    assert services.paths() == [predict("a")]


GRAPH_YAML = """\
apiVersion: serving.kserve.io/v1alpha1
kind: InferenceGraph
metadata:
  name: cli-graph
spec:
  nodes:
    root:
      routerType: Sequence
      steps:
        - serviceName: a
        - serviceName: b
          data: $response
"""


def test_the_command_line_serves_a_graph_file(tmp_path: Path, services: FakeServices,
                                              upstream: tuple[FakeServices, str], http: httpx.Client) -> None:
    graph_file = tmp_path / "graph.yaml"
    graph_file.write_text(GRAPH_YAML)
    port = free_port()
    command = [sys.executable, "-m", "router.graph", str(graph_file), "--port", str(port),
               "--service", f"a={upstream[1]}", "--service", f"b={upstream[1]}/v1/models/custom:predict",
               "--protocol", "v2", "--propagate_header", "X-Request-Id", "--seed", "1", "--log_level", "debug"]
    log_path = tmp_path / "router.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _ready(url) or process.poll() is not None, timeout=60)
        response = http.post(url + "/anything", json={"text_input": ["hi"]}, headers={"x-request-id": "r9"})
        assert response.status_code == 200, log_path.read_text()
        assert services.paths() == ["/v2/models/a/infer", "/v1/models/custom:predict"]
        assert all(received.headers["x-request-id"] == "r9" for received in services.received)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = log_path.read_text()
    assert "node root (Sequence): service a, service b" in log
    assert f"service a -> {upstream[1]}/v2/models/a/infer" in log
    assert "node root step 1 -> service b" in log  # the debug line of each step


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.parametrize(("yaml_text", "arguments", "message"), [
    (GRAPH_YAML, ["--service", "a=http://127.0.0.1:1"],
     "no URL for the service(s) b that graph 'cli-graph' calls: give it with --service NAME=URL"),
    (GRAPH_YAML, ["--service", "a=127.0.0.1:1", "--service", "b=http://127.0.0.1:1"],
     "--service 'a=127.0.0.1:1': expected NAME=URL with an http(s) URL"),
    (GRAPH_YAML, ["--service", "a=http://h", "--service", "b=http://h", "--propagate_header", "*Trace-Id*"],
     "--propagate_header '*Trace-Id*' is not a regular expression"),
    (GRAPH_YAML.replace("name: cli-graph", "name: Cli"), [], "metadata.name 'Cli' must consist of lower case"),
])
def test_the_command_line_refuses_what_cannot_run(tmp_path: Path, capsys: pytest.CaptureFixture, yaml_text: str,
                                                  arguments: list[str], message: str) -> None:
    graph_file = tmp_path / "graph.yaml"
    graph_file.write_text(yaml_text)
    with pytest.raises(SystemExit) as exit_info:
        main([str(graph_file), *arguments])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
