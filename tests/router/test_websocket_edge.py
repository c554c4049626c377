"""The router edge's WebSocket generate route, through a real `python -m router` in front of fake
transformers, with the `websockets` client: requests routed by policy, model name or the
handshake's x-route header and multiplexed on one connection; each sent as an OpenAI stream with
usage; fallback when the chosen model is overloaded, an overloaded named model as an error with a
retry hint; cancel and disconnects that close the target's stream; API keys (1008); draining on
SIGTERM. Then in
front of a real transformer and predictor: the OpenAI route's text, and a cancel that aborts the
predictor's request."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator

import httpx
import pytest
import websockets

from tests.runtime.conftest import start_server
from tests.servers import MODEL_NAME, Server
from tests.transformer.conftest import start_transformer
from tests.transformer.test_tool_calling import CHAT, NAMED, TOOLS

from .conftest import start_router, write_config
from .edge_fakes import FakeTransformer, running_transformers
from .test_openai_edge import CHIT_CHAT, DEMANDING, edge_config

RECEIVE_SECONDS = 10
API_KEY = "open-sesame"


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeTransformer]]:
    with running_transformers("llm-small-a", "llm-large-a") as running:
        yield running


@pytest.fixture(scope="module")
def router(fakes, tmp_path_factory) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("ws-edge")
    config = edge_config(directory / "router.yaml", [fakes["llm-small-a"].url], [fakes["llm-large-a"].url])
    keys = directory / "keys.txt"
    keys.write_text(f"# the tests' key\n{API_KEY}\n")
    server = start_router(config, directory, "--api_keys_file", str(keys))
    yield server
    assert server.stop() == 0, server.log()[-3000:]


@pytest.fixture
def url(router, fakes) -> str:
    for fake in fakes.values():
        fake.reset()
    return f"ws://127.0.0.1:{router.http_port}/ws/v1/generate"


def connect(url: str, **headers: str):
    return websockets.connect(url, additional_headers={"authorization": f"Bearer {API_KEY}", **headers})


def generate(request_id: str, **fields) -> str:
    return json.dumps({"type": "generate", "id": request_id, **fields})


async def until_ends(socket, request_ids: set[str]) -> list[dict]:
    messages = []
    while request_ids:
        messages.append(json.loads(await asyncio.wait_for(socket.recv(), RECEIVE_SECONDS)))
        if messages[-1]["type"] in ("done", "error"):
            request_ids.discard(messages[-1]["id"])
    return messages


def ends(messages: list[dict]) -> dict[str, dict]:
    return {message["id"]: message for message in messages if message["type"] in ("done", "error")}


def text_of(messages: list[dict], request_id: str) -> str:
    return "".join(message.get("text", "") for message in messages if message["id"] == request_id)


async def test_requests_are_routed_by_policy_and_multiplexed(url, fakes):
    async with connect(url) as socket:
        await socket.send(generate("easy", prompt=CHIT_CHAT, max_tokens=8, seed=3, stop=["\n\n"],
                                   presence_penalty=0.5, repetition_penalty=1.1, logit_bias={"5": 2}, min_p=0.05,
                                   stop_token_ids=[9]))
        await socket.send(generate("hard", messages=[{"role": "user", "content": DEMANDING}], logprobs=True))
        messages = await until_ends(socket, {"easy", "hard"})
    done = ends(messages)
    assert done["easy"]["model"] == "llm-small" and done["hard"]["model"] == "llm-large"
    assert done["easy"]["finish_reason"] == "stop"
    assert done["easy"]["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    assert text_of(messages, "easy") == text_of(messages, "hard") == "0 1 2 "
    # Each went on as an OpenAI stream that asks for its usage on every chunk (the gateway meters it:
    # the router has API keys); unset max_tokens means the rest of the context.
    [to_small] = fakes["llm-small-a"].received
    assert to_small["path"] == "/openai/v1/completions"
    assert to_small["body"] == {"model": "llm-small", "prompt": CHIT_CHAT, "max_tokens": 8, "seed": 3,
                                "stop": ["\n\n"], "stream": True,
                                "stream_options": {"include_usage": True, "continuous_usage_stats": True},
                                "presence_penalty": 0.5, "repetition_penalty": 1.1, "logit_bias": {"5": 2.0},
                                "min_p": 0.05, "stop_token_ids": [9]}
    [to_large] = fakes["llm-large-a"].received
    assert to_large["path"] == "/openai/v1/chat/completions"
    assert to_large["body"]["max_tokens"] is None and to_large["body"]["logprobs"] is True


async def test_a_structured_output_goes_on_to_the_target_as_written(url, fakes):
    constraint = {"structured_outputs": {"json": {"type": "object"}, "strict": True}}
    async with connect(url) as socket:
        await socket.send(generate("json", prompt=CHIT_CHAT, max_tokens=8, **constraint))
        await until_ends(socket, {"json"})
    [to_small] = fakes["llm-small-a"].received
    assert to_small["body"]["structured_outputs"] == constraint["structured_outputs"]


async def test_a_model_name_or_the_handshake_hint_chooses_the_target(url):
    async with connect(url, **{"x-route": "large"}) as socket:
        await socket.send(generate("hinted", prompt=CHIT_CHAT))
        await socket.send(generate("named", prompt=DEMANDING, model="llm-small"))
        await socket.send(generate("unknown", prompt=CHIT_CHAT, model="gpt-4"))
        done = ends(await until_ends(socket, {"hinted", "named", "unknown"}))
    assert done["hinted"]["model"] == "llm-large" and done["named"]["model"] == "llm-small"
    assert done["unknown"]["code"] == "not_found"


async def test_an_overloaded_model_falls_back_or_is_an_error_with_a_retry_hint(url, fakes):
    fakes["llm-small-a"].status = 503
    async with connect(url) as socket:
        await socket.send(generate("auto", prompt=CHIT_CHAT))
        await socket.send(generate("named", prompt=CHIT_CHAT, model="llm-small"))
        done = ends(await until_ends(socket, {"auto", "named"}))
    assert done["auto"]["type"] == "done" and done["auto"]["model"] == "llm-large"
    assert done["named"]["code"] == "overloaded" and done["named"]["retry_after"] == 1
    assert "llm-small-a answered 503" in done["named"]["message"]


async def test_a_model_that_fails_before_its_first_token_falls_back(url, fakes):
    fakes["llm-small-a"].fails_before_first_token = True
    async with connect(url) as socket:
        await socket.send(generate("auto", messages=[{"role": "user", "content": CHIT_CHAT}]))
        await socket.send(generate("named", prompt=CHIT_CHAT, model="llm-small"))
        messages = await until_ends(socket, {"auto", "named"})
    done = ends(messages)
    assert done["auto"]["type"] == "done" and done["auto"]["model"] == "llm-large"
    assert text_of(messages, "auto") == "0 1 2 "
    assert done["named"]["type"] == "error" and "timed out in the queue" in done["named"]["message"]


async def test_a_target_that_breaks_mid_stream_is_an_upstream_error(url, fakes):
    fakes["llm-small-a"].stream_breaks = True
    async with connect(url) as socket:
        await socket.send(generate("a", prompt=CHIT_CHAT))
        messages = await until_ends(socket, {"a"})
    assert messages[-1]["code"] == "upstream_error" and "small model" in messages[-1]["message"]


async def wait_for_abandoned(fake: FakeTransformer, count: int) -> int:
    deadline = time.monotonic() + RECEIVE_SECONDS
    while fake.abandoned_streams < count and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return fake.abandoned_streams


async def test_cancel_closes_the_targets_stream(url, fakes):
    fakes["llm-small-a"].stream_events = 200
    async with connect(url) as socket:
        await socket.send(generate("long", prompt=CHIT_CHAT))
        assert json.loads(await socket.recv())["type"] == "delta"
        await socket.send(json.dumps({"type": "cancel", "id": "long"}))
        messages = await until_ends(socket, {"long"})
        assert messages[-1] == {"type": "done", "id": "long", "finish_reason": "cancelled"}
        assert await wait_for_abandoned(fakes["llm-small-a"], 1) == 1


async def test_closing_the_socket_closes_every_targets_stream(url, fakes):
    for fake in fakes.values():
        fake.stream_events = 200
    async with connect(url) as socket:
        await socket.send(generate("small", prompt=CHIT_CHAT))
        await socket.send(generate("large", prompt=DEMANDING))
        seen = set()
        while seen != {"small", "large"}:
            seen.add(json.loads(await socket.recv())["id"])
    assert await wait_for_abandoned(fakes["llm-small-a"], 1) == 1
    assert await wait_for_abandoned(fakes["llm-large-a"], 1) == 1


async def test_a_browser_key_sent_as_a_subprotocol_is_checked_and_passed_on(url, fakes):
    async with websockets.connect(url, subprotocols=[f"bearer.{API_KEY}"]) as socket:
        await socket.send(generate("browser", prompt=CHIT_CHAT))
        assert ends(await until_ends(socket, {"browser"}))["browser"]["type"] == "done"
    [to_small] = fakes["llm-small-a"].received
    assert to_small["headers"]["authorization"] == f"Bearer {API_KEY}"


async def test_a_bad_key_closes_with_1008(url, fakes):
    for headers in ({}, {"authorization": "Bearer wrong"}):
        async with websockets.connect(url, additional_headers=headers) as socket:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await socket.recv()
        assert closed.value.rcvd.code == 1008 and "API key" in closed.value.rcvd.reason
    assert not fakes["llm-small-a"].received and not fakes["llm-large-a"].received


# In front of a real transformer and predictor

async def test_sigterm_finishes_requests_in_flight_then_closes_with_1012(fakes, tmp_path):
    """The router drains its WebSockets as the transformer does: the request in flight streams to
    its end, a new one is refused as overloaded, then 1012, and the process exits 0."""
    for fake in fakes.values():
        fake.reset()
        fake.stream_events = 30
    config = edge_config(tmp_path / "router.yaml", [fakes["llm-small-a"].url], [fakes["llm-large-a"].url])
    router = start_router(config, tmp_path)
    try:
        async with websockets.connect(f"ws://127.0.0.1:{router.http_port}/ws/v1/generate") as socket:
            await socket.send(generate("a", prompt=CHIT_CHAT))
            assert json.loads(await asyncio.wait_for(socket.recv(), RECEIVE_SECONDS))["type"] == "delta"
            router.process.send_signal(signal.SIGTERM)
            await socket.send(generate("late", prompt=CHIT_CHAT))
            messages = []
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    messages.append(json.loads(await asyncio.wait_for(socket.recv(), RECEIVE_SECONDS)))
        assert closed.value.rcvd.code == 1012
        assert ends(messages)["late"]["code"] == "overloaded"
        assert ends(messages)["a"]["type"] == "done"
        assert "0 " + text_of(messages, "a") == "".join(f"{index} " for index in range(30))
        assert router.process.wait(30) == 0, router.log()[-3000:]
    finally:
        router.stop()
        for fake in fakes.values():
            fake.reset()


@pytest.fixture(scope="module")
def real_stack(fakes, tmp_path_factory) -> Iterator[tuple[Server, Server, Server]]:
    """(predictor, transformer, router): the router's small target is the real transformer."""
    directory = tmp_path_factory.mktemp("ws-real")
    predictor = start_server(directory)
    try:
        transformer = start_transformer(directory, f"127.0.0.1:{predictor.http_port}")
        try:
            targets = {"small": {"model": MODEL_NAME, "urls": [transformer.url]},
                       "large": {"model": "llm-large", "urls": [fakes["llm-large-a"].url]}}
            config = write_config(directory / "router.yaml", targets=targets)
            router = start_router(config, directory)
            yield predictor, transformer, router
            router.stop()
        finally:
            transformer.stop()
    finally:
        predictor.stop()


