"""A transformer whose tokenizer has no chat template (a base model's, like Gemma 3 270M's): every
surface that takes chat messages - OpenAI chat completions (whole and streamed), vLLM's /tokenize
with messages, KServe v1 predict (whole and streamed) and the WebSocket generate protocol - refuses
them with a 400 (the WebSocket's `invalid_request`) that says why, and the same server goes on
serving plain prompts. (v2 infer and the generate extension take text only.)"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets

from tests.servers import MODEL_NAME, Server, start_process

NO_TEMPLATE = "this model has no chat template; use the completions API with a plain prompt"
MESSAGES = [{"role": "user", "content": "Hello there"}]
RECEIVE_SECONDS = 30


@pytest.fixture(scope="module")
def base_model_tokenizer(demo_dir, tmp_path_factory) -> Path:
    """The demo model's tokenizer without its chat template."""
    directory = tmp_path_factory.mktemp("no-chat-template")
    for name in ("tokenizer.json", "config.json"):
        shutil.copy(demo_dir / name, directory / name)
    config = json.loads((demo_dir / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="module")
def base_transformer(predictor, base_model_tokenizer, tmp_path_factory) -> Iterator[Server]:
    args = ["--tokenizer_dir", str(base_model_tokenizer), "--model_name", MODEL_NAME, "--enable_latency_logging",
            "false", "--predictor_host", f"127.0.0.1:{predictor.http_port}"]
    started = start_process("transformer", tmp_path_factory.mktemp("base-transformer"), args)
    yield started
    started.stop()


@pytest.fixture
def http(base_transformer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_transformer.url, timeout=60) as client:
        yield client


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_openai_chat_is_refused_and_completions_still_served(http, stream):
    refused = http.post("/openai/v1/chat/completions",
                        json={"model": MODEL_NAME, "messages": MESSAGES, "max_tokens": 4, "stream": stream})
    assert refused.status_code == 400
    assert refused.json()["error"] == {"message": NO_TEMPLATE, "type": "invalid_request_error", "param": None,
                                       "code": None}
    served = http.post("/openai/v1/completions",
                       json={"model": MODEL_NAME, "prompt": "Hello there", "max_tokens": 4, "stream": stream})
    assert served.status_code == 200, served.text


def test_tokenize_with_messages_is_refused(http):
    refused = http.post("/tokenize", json={"model": MODEL_NAME, "messages": MESSAGES})
    assert refused.status_code == 400 and refused.json()["error"]["message"] == NO_TEMPLATE
    assert http.post("/tokenize", json={"model": MODEL_NAME, "prompt": "Hello"}).status_code == 200


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_v1_predict_with_messages_is_refused(http, stream):
    predict = f"/v1/models/{MODEL_NAME}:predict"
    refused = http.post(predict, json={"instances": [{"messages": MESSAGES, "max_tokens": 4}], "stream": stream})
    assert refused.status_code == 400 and NO_TEMPLATE in refused.text
    served = http.post(predict, json={"instances": [{"prompt": "Hello there", "max_tokens": 4}], "stream": stream})
    assert served.status_code == 200, served.text


def test_a_websocket_chat_is_refused_and_the_connection_serves_on(base_transformer):
    async def exchange() -> list[dict]:
        async with websockets.connect(f"ws://127.0.0.1:{base_transformer.http_port}/ws/v1/generate") as socket:
            await socket.send(json.dumps({"type": "generate", "id": "chat", "messages": MESSAGES, "max_tokens": 4}))
            await socket.send(json.dumps({"type": "generate", "id": "prompt", "prompt": "Hello", "max_tokens": 4}))
            ended: dict[str, dict] = {}
            while len(ended) < 2:
                message = json.loads(await asyncio.wait_for(socket.recv(), RECEIVE_SECONDS))
                if message["type"] in ("done", "error"):
                    ended[message["id"]] = message
            return ended

    ended = asyncio.run(exchange())
    assert ended["chat"]["type"] == "error" and ended["chat"]["code"] == "invalid_request"
    assert ended["chat"]["message"] == NO_TEMPLATE
    assert ended["prompt"]["type"] == "done"
