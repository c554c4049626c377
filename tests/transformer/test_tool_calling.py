"""Tool calling on the chat route, driven by the official `openai` client against a real
transformer in front of a real predictor (the demo model, whose random weights would write
anything: a forced call is what its constraint made of them)."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from tests.servers import MODEL_NAME

WEATHER = {"type": "object", "properties": {"city": {"enum": ["Paris", "Lima", "Oslo"]},
                                            "days": {"type": "integer", "minimum": 1, "maximum": 7}},
           "required": ["city", "days"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"],
        "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The forecast", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "parameters": TIME, "strict": True}}]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
CHAT = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Weather in Paris?"}], "max_tokens": 200,
        "tools": TOOLS, "temperature": 1.0, "seed": 7}
NAMED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture
def client(transformer) -> openai.OpenAI:
    with openai.OpenAI(base_url=f"{transformer.url}/openai/v1", api_key="unused", max_retries=0) as client:
        yield client


def _check_call(call, names=tuple(SCHEMAS)) -> None:
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name in names
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_named_function_whole_and_streamed(client):
    whole = client.chat.completions.create(**CHAT, tool_choice=NAMED).choices[0]
    assert whole.finish_reason == "tool_calls"
    assert whole.message.content is None and len(whole.message.tool_calls) == 1
    _check_call(whole.message.tool_calls[0], ["get_weather"])
    chunks = [chunk for chunk in client.chat.completions.create(**CHAT, tool_choice=NAMED, stream=True) if chunk.choices]
    calls = [call for chunk in chunks for call in chunk.choices[0].delta.tool_calls or []]
    assert len(calls) == 1 and calls[0].index == 0
    _check_call(calls[0], ["get_weather"])
    assert calls[0].function.arguments == whole.message.tool_calls[0].function.arguments
    assert not any(chunk.choices[0].delta.content for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_required_calls_one_of_the_tools(client, seed):
    choice = client.chat.completions.create(**CHAT | {"seed": seed}, tool_choice="required").choices[0]
    assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
    _check_call(choice.message.tool_calls[0])


def test_a_conversation_with_tool_calls_and_tool_answers(client):
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 1}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C"},
    ]
    answer = client.chat.completions.create(**CHAT | {"messages": messages, "max_tokens": 5})
    assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")
    forced = client.chat.completions.create(**CHAT | {"messages": messages}, tool_choice=NAMED)
    _check_call(forced.choices[0].message.tool_calls[0], ["get_weather"])


def test_auto_and_none_answer_in_text(client):
    # The demo model writes no calls of its own: "auto" leaves its text as the content.
    for tool_choice in ("auto", "none"):
        whole = client.chat.completions.create(**CHAT | {"max_tokens": 8}, tool_choice=tool_choice).choices[0]
        assert whole.message.tool_calls is None and whole.finish_reason == "length"
        chunks = client.chat.completions.create(**CHAT | {"max_tokens": 8}, tool_choice=tool_choice, stream=True)
        assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == whole.message.content


@pytest.mark.parametrize(("extra", "message"), [
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "'nope', which is not among the tools"),
    ({"tools": TOOLS + TOOLS[:1]}, "get_weather is given twice"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
     'of type "object"'),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "String should match pattern"),
    ({"tools": None, "tool_choice": "required"}, '"required" needs at least one tool'),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice and response_format"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "tool_call_id"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": []}]}, "only an assistant message"),
])
def test_invalid_tool_requests_are_400s(transformer, extra, message):
    body = {key: value for key, value in (CHAT | extra).items() if value is not None}
    response = httpx.post(f"{transformer.url}/openai/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]["message"]


def test_tokenize_renders_the_tools_as_the_chat_route_does(client, transformer):
    chat = client.chat.completions.create(**CHAT | {"max_tokens": 1})
    with httpx.Client(base_url=transformer.url, timeout=30) as http:
        tokenized = http.post("/tokenize", json={"messages": CHAT["messages"], "tools": TOOLS}).json()
        with_prompt = http.post("/tokenize", json={"prompt": "x", "tools": TOOLS})
    assert tokenized["count"] == chat.usage.prompt_tokens
    assert with_prompt.status_code == 400 and "tools go with `messages`" in with_prompt.json()["error"]["message"]