async def test_through_a_real_transformer_the_text_is_the_openai_routes(real_stack):
    _, transformer, router = real_stack
    request = {"prompt": "Classes and instances", "max_tokens": 24, "temperature": 1.0, "seed": 11}
    openai = httpx.post(f"{transformer.url}/openai/v1/completions", json={"model": MODEL_NAME, **request},
                        timeout=60).json()
    async with websockets.connect(f"ws://127.0.0.1:{router.http_port}/ws/v1/generate") as socket:
        await socket.send(generate("a", model=MODEL_NAME, **request))
        messages = await until_ends(socket, {"a"})
    assert text_of(messages, "a") == openai["choices"][0]["text"]
    assert messages[-1]["usage"] == openai["usage"] and messages[-1]["model"] == MODEL_NAME


async def test_through_a_real_transformer_cancel_aborts_the_predictor_request(real_stack):
    predictor, _, router = real_stack
    async with websockets.connect(f"ws://127.0.0.1:{router.http_port}/ws/v1/generate") as socket:
        await socket.send(generate("long", model=MODEL_NAME, prompt="Tell me everything", max_tokens=1500,
                                   ignore_eos=True))
        for _ in range(3):
            assert json.loads(await asyncio.wait_for(socket.recv(), RECEIVE_SECONDS))["type"] == "delta"
        assert predictor.metric("vllm:num_requests_running") == 1
        await socket.send(json.dumps({"type": "cancel", "id": "long"}))
        assert (await until_ends(socket, {"long"}))[-1]["finish_reason"] == "cancelled"
        assert predictor.wait_for_metric("vllm:num_requests_running", lambda running: running == 0) == 0


async def test_through_a_real_transformer_a_forced_tool_call_comes_on_the_done_message(real_stack):
    _, transformer, router = real_stack
    request = {"messages": CHAT["messages"], "tools": TOOLS, "tool_choice": NAMED, "max_tokens": 200,
               "temperature": 1.0, "seed": 7}
    openai = httpx.post(f"{transformer.url}/openai/v1/chat/completions", json={"model": MODEL_NAME, **request},
                        timeout=60).json()
    async with websockets.connect(f"ws://127.0.0.1:{router.http_port}/ws/v1/generate") as socket:
        await socket.send(generate("call", model=MODEL_NAME, **request))
        messages = await until_ends(socket, {"call"})
    done = messages[-1]
    assert done["finish_reason"] == "tool_calls" and text_of(messages, "call") == ""
    expected = openai["choices"][0]["message"]["tool_calls"]
    assert [call["function"] for call in done["tool_calls"]] == [call["function"] for call in expected]
