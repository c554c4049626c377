"""The gateway in front of the real stack on the demo models (predictors, transformers, a router
with tenants, the response cache and a SQLite ledger): after a mixed run of whole answers,
streams, failures, cache hits, idempotent retries and WebSocket requests, the tenant's usage is
the tokens the predictors generated, to the token; a stream the client leaves bills what it
delivered; and a router killed with -9 mid-run has lost no ledger record of an answer that
reported its usage."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets
import yaml

from devstack.local_stack import SIZES, Component, Ports, Stack, kserve_component, predictor, transformer
from devstack.local_stack import write_router_config
from runtime.demo import build_demo_model
from tests.devstack.stacks import running
from tests.serving.ports import free_port_block

PREDICTOR_ARGS = ["--device", "cpu", "--dtype", "float32", "--num_gpu_blocks", "128", "--attention_backend", "torch",
                  "--num_threads", "1"]
KEY = "sk-stack-tenant-0123"
ADMIN_KEY = "sk-stack-admin-0123"
CHAT = "/openai/v1/chat/completions"
COMPLETIONS = "/openai/v1/completions"


def bearer(key: str = KEY) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def tenants_file(path: Path) -> Path:
    tenants = [{"name": "team", "keys_sha256": [hashlib.sha256(KEY.encode()).hexdigest()],
                "tokens_per_minute": 1_000_000},
               {"name": "ops", "admin": True, "keys_sha256": [hashlib.sha256(ADMIN_KEY.encode()).hexdigest()]}]
    path.write_text(yaml.safe_dump({"tenants": tenants}))
    return path


def gateway_router(name: str, port: int, config: Path, directory: Path) -> Component:
    args = ["--config", str(config), "--tenants_file", str(directory / "tenants.yaml"), "--response_cache",
            "--usage_ledger", str(directory / f"{name}.db")]
    return kserve_component(name, "router", args, port, "router")


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    for size in SIZES:
        build_demo_model(size)
    directory = tmp_path_factory.mktemp("gateway-stack")
    tenants_file(directory / "tenants.yaml")
    base = free_port_block(30)
    ports = Ports(base=base, router=base + 15)
    config = write_router_config(directory / "router.yaml", ports, policy={"threshold": 0.233},
                                 cascade={"enabled": False})
    components = [gateway_router("router", ports.router, config, directory),
                  *(transformer(size, ports) for size in SIZES),
                  *(predictor(size, ports, PREDICTOR_ARGS) for size in SIZES)]
    with running(Stack(components, log_dir=directory)) as started:
        started.directory = directory
        started.config = config
        yield started


def predictors_tokens(stack: Stack) -> tuple[float, float]:
    """(prompt, generated) tokens counted by both predictors."""
    totals = [0.0, 0.0]
    for size in SIZES:
        lines = httpx.get(stack.component(f"predictor-{size}").url + "/metrics", timeout=10).text.splitlines()
        for index, name in enumerate(("vllm:prompt_tokens_total", "vllm:generation_tokens_total")):
            totals[index] += sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name + "{"))
    return totals[0], totals[1]


def usage(url: str) -> tuple[int, int]:
    report = httpx.get(url + "/v1/usage", params={"period": "all", "tenant": "team"}, headers=bearer(ADMIN_KEY))
    report.raise_for_status()
    total = report.json()["total"]
    return total["prompt_tokens"], total["completion_tokens"]


def chat(content: str, **fields) -> dict:
    return {"model": "auto", "messages": [{"role": "user", "content": content}], "max_tokens": 12,
            "temperature": 0, **fields}


def stream_events(client: httpx.Client, url: str, body: dict, headers: dict) -> list[dict]:
    with client.stream("POST", url, json=body, headers=headers) as response:
        assert response.status_code == 200, response.read()
        lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


async def websocket_requests(url: str, count: int) -> None:
    async with websockets.connect(url, additional_headers=bearer()) as socket:
        for index in range(count):
            await socket.send(json.dumps({"type": "generate", "id": f"r{index}", "prompt": f"Once upon a time {index}",
                                          "max_tokens": 6}))
            while json.loads(await socket.recv())["type"] != "done":
                pass


def test_usage_after_a_mixed_run_is_what_the_predictors_generated(stack):
    router = stack.component("router").url
    prompt_before, generated_before = predictors_tokens(stack)
    billed_before = usage(router)
    with httpx.Client(timeout=120) as client:
        for index in range(3):
            client.post(router + CHAT, json=chat(f"Tell me about tea {index}"), headers=bearer()).raise_for_status()
        hit = client.post(router + CHAT, json=chat("Tell me about tea 0"), headers=bearer())
        assert hit.headers["x-cache"] == "hit"
        retry = {**bearer(), "idempotency-key": "mixed-run-1"}
        first = client.post(router + CHAT, json=chat("Why is the sky blue?", temperature=0.7, seed=None), headers=retry)
        again = client.post(router + CHAT, json=chat("Why is the sky blue?", temperature=0.7, seed=None), headers=retry)
        assert again.headers["idempotent-replayed"] == "true" and again.json() == first.json()
        asked = stream_events(client, router + CHAT, chat("Stream with usage", temperature=0.5,
                                                          stream=True, stream_options={"include_usage": True}),
                              bearer())
        assert asked[-1]["choices"] == [] and asked[-1]["usage"]["completion_tokens"] > 0
        plain = stream_events(client, router + COMPLETIONS,
                              {"model": "auto", "prompt": "A stream without usage", "max_tokens": 9,
                               "temperature": 0.5, "stream": True}, bearer())
        assert all("usage" not in event for event in plain)
        # Longer than the demo models' context: admitted, then refused by the transformer.
        failed = client.post(router + CHAT, json=chat("tea " * 5000, max_tokens=4), headers=bearer())
        assert failed.status_code == 400, failed.text
    asyncio.run(websocket_requests(router.replace("http", "ws") + "/ws/v1/generate", 3))
    prompt_after, generated_after = predictors_tokens(stack)
    billed_prompt, billed_completion = (after - before for after, before in zip(usage(router), billed_before))
    assert billed_completion == generated_after - generated_before
    assert billed_prompt == prompt_after - prompt_before


def test_a_stream_the_client_leaves_bills_what_it_delivered(stack):
    router = stack.component("router").url
    before = usage(router)
    body = chat("Go on and on", stream=True, max_tokens=400, ignore_eos=True, stream_options={"include_usage": True,
                                                                                             "continuous_usage_stats": True})
    received = 0
    with httpx.Client(timeout=60) as client, client.stream("POST", router + CHAT, json=body, headers=bearer()) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                received = json.loads(line[6:])["usage"]["completion_tokens"]
                if received >= 5:
                    break
    time.sleep(1.0)
    billed = usage(router)[1] - before[1]
    # Billed: what reached the router, which is at least what reached the client, and well short
    # of the 400 tokens asked for.
    assert received <= billed < 400


def test_a_router_killed_mid_run_keeps_every_reported_record(stack, tmp_path):
    directory = stack.directory
    port = free_port_block(2)
    component = gateway_router("router-killed", port, stack.config, directory)
    victim = Stack([component], log_dir=tmp_path)
    reported: list[str] = []
    stop = threading.Event()

    def client_loop() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                try:
                    response = client.post(component.url + CHAT, json=chat("Kill test", temperature=0.8, max_tokens=4),
                                           headers=bearer())
                except httpx.HTTPError:
                    return
                if response.status_code == 200 and response.json().get("usage"):
                    reported.append(response.headers["x-gateway-request-id"])

    with running(victim):
        threads = [threading.Thread(target=client_loop) for _ in range(4)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len(reported) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        victim.component("router-killed").process.send_signal(signal.SIGKILL)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert len(reported) >= 20
    with sqlite3.connect(directory / "router-killed.db") as ledger:
        stored = {row[0] for row in ledger.execute("SELECT request_id FROM usage")}
    assert set(reported) <= stored
