"""The whole stack end to end, as `make serve` runs it (devstack.local_stack) on the demo models:
the router's OpenAI edge routes each class of prompt, streams, cascades and falls back, and a
client that leaves frees the predictor's request; InferenceGraphs route, cascade and split
traffic through the real transformers; the example clients run against it. The large model's
predictor and transformer are stopped by the last test."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from runtime.demo import build_demo_model
from devstack.local_stack import (
    REPO_ROOT,
    SIZES,
    Component,
    Ports,
    Stack,
    graph_runner,
    router,
    service_urls,
    stack_components,
    stop_components,
    write_router_config,
)
from tests.devstack.stacks import running
from tests.serving.ports import free_port_block

# As the predictor tests run it: small, CPU-only, one thread per server on the suite's 2 cores.
PREDICTOR_ARGS = ["--device", "cpu", "--dtype", "float32", "--num_gpu_blocks", "128", "--attention_backend", "torch",
                  "--num_threads", "1"]
CASCADE_GRAPH = REPO_ROOT / "manifests" / "graphs" / "cascade.yaml"
CHAT = "/openai/v1/chat/completions"
CHIT_CHAT = ["How are you doing today?", "Hi! Nice weather, isn't it?"]
CODE = ["Write a Python function that merges two sorted lists, and explain its time complexity.",
        "Why does this fail?\n```js\nconst total = items.reduce((a, b) => a + b);\n```"]
MATHS = ["Calculate the integral of x^2 * sin(x) from 0 to pi and prove the result.",
         "Solve for x: 3x^2 + 2x - 5 = 0, and compute the sum of the roots."]
# Greedy, the small demo model answers "wh" and stops (it goes on with "ether..."): a complete
# answer whose confidence is about -7.7.
STOPPED_EARLY = {"max_tokens": 8, "temperature": 0, "stop": ["e"]}
RULE_POLICY = {"threshold": 0.233}
CASCADE = {"enabled": True, "min_confidence": -2.5}
SPLIT_REQUESTS = 300
SPLIT_SMALL_PERCENT = 70


def split_graph(path: Path) -> Path:
    steps = [{"name": "small", "serviceName": "llm-small", "weight": SPLIT_SMALL_PERCENT},
             {"name": "large", "serviceName": "llm-large", "weight": 100 - SPLIT_SMALL_PERCENT}]
    graph = {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "InferenceGraph", "metadata": {"name": "llm-split"},
             "spec": {"nodes": {"root": {"routerType": "Splitter", "steps": steps}}}}
    path.write_text(yaml.safe_dump(graph))
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    """The stack with the router/router.yaml config on the rule policy (the cascade escalates
    below -2.5), plus a router that accepts any confidence, and graph runners for the cascade and
    a 70/30 split."""
    for size in SIZES:
        build_demo_model(size)
    directory = tmp_path_factory.mktemp("stack")
    base = free_port_block(40)
    ports = Ports(base=base, router=base + 15, graph=base + 17)
    # The rule policy: the demo models' random weights give the learned one nothing to go by.
    config = write_router_config(directory / "router.yaml", ports, policy=RULE_POLICY, cascade=CASCADE)
    confident = write_router_config(directory / "confident.yaml", ports, policy=RULE_POLICY,
                                    cascade={**CASCADE, "min_confidence": -1000.0})
    services = service_urls(ports)
    extras = [router("router-confident", base + 16, confident),
              graph_runner("graph-cascade", base + 18, CASCADE_GRAPH, services),
              graph_runner("graph-split", base + 19, split_graph(directory / "split.yaml"), services, "--seed", "0")]
    with running(Stack(stack_components(ports, config, PREDICTOR_ARGS) + extras, log_dir=directory)) as started:
        yield started


def url(stack: Stack, name: str) -> str:
    return stack.component(name).url


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60) as client:
        yield client


def chat(content: str, model: str = "auto", **fields) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], **fields}


def text_of(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def streamed_text(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    events = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    return "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks if chunk["choices"])


def metric(component: Component, name: str) -> float:
    """A predictor's metric, summed over its series."""
    lines = httpx.get(f"{component.url}/metrics", timeout=10).text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name + "{"))


def predict(client: httpx.Client, address: str, prompt: str, **fields) -> str:
    body = {"instances": [{"prompt": prompt, "max_tokens": 6, "temperature": 0, **fields}]}
    response = client.post(address, json=body)
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]["text"]


# The OpenAI edge

@pytest.mark.parametrize(("prompts", "route"), [(CODE, "large"), (MATHS, "large"), (CHIT_CHAT, "small")],
                         ids=["code", "maths", "chit-chat"])
def test_the_edge_routes_each_class_of_prompt(stack, http, prompts, route):
    for prompt in prompts:
        # Streamed: the cascade only ever changes whole answers.
        response = http.post(url(stack, "router") + CHAT, json=chat(prompt, max_tokens=2, stream=True))
        assert response.status_code == 200 and response.headers["x-route"] == route, prompt


def test_a_stream_through_the_edge_says_what_the_model_says_whole(stack, http):
    sampling = {"max_tokens": 12, "temperature": 0.8, "seed": 7}
    whole = http.post(url(stack, "router") + CHAT, json=chat(CHIT_CHAT[0], model="llm-small", **sampling))
    streamed = http.post(url(stack, "router") + CHAT, json=chat(CHIT_CHAT[0], stream=True, **sampling))
    assert streamed.headers["x-route"] == "small"
    assert streamed_text(streamed) == text_of(whole) != ""


