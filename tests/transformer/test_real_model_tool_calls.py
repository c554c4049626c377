"""A real trained model calls a tool: SmolLM2-135M-Instruct (the real-models extra), served by a
real predictor behind a real transformer, answers the official openai client's chat request with
a call of the function tool_choice names, or of one of the tools under "required", whose
arguments validate against that function's schema. Skipped without the real-models extra."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import openai
import pytest

from tests.engine.test_real_models import real_checkpoint
from tests.servers import MODEL_NAME, Server, start_process

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24},
                                            "unit": {"enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 16}}, "required": ["zone"],
        "additionalProperties": False}
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
TOOLS = [{"type": "function", "function": {"name": name, "parameters": schema}} for name, schema in SCHEMAS.items()]
CHAT = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "What is the weather like in Paris today?"}],
        "tools": TOOLS, "max_tokens": 48, "temperature": 0.0}
PREDICTOR_ARGS = ["--model_name", MODEL_NAME, "--device", "cpu", "--dtype", "float32", "--attention_backend", "torch",
                  "--num_threads", "1", "--max_model_len", "512", "--max_num_batched_tokens", "256",
                  "--enable_latency_logging", "false"]


@pytest.fixture(scope="module")
def transformer(tmp_path_factory) -> Iterator[Server]:
    model_dir: Path = real_checkpoint("smollm2-135m-instruct")
    log_dir = tmp_path_factory.mktemp("real-tool-calls")
    predictor = start_process("runtime", log_dir, [*PREDICTOR_ARGS, "--model_dir", str(model_dir)])
    try:
        transformer = start_process("transformer", log_dir, [
            "--tokenizer_dir", str(model_dir), "--model_name", MODEL_NAME, "--enable_latency_logging", "false",
            "--predictor_host", f"127.0.0.1:{predictor.http_port}"])
        yield transformer
        transformer.stop()
    finally:
        predictor.stop()


@pytest.fixture
def client(transformer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{transformer.url}/openai/v1", api_key="unused", max_retries=0) as client:
        yield client


def _only_call(choice):
    assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
    return choice.message.tool_calls[0].function


def test_a_named_function_is_called_with_valid_arguments(client):
    named = {"type": "function", "function": {"name": "get_weather"}}
    call = _only_call(client.chat.completions.create(**CHAT, tool_choice=named).choices[0])
    assert call.name == "get_weather"
    arguments = json.loads(call.arguments)
    jsonschema.validate(arguments, WEATHER)
    # A trained model fills the arguments from the question.
    assert "Paris" in arguments["city"]


def test_required_calls_one_of_the_tools_with_valid_arguments(client):
    call = _only_call(client.chat.completions.create(**CHAT, tool_choice="required").choices[0])
    assert call.name in SCHEMAS
    jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])
