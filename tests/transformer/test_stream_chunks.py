"""The streamed OpenAI chunks, built as plain dicts on every token's path, are exactly what the
pydantic response models dump (field names, order and values), with and without logprobs."""

from __future__ import annotations

import json

import pytest

from serving.openai_protocol import (
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
)
from transformer.generation import TextChunk
from transformer.model import TextModel
from transformer.openai_api import ChatStream, Choice, CompletionStream, _chat_logprobs, _completion_logprobs
from transformer.predictor_client import PredictorSettings
from transformer.tokenizer import TextTokenizer
from transformer.tool_parsers import HermesToolParser, JsonToolParser
from tests.servers import MODEL_NAME

CHUNKS = [TextChunk("Hello", [5], None, [-0.5], [{5: -0.5, 6: -1.5}]),
          TextChunk("", [7], "length", [-0.25], [{7: -0.25}])]


@pytest.fixture(scope="module")
def model(demo_dir) -> TextModel:
    return TextModel(MODEL_NAME, TextTokenizer(demo_dir), PredictorSettings(host="127.0.0.1:1"))


def same_json(made: dict, expected: dict) -> None:
    # Equal values and the same field order on the wire.
    assert json.dumps(made) == json.dumps(expected)


@pytest.mark.parametrize("logprobs", [None, 2])
def test_completion_chunks_are_the_models_dumps(model, logprobs):
    body = CompletionRequest(model=MODEL_NAME, prompt="Hi", stream=True, logprobs=logprobs)
    stream = CompletionStream(model, body, [[1, 2]])
    head = CompletionResponse(id=stream.id, created=stream.created, model=MODEL_NAME,
                              choices=[]).model_dump(exclude={"choices", "usage"})
    offset = 0
    for chunk in CHUNKS:
        expected_logprobs = None
        if logprobs is not None:
            expected_logprobs = _completion_logprobs(model.tokenizer, chunk.token_ids, chunk.logprobs,
                                                     chunk.top_logprobs, offset)
            offset += sum(len(token) for token in expected_logprobs.tokens)
        choice = CompletionChoice(index=0, text=chunk.text, logprobs=expected_logprobs, finish_reason=chunk.finish_reason)
        same_json(stream.delta(0, chunk), {**head, "choices": [choice.model_dump()]})


@pytest.mark.parametrize("logprobs", [False, True])
def test_chat_chunks_are_the_models_dumps(model, logprobs):
    body = ChatCompletionRequest(model=MODEL_NAME, messages=[{"role": "user", "content": "Hi"}], stream=True,
                                 logprobs=logprobs, top_logprobs=1 if logprobs else None)
    stream = ChatStream(model, body, 2, JsonToolParser())
    head = ChatCompletionChunk(id=stream.id, created=stream.created, model=MODEL_NAME,
                               choices=[]).model_dump(exclude={"choices", "usage"})

    def expected(choice: ChatChunkChoice) -> dict:
        message = choice.model_dump()
        message["delta"] = choice.delta.model_dump(exclude_none=True)
        return {**head, "choices": [message]}

    [start] = stream.start([Choice(0, 0, None)])
    same_json(start, expected(ChatChunkChoice(index=0, delta=ChatDelta(role="assistant", content=""))))
    for chunk in CHUNKS:
        chunk_logprobs = (_chat_logprobs(model.tokenizer, chunk.token_ids, chunk.logprobs, chunk.top_logprobs)
                          if logprobs else None)
        delta = ChatDelta(content=chunk.text) if chunk.text else ChatDelta()
        same_json(stream.delta(0, chunk), expected(ChatChunkChoice(index=0, delta=delta, logprobs=chunk_logprobs,
                                                                   finish_reason=chunk.finish_reason)))


def test_chat_stream_holds_back_what_may_be_a_call_and_sends_the_calls_whole(model):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    body = ChatCompletionRequest(model=MODEL_NAME, messages=[{"role": "user", "content": "Hi"}], stream=True,
                                 tools=tools)
    stream = ChatStream(model, body, 2, HermesToolParser())
    pieces = ["Sure", ". <tool", '_call>{"name": "f", ', '"arguments": {"x": 1}}</tool_call>']
    deltas = [stream.delta(0, TextChunk(piece, [1], None)) for piece in pieces]
    last = stream.delta(0, TextChunk("", [2], "stop"))["choices"][0]
    contents = [delta["choices"][0]["delta"].get("content") for delta in deltas if delta is not None]
    assert contents == ["Sure", ". "]
    assert last["finish_reason"] == "tool_calls" and "content" not in last["delta"]
    [call] = last["delta"]["tool_calls"]
    assert call["index"] == 0 and call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"] == {"name": "f", "arguments": '{"x": 1}'}


def test_chat_stream_sends_held_back_text_that_was_no_call(model):
    tools = [{"type": "function", "function": {"name": "f"}}]
    body = ChatCompletionRequest(model=MODEL_NAME, messages=[{"role": "user", "content": "Hi"}], stream=True,
                                 tools=tools)
    stream = ChatStream(model, body, 2, HermesToolParser())
    assert stream.delta(0, TextChunk("a <tool", [1], None))["choices"][0]["delta"] == {"content": "a "}
    last = stream.delta(0, TextChunk("s", [2], "stop"))["choices"][0]
    assert last["delta"] == {"content": "<tools"} and last["finish_reason"] == "stop"