def test_a_named_model_answers_whatever_the_prompt(stack, http):
    response = http.post(url(stack, "router") + CHAT, json=chat(CHIT_CHAT[0], model="llm-large", max_tokens=2))
    assert response.headers["x-route"] == "large" and response.json()["model"] == "llm-large"


def test_the_cascade_escalates_unsure_answers_by_its_threshold(stack, http):
    small = http.post(url(stack, "transformer-small") + CHAT, json=chat(CHIT_CHAT[0], model="llm-small",
                                                                        **STOPPED_EARLY))
    assert small.json()["choices"][0]["finish_reason"] == "stop" and text_of(small), "the demo model changed"
    large = http.post(url(stack, "transformer-large") + CHAT, json=chat(CHIT_CHAT[0], model="llm-large",
                                                                        **STOPPED_EARLY))
    escalated = http.post(url(stack, "router") + CHAT, json=chat(CHIT_CHAT[0], **STOPPED_EARLY))
    kept = http.post(url(stack, "router-confident") + CHAT, json=chat(CHIT_CHAT[0], **STOPPED_EARLY))
    assert escalated.headers["x-route"] == "large" and escalated.headers["x-route-escalated"] == "low_confidence"
    assert text_of(escalated) == text_of(large)
    assert kept.headers["x-route"] == "small" and "x-route-escalated" not in kept.headers
    assert text_of(kept) == text_of(small) and kept.json()["choices"][0]["logprobs"] is None


def test_a_client_leaving_mid_stream_frees_the_predictors_request(stack, http):
    predictor = stack.component("predictor-small")
    body = chat(CHIT_CHAT[0], stream=True, max_tokens=1500, ignore_eos=True, temperature=0)
    with http.stream("POST", url(stack, "router") + CHAT, json=body) as response:
        lines = response.iter_lines()
        assert [next(lines) for _ in range(4)][0].startswith("data: ")
        assert metric(predictor, "vllm:num_requests_running") == 1
    deadline = time.monotonic() + 10
    while metric(predictor, "vllm:num_requests_running") != 0:
        assert time.monotonic() < deadline, "the predictor still runs the abandoned request"
        time.sleep(0.05)


# InferenceGraphs

def test_the_route_graph_sends_each_prompt_to_its_models_transformer(stack, http):
    for prompt, model in ((CHIT_CHAT[0], "small"), (CODE[0], "large")):
        direct = predict(http, f"{url(stack, f'transformer-{model}')}/v1/models/llm-{model}:predict", prompt)
        assert predict(http, url(stack, "graph"), prompt) == direct, model


def test_the_cascade_graph_asks_the_large_model_when_the_small_one_is_unsure(stack, http):
    # The demo model is never sure: its confidence is far below the graph's -2.5.
    large = predict(http, f"{url(stack, 'transformer-large')}/v1/models/llm-large:predict", CHIT_CHAT[0])
    assert predict(http, url(stack, "graph-cascade"), CHIT_CHAT[0]) == large


def test_a_splitter_shares_requests_by_weight(stack):
    predictors = [stack.component(f"predictor-{size}") for size in SIZES]
    before = [metric(predictor, "vllm:request_success_total") for predictor in predictors]
    body = {"instances": [{"prompt": "Hi", "max_tokens": 1}]}
    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: client.post(url(stack, "graph-split"), json=body).status_code,
                                 range(SPLIT_REQUESTS)))
    assert statuses == [200] * SPLIT_REQUESTS
    small, large = (metric(predictor, "vllm:request_success_total") - count
                    for predictor, count in zip(predictors, before))
    assert small + large == SPLIT_REQUESTS
    assert abs(100 * small / SPLIT_REQUESTS - SPLIT_SMALL_PERCENT) < 7


# The examples

def run_example(name: str, *args: str) -> str:
    finished = subprocess.run([sys.executable, str(REPO_ROOT / "examples" / name), *args], capture_output=True,
                              text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    return finished.stdout


def test_the_example_clients_run_against_the_stack(stack):
    edge = run_example("router_openai_client.py", "--url", url(stack, "router"), "--max_tokens", "6")
    assert edge.count("routing: x-route=large, x-route-score=") == 2 and "model: llm-large" in edge
    graph = run_example("graph_client.py", "--url", url(stack, "graph"), "--prompt", CHIT_CHAT[0], "--max_tokens", "3")
    assert "finish_reason: length" in graph and "tokens: " in graph


# Fallback: stops the large model, so it comes last.

def test_the_edge_falls_back_when_the_large_model_is_stopped(stack, http):
    fallbacks = []
    for stopped in ("predictor-large", "transformer-large"):
        stop_components([stack.component(stopped)])
        whole = http.post(url(stack, "router") + CHAT, json=chat(CODE[0], max_tokens=2))
        streamed = http.post(url(stack, "router") + CHAT, json=chat(CODE[0], max_tokens=2, stream=True))
        for response in (whole, streamed):
            assert response.status_code == 200 and response.headers["x-route"] == "small", response.text
        assert whole.json()["model"] == "llm-small" and streamed.text.endswith("data: [DONE]\n\n")
        fallbacks.append(whole.headers["x-route-fallback"])
    # A transformer without its predictor answers 503; one that is stopped refuses connections.
    assert fallbacks == ["large:unavailable", "large:down"]
    named = http.post(url(stack, "router") + CHAT, json=chat(CODE[0], model="llm-large", max_tokens=2))
    assert named.status_code == 503 and named.headers["retry-after"]
