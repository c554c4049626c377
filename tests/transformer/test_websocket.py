"""The transformer's WebSocket generate route (/ws/v1/generate) against a real predictor, with the
`websockets` client: requests of different lengths multiplexed on one connection, the same text
as the OpenAI routes for the same request and seed, cancel and disconnects that abort the
predictor's requests (and free their KV blocks), per-message errors, overload with a retry hint
and the per-connection limits set by flags."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import httpx
import pytest
import websockets

from tests.servers import MODEL_NAME, REPO_ROOT, Server, free_port
from tests.transformer.test_tool_calling import CHAT, NAMED, TOOLS

LONG = {"max_tokens": 1500, "ignore_eos": True, "temperature": 0}
SEEDED = {"temperature": 1.0, "seed": 7}
RECEIVE_SECONDS = 30


def ws_url(server: Server) -> str:
    return f"ws://127.0.0.1:{server.http_port}/ws/v1/generate"


def generate(request_id: str, **fields) -> str:
    return json.dumps({"type": "generate", "id": request_id, **fields})


async def receive(socket) -> dict:
    return json.loads(await asyncio.wait_for(socket.recv(), RECEIVE_SECONDS))


async def until_ends(socket, request_ids: set[str]) -> list[dict]:
    """Messages received until each id got its done or error."""
    messages = []
    while request_ids:
        messages.append(await receive(socket))
        if messages[-1]["type"] in ("done", "error"):
            request_ids.discard(messages[-1]["id"])
    return messages


def text_of(messages: list[dict], request_id: str) -> str:
    return "".join(message["text"] for message in messages if message["id"] == request_id and "text" in message)


def end_of(messages: list[dict], request_id: str) -> dict:
    return [message for message in messages if message["id"] == request_id][-1]


async def test_requests_of_different_lengths_interleave_on_one_connection(transformer):
    lengths = {"long": 40, "short": 4, "chat": 12}
    async with websockets.connect(ws_url(transformer)) as socket:
        await socket.send(generate("long", prompt="Classes and instances", max_tokens=40, ignore_eos=True))
        await socket.send(generate("short", prompt="Modules", max_tokens=4, ignore_eos=True))
        await socket.send(generate("chat", messages=[{"role": "user", "content": "hi"}], max_tokens=12,
                                   ignore_eos=True))
        messages = await until_ends(socket, set(lengths))
    for request_id, length in lengths.items():
        done = end_of(messages, request_id)
        assert done["type"] == "done" and done["finish_reason"] == "length" and done["model"] == MODEL_NAME
        assert done["usage"]["completion_tokens"] == length
    order = [message["id"] for message in messages]
    short_done = messages.index(end_of(messages, "short"))
    # The long request streamed before and after the short one finished.
    assert "long" in order[:short_done] and "long" in order[short_done + 1:]


PENALTIES = {"presence_penalty": 1.0, "frequency_penalty": 0.5, "repetition_penalty": 1.2, "logit_bias": {"300": 3.0}}


@pytest.mark.parametrize("with_stop, penalties", [(False, {}), (True, {}), (False, PENALTIES)],
                         ids=["plain", "stop", "penalties"])
async def test_deltas_concatenate_to_the_openai_text(transformer, with_stop, penalties):
    prompt, messages_in = "Classes and instances", [{"role": "user", "content": "Tell me about modules"}]
    settings = {**SEEDED, **penalties}
    with httpx.Client(base_url=transformer.url, timeout=60) as http:
        completion = http.post("/openai/v1/completions", json={"model": MODEL_NAME, "prompt": prompt,
                                                                "max_tokens": 30, **settings}).json()
        text = completion["choices"][0]["text"]
        # A stop string from the middle of the free text, so that it ends the request early.
        stop_strings = [text[12:16]] if with_stop else None
        completion = http.post("/openai/v1/completions", json={"model": MODEL_NAME, "prompt": prompt,
                                                                "max_tokens": 30, "stop": stop_strings,
                                                                **settings}).json()
        chat = http.post("/openai/v1/chat/completions", json={"model": MODEL_NAME, "messages": messages_in,
                                                               "max_tokens": 30, "stop": stop_strings,
                                                               **settings}).json()
    async with websockets.connect(ws_url(transformer)) as socket:
        await socket.send(generate("text", prompt=prompt, max_tokens=30, stop=stop_strings, **settings))
        await socket.send(generate("chat", messages=messages_in, max_tokens=30, stop=stop_strings, **settings))
        messages = await until_ends(socket, {"text", "chat"})
    for request_id, openai in (("text", completion), ("chat", chat)):
        choice = openai["choices"][0]
        assert text_of(messages, request_id) == choice.get("text", choice.get("message", {}).get("content"))
        assert end_of(messages, request_id)["finish_reason"] == choice["finish_reason"]
        assert end_of(messages, request_id)["usage"] == openai["usage"]
    if with_stop:
        assert completion["choices"][0]["finish_reason"] == "stop"


async def test_logprobs_come_with_each_delta(transformer):
    async with websockets.connect(ws_url(transformer)) as socket:
        await socket.send(generate("a", prompt="Modules", max_tokens=6, ignore_eos=True, logprobs=True))
        messages = await until_ends(socket, {"a"})
    logprobs = [value for message in messages for value in message.get("logprobs", [])]
    assert len(logprobs) == 6 and all(value <= 0 for value in logprobs)


async def test_cancel_mid_stream_aborts_the_predictor_request(transformer, predictor):
    async with websockets.connect(ws_url(transformer)) as socket:
        await socket.send(generate("endless", prompt="Tell me everything", **LONG))
        for _ in range(3):
            assert (await receive(socket))["type"] == "delta"
        assert predictor.metric("vllm:num_requests_running") == 1
        await socket.send(json.dumps({"type": "cancel", "id": "endless"}))
        messages = await until_ends(socket, {"endless"})
        assert messages[-1] == {"type": "done", "id": "endless", "finish_reason": "cancelled"}
        assert predictor.wait_for_metric("vllm:num_requests_running", lambda running: running == 0) == 0
        # The connection goes on, and the id may be used again.
        await socket.send(generate("endless", prompt="Modules", max_tokens=3))
        assert end_of(await until_ends(socket, {"endless"}), "endless")["type"] == "done"


async def test_closing_the_socket_mid_stream_frees_every_request(transformer, predictor):
    async with websockets.connect(ws_url(transformer)) as socket:
        for request_id in ("a", "b"):
            await socket.send(generate(request_id, prompt=f"Tell me everything about {request_id}", **LONG))
        seen = set()
        while seen != {"a", "b"}:
            seen.add((await receive(socket))["id"])
        assert predictor.metric("vllm:num_requests_running") == 2
    assert predictor.wait_for_metric("vllm:num_requests_running", lambda running: running == 0) == 0
    # No KV block is left behind by the two aborted requests.
    assert predictor.wait_for_metric("vllm:kv_cache_usage_perc", lambda usage: usage == 0) == 0


async def test_bad_messages_get_errors_and_the_connection_goes_on(transformer):
    async with websockets.connect(ws_url(transformer)) as socket:
        await socket.send("not json")
        not_json = await receive(socket)
        await socket.send(json.dumps({"type": "summon", "id": "x"}))
        unknown = await receive(socket)
        await socket.send(json.dumps({"type": "generate", "id": "x"}))
        missing = await receive(socket)
        await socket.send(generate("model", prompt="hi", model="gpt-4"))
        wrong_model = await receive(socket)
        await socket.send(generate("long", prompt="word " * 5000))
        too_long = await receive(socket)
        await socket.send(generate("dup", prompt="Modules", max_tokens=20, ignore_eos=True))
        await socket.send(generate("dup", prompt="Modules"))
        # The duplicate's error ends nothing: the first request with that id goes on to its done.
        messages = await until_ends(socket, {"dup"})
        messages += await until_ends(socket, {"dup"})
    assert not_json["code"] == "invalid_request" and not_json["id"] is None
    assert unknown["code"] == "invalid_request" and "unknown message type 'summon'" in unknown["message"]
    assert missing["code"] == "invalid_request" and "prompt" in missing["message"]
    assert wrong_model["code"] == "not_found" and wrong_model["id"] == "model"
    assert too_long["code"] == "invalid_request" and "context" in too_long["message"]
    assert [message["code"] for message in messages if message["type"] == "error"] == ["duplicate_id"]
    assert messages[-1]["type"] == "done" and messages[-1]["usage"]["completion_tokens"] == 20


async def test_an_unreachable_predictor_is_overloaded_with_a_retry_hint(launch_transformer):
    transformer = launch_transformer(f"127.0.0.1:{free_port()}")
    async with websockets.connect(ws_url(transformer)) as socket:
        await socket.send(generate("a", prompt="hi", max_tokens=3))
        error = await receive(socket)
    assert error["type"] == "error" and error["code"] == "overloaded" and error["retry_after"] == 1
    assert "unreachable" in error["message"]


async def test_per_connection_limits_from_flags(predictor, launch_transformer):
    transformer = launch_transformer(f"127.0.0.1:{predictor.http_port}", "--ws_max_in_flight", "1",
                                     "--max_body_bytes", "600", "--ws_idle_timeout", "1")
    async with websockets.connect(ws_url(transformer)) as socket:
        await socket.send(generate("a", prompt="Modules", max_tokens=10, ignore_eos=True))
        await socket.send(generate("b", prompt="Modules", max_tokens=10))
        messages = await until_ends(socket, {"a", "b"})
        assert end_of(messages, "b")["code"] == "too_many_requests"
        assert end_of(messages, "a")["type"] == "done"
        with pytest.raises(websockets.ConnectionClosed) as idle:
            await receive(socket)
    assert idle.value.rcvd.code == 1000
    async with websockets.connect(ws_url(transformer)) as socket:
        await socket.send(generate("big", prompt="x" * 600))
        with pytest.raises(websockets.ConnectionClosed) as too_big:
            await receive(socket)
    assert too_big.value.rcvd.code == 1009


def test_the_example_client_multiplexes_and_cancels(transformer):
    command = [sys.executable, str(REPO_ROOT / "examples" / "websocket_client.py"), "--url",
               f"ws://127.0.0.1:{transformer.http_port}", "--max_tokens", "8"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert finished.returncode == 0, finished.stderr
    ends = {message["id"]: message for message in map(json.loads, finished.stdout.splitlines()[:-3])
            if message["type"] in ("done", "error")}
    assert ends["chat"]["usage"]["completion_tokens"] <= 8 and ends["completion"]["type"] == "done"
    assert ends["cancelled"]["finish_reason"] in ("cancelled", "stop")


async def test_a_structured_output_constrains_a_websocket_request(transformer):
    async with websockets.connect(ws_url(transformer)) as socket:
        await socket.send(generate("choice", prompt="Pick", max_tokens=10, guided_choice=["left", "right"], **SEEDED))
        await socket.send(generate("json", prompt="Give", max_tokens=40, temperature=0,
                                   structured_outputs={"json": {"enum": [1, 2, 3]}}))
        await socket.send(generate("both", prompt="x", guided_regex="a", guided_choice=["a"]))
        messages = await until_ends(socket, {"choice", "json", "both"})
    assert text_of(messages, "choice") in ("left", "right") and end_of(messages, "choice")["finish_reason"] == "stop"
    assert json.loads(text_of(messages, "json")) in (1, 2, 3)
    refused = end_of(messages, "both")
    assert refused["type"] == "error" and "guided_regex and guided_choice" in refused["message"]


async def test_a_forced_tool_call_comes_on_the_done_message_as_on_the_chat_route(transformer):
    chat = {"messages": CHAT["messages"], "max_tokens": CHAT["max_tokens"], **SEEDED}
    async with websockets.connect(ws_url(transformer)) as socket:
        await socket.send(generate("named", tools=TOOLS, tool_choice=NAMED, **chat))
        await socket.send(generate("prompt", prompt="x", tools=TOOLS))
        messages = await until_ends(socket, {"named", "prompt"})
    done = end_of(messages, "named")
    assert done["finish_reason"] == "tool_calls" and text_of(messages, "named") == ""
    [call] = done["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function"
    over_http = httpx.post(f"{transformer.url}/openai/v1/chat/completions", timeout=60,
                           json={"model": MODEL_NAME, "tools": TOOLS, "tool_choice": NAMED, **chat}).json()
    assert call["function"] == over_http["choices"][0]["message"]["tool_calls"][0]["function"]
    refused = end_of(messages, "prompt")
    assert refused["type"] == "error" and "tools go with `messages`" in refused["message"]
