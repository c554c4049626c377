"""Structured outputs and the benign OpenAI fields on the OpenAI routes, driven by the official
`openai` client against a real transformer in front of a real predictor (the demo model, whose
random weights would write anything: every answer here is what the constraint made of it)."""

from __future__ import annotations

import json
import re

import httpx
import jsonschema
import openai
import pytest

from tests.servers import MODEL_NAME

PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120},
                                           "city": {"enum": ["Paris", "Lima", "Oslo"]}},
          "required": ["name", "age", "city"], "additionalProperties": False}
JSON_SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
CHAT = dict(model=MODEL_NAME, messages=[{"role": "user", "content": "Describe a person as JSON."}], max_tokens=300)
SEEDED = dict(temperature=1.0, seed=42)


@pytest.fixture
def client(transformer) -> openai.OpenAI:
    with openai.OpenAI(base_url=f"{transformer.url}/openai/v1", api_key="unused", max_retries=0) as client:
        yield client


@pytest.mark.parametrize("sampling", [dict(temperature=0.0), SEEDED], ids=["greedy", "seeded"])
def test_response_format_json_schema_whole_and_streamed(client, sampling):
    whole = client.chat.completions.create(**CHAT, response_format=JSON_SCHEMA_FORMAT, **sampling)
    choice = whole.choices[0]
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content), PERSON)
    chunks = list(client.chat.completions.create(**CHAT, response_format=JSON_SCHEMA_FORMAT, stream=True,
                                                 **sampling))
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert streamed == choice.message.content
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "stop"


def test_json_object_and_structured_outputs_on_completions(client):
    answer = client.completions.create(model=MODEL_NAME, prompt="JSON:", max_tokens=8, temperature=0,
                                       extra_body={"response_format": {"type": "json_object"}})
    assert answer.choices[0].text.startswith("{")
    grammar = client.completions.create(model=MODEL_NAME, prompt="Say:", max_tokens=20, **SEEDED,
                                        extra_body={"structured_outputs": {"grammar": 'root ::= "ok" | "no" [0-9]'}})
    assert re.fullmatch(r"ok|no[0-9]", grammar.choices[0].text)
    assert grammar.choices[0].finish_reason == "stop"


def test_guided_choice_and_regex_whole_and_streamed(client):
    choice = client.chat.completions.create(**CHAT, **SEEDED, extra_body={"guided_choice": ["yes", "no", "maybe"]})
    assert choice.choices[0].message.content in ("yes", "no", "maybe")
    stream = client.completions.create(model=MODEL_NAME, prompt="Code:", max_tokens=30, stream=True, **SEEDED,
                                       extra_body={"guided_regex": r"[A-Z]{3}-[0-9]{4}"})
    text = "".join(chunk.choices[0].text for chunk in stream if chunk.choices)
    assert re.fullmatch(r"[A-Z]{3}-[0-9]{4}", text)


def test_guided_json_through_the_grpc_predictor_protocol(predictor, launch_transformer):
    over_grpc = launch_transformer(f"127.0.0.1:{predictor.grpc_port}", "--predictor_protocol", "grpc-v2",
                                   "--predictor_rest_host", f"127.0.0.1:{predictor.http_port}")
    with openai.OpenAI(base_url=f"{over_grpc.url}/openai/v1", api_key="unused", max_retries=0) as client:
        answer = client.chat.completions.create(**CHAT, temperature=0, extra_body={"guided_json": PERSON})
    jsonschema.validate(json.loads(answer.choices[0].message.content), PERSON)


@pytest.mark.parametrize(("extra", "message"), [
    ({"response_format": {"type": "json_object"}, "guided_regex": "a+"},
     "response_format (json_object) and guided_regex"),
    ({"guided_choice": ["a"], "structured_outputs": {"regex": "b"}}, "guided_choice and structured_outputs"),
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "got regex and choice"),
    ({"response_format": {"type": "json_schema"}}, "json_schema"),
    ({"guided_json": {"type": "string", "pattern": "x" * 40_000}}, "at most 32768"),
    ({"guided_regex": "(unclosed"}, "regex cannot be compiled"),
    ({"response_format": JSON_SCHEMA_FORMAT | {"json_schema": {"name": "s", "strict": True,
                                                               "schema": {"type": "array", "uniqueItems": True}}}},
     "uniqueItems"),
], ids=["format-and-regex", "choice-and-structured", "two-in-one", "schema-missing", "too-large", "bad-regex",
        "strict-unsupported"])
def test_conflicting_oversized_or_uncompilable_constraints_are_400(client, extra, message):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(**CHAT, extra_body=extra)
    assert message in refused.value.body["message"]


def test_benign_fields_are_accepted_and_named_in_a_header(transformer, client):
    ignored = dict(store=False, metadata={"team": "a"}, service_tier="auto", parallel_tool_calls=False,
                   prediction={"type": "content", "content": "Hello"}, user="u-1")
    raw = client.chat.completions.with_raw_response.create(**CHAT | {"max_tokens": 4}, **ignored)
    assert raw.headers["x-ignored-fields"] == "store, metadata, service_tier, parallel_tool_calls, prediction, user"
    assert raw.parse().choices[0].finish_reason == "length"
    with httpx.Client(base_url=transformer.url, timeout=60) as http:
        streamed = http.post("/openai/v1/completions", json={"model": MODEL_NAME, "prompt": "x", "max_tokens": 2,
                                                             "stream": True, "store": False})
        plain = http.post("/openai/v1/completions", json={"model": MODEL_NAME, "prompt": "x", "max_tokens": 2})
    assert streamed.status_code == 200 and streamed.headers["x-ignored-fields"] == "store"
    assert "x-ignored-fields" not in plain.headers
    assert "accepted and ignored OpenAI request fields" in transformer.log()


def test_unknown_and_mistyped_fields_are_still_refused(client):
    with pytest.raises(openai.BadRequestError) as unknown:
        client.chat.completions.create(**CHAT, extra_body={"stroe": False})
    assert "stroe: Extra inputs are not permitted" in unknown.value.body["message"]
    with pytest.raises(openai.BadRequestError) as mistyped:
        client.chat.completions.create(**CHAT, extra_body={"store": "yes please"})
    assert "store" in mistyped.value.body["message"]
