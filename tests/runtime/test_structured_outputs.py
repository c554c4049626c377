"""The predictor's side of the structured-outputs contract, through a real server: the constraint
travels as `structured_outputs` (or one of vLLM's `guided_*` fields) in the generate extension's
parameters, in v2 infer parameters (as JSON text, as gRPC carries it) and in v1 instances; what
the engine refuses is a 400 naming the problem."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from transformer.tokenizer import TextTokenizer

from .conftest import MODEL_NAME

GENERATE = f"/v2/models/{MODEL_NAME}/generate"
CODE = r"[a-f]{2}[0-9]{3}"


@pytest.fixture(scope="module")
def tokenizer(demo_model_dir) -> TextTokenizer:
    return TextTokenizer(demo_model_dir)


@pytest.mark.parametrize("parameters", [
    {"structured_outputs": {"regex": CODE}},
    {"guided_regex": CODE},
    {"structured_outputs": json.dumps({"regex": CODE})},
], ids=["structured_outputs", "guided_regex", "as-json-text"])
def test_generate_takes_the_constraint(http, tokenizer, parameters):
    response = http.post(GENERATE, json={"input_ids": [5, 6, 7],
                                         "parameters": {"max_tokens": 30, "temperature": 1.0, "seed": 3,
                                                        **parameters}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["finish_reason"] == "stop" and re.fullmatch(CODE, tokenizer.decode(body["output_ids"]))


def test_v2_infer_and_v1_predict_take_the_constraint(http, tokenizer):
    infer = {"inputs": [{"name": "input_ids", "shape": [1, 3], "datatype": "INT64", "data": [5, 6, 7]}],
             "parameters": {"max_tokens": 10, "structured_outputs": '{"choice": ["alpha", "beta"]}'}}
    answer = http.post(f"/v2/models/{MODEL_NAME}/infer", json=infer).json()
    outputs = {output["name"]: output for output in answer["outputs"]}
    length = outputs["output_lengths"]["data"][0]
    assert tokenizer.decode(outputs["output_ids"]["data"][:length]) in ("alpha", "beta")
    predict = http.post(f"/v1/models/{MODEL_NAME}:predict", json={"instances": [
        {"input_ids": [5, 6, 7], "max_tokens": 10, "guided_choice": ["yes", "no"]}]})
    assert tokenizer.decode(predict.json()["predictions"][0]["output_ids"]) in ("yes", "no")


@pytest.mark.parametrize(("parameters", "message"), [
    ({"guided_regex": "a", "guided_choice": ["a"]}, "guided_regex and guided_choice each constrain the output"),
    ({"guided_json": {"type": "string", "pattern": "x" * 40_000}}, "at most 32768"),
    ({"guided_grammar": "root ::= ("}, "grammar cannot"),
    ({"structured_outputs": "{not json"}, "JSON"),
])
def test_refused_constraints_are_400(http, parameters, message):
    response = http.post(GENERATE, json={"input_ids": [5, 6, 7], "parameters": parameters})
    assert response.status_code == 400 and message in response.json()["error"]


def test_the_compile_timeout_flag_bounds_the_wait_for_a_grammar(launch_server):
    # Dozens of patterned properties: milliseconds to compile, far beyond a 1 ms bound.
    schema = {"type": "object", "properties": {f"field_{index}": {"type": "string", "pattern": f"^[a-z]{{{index}}}x+$"}
                                               for index in range(1, 40)}}
    server = launch_server("--grammar_compile_timeout", "0.001", "--grammar_cache_size", "4")
    response = httpx.post(f"{server.url}{GENERATE}", json={"input_ids": [5, 6, 7], "parameters": {"guided_json": schema}},
                          timeout=60)
    assert response.status_code == 400
    assert "did not compile within 0.001 s" in response.json()["error"]
