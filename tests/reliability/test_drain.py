"""SIGTERM under load, on the predictor and on the transformer: every request in flight finishes
with its whole answer, a new one is refused (503 with Retry-After on an open connection, or no
connection at all once the listener is closed), and the process exits 0. On a WebSocket, the
requests in flight finish, a new one gets `overloaded`, and the connection then closes with 1012.
(One request in flight and gRPC refusals: tests/runtime/test_main.py.)"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import websockets

from serving.websocket_session import SHUTDOWN_CLOSE_REASON
from tests.runtime.conftest import start_server
from tests.servers import Server
from tests.transformer.conftest import start_transformer

from .clients import Outcome, complete, generate, stream_completion

IN_FLIGHT = 4
MAX_TOKENS = 200
PROMPTS = ["The quick brown fox", "Once upon a time", "def main():", "Lorem ipsum dolor"]
PROMPT_IDS = [[5 + index, 17, 29] for index in range(IN_FLIGHT)]


async def wait_until_running(predictor: Server, count: int) -> None:
    running = await asyncio.to_thread(predictor.wait_for_metric, "vllm:num_requests_running",
                                      lambda value: value == count)
    assert running == count


async def refused_after_sigterm(server: Server, send) -> None:
    """A request sent after SIGTERM on a connection of its own is never served."""
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as late_client:
        try:
            outcome: Outcome = await send(late_client)
        except httpx.TransportError:
            return
    assert outcome.status == 503 and outcome.retry_after == "1", outcome


def check_exit(server: Server) -> None:
    assert server.process.wait(60) == 0, server.log()[-3000:]


async def test_sigterm_on_a_loaded_predictor_finishes_every_request(tmp_path):
    predictor = start_server(tmp_path)
    try:
        async with httpx.AsyncClient(base_url=predictor.url, timeout=60) as client:
            in_flight = [asyncio.create_task(generate(client, ids, MAX_TOKENS)) for ids in PROMPT_IDS]
            await wait_until_running(predictor, IN_FLIGHT)
            predictor.process.send_signal(signal.SIGTERM)
            await refused_after_sigterm(predictor, lambda late: generate(late, PROMPT_IDS[0], 2))
            outcomes = await asyncio.gather(*in_flight)
        assert [outcome.status for outcome in outcomes] == [200] * IN_FLIGHT
        assert all(len(json.loads(outcome.text)) == MAX_TOKENS for outcome in outcomes)
        check_exit(predictor)
    finally:
        predictor.stop()


@contextmanager
def predictor_and_transformer(tmp_path: Path) -> Iterator[tuple[Server, Server]]:
    predictor = start_server(tmp_path)
    try:
        transformer = start_transformer(tmp_path, f"127.0.0.1:{predictor.http_port}")
        try:
            yield predictor, transformer
        finally:
            transformer.stop()
    finally:
        predictor.stop()


async def test_sigterm_on_a_loaded_transformer_finishes_every_stream(tmp_path):
    with predictor_and_transformer(tmp_path) as (predictor, transformer):
        async with httpx.AsyncClient(base_url=transformer.url, timeout=60) as client:
            expected = [await complete(client, prompt, MAX_TOKENS) for prompt in PROMPTS]
            in_flight = [asyncio.create_task(stream_completion(client, prompt, MAX_TOKENS))
                         for prompt in PROMPTS]
            await wait_until_running(predictor, IN_FLIGHT)
            transformer.process.send_signal(signal.SIGTERM)
            await refused_after_sigterm(transformer, lambda late: complete(late, PROMPTS[0], 2))
            outcomes = await asyncio.gather(*in_flight)
        for outcome, reference in zip(outcomes, expected):
            assert outcome.status == 200 and outcome.error is None and outcome.text == reference.text
        check_exit(transformer)


async def test_sigterm_on_a_transformer_finishes_websocket_requests_then_closes_with_1012(tmp_path):
    with predictor_and_transformer(tmp_path) as (predictor, transformer):
        async with httpx.AsyncClient(base_url=transformer.url, timeout=60) as client:
            expected = [await complete(client, prompt, MAX_TOKENS) for prompt in PROMPTS]
        url = f"ws://127.0.0.1:{transformer.http_port}/ws/v1/generate"
        async with websockets.connect(url) as socket:
            for index, prompt in enumerate(PROMPTS):
                await socket.send(json.dumps({"type": "generate", "id": str(index), "prompt": prompt,
                                              "max_tokens": MAX_TOKENS, "temperature": 0}))
            await wait_until_running(predictor, IN_FLIGHT)
            transformer.process.send_signal(signal.SIGTERM)
            await refused_after_sigterm(transformer, lambda late: complete(late, PROMPTS[0], 2))
            await socket.send(json.dumps({"type": "generate", "id": "late", "prompt": "hi", "max_tokens": 2}))
            texts, ends = {}, {}
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    message = json.loads(await asyncio.wait_for(socket.recv(), 60))
                    if message["type"] == "delta":
                        texts[message["id"]] = texts.get(message["id"], "") + message["text"]
                    else:
                        ends[message["id"]] = message
        assert closed.value.rcvd.code == 1012 and closed.value.rcvd.reason == SHUTDOWN_CLOSE_REASON
        assert ends["late"]["code"] == "overloaded"
        for index, reference in enumerate(expected):
            assert ends[str(index)]["type"] == "done", ends[str(index)]
            assert texts[str(index)] == reference.text
        check_exit(transformer)
