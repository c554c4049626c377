"""The transformer's KServe routes: v1 predict (prompt or chat messages), v2 infer with
`text_input` (through Triton's client too), the text generate extension, and the same answers
when the predictor is called over gRPC."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http

from tests.runtime.conftest import parse_sse
from tests.servers import MODEL_NAME

GREEDY = {"temperature": 0, "max_tokens": 8}
# Every penalty and a logit bias, which gRPC parameters carry as text ("11:5.0").
PENALIZED = {**GREEDY, "presence_penalty": 1.5, "frequency_penalty": 0.5, "repetition_penalty": 1.3,
             "logit_bias": {"11": 5.0, "42": -100}}


def test_v1_predict_with_prompt_and_messages(http):
    body = {"instances": [{"prompt": "Hello", **GREEDY}, {"messages": [{"role": "user", "content": "Hi"}], **GREEDY}],
            "route": "small", "route_score": 0.2}
    response = http.post(f"/v1/models/{MODEL_NAME}:predict", json=body)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 2
    for prediction in predictions:
        assert prediction["finish_reason"] == "length" and prediction["completion_tokens"] == 8
        assert prediction["confidence"] <= 0 and prediction["text"]
    assert predictions[1]["prompt_tokens"] > predictions[0]["prompt_tokens"]  # the chat template's tokens


def test_v1_streams_json_lines(http):
    whole = http.post(f"/v1/models/{MODEL_NAME}:predict", json={"instances": [{"prompt": "Hello", **GREEDY}]})
    with http.stream("POST", f"/v1/models/{MODEL_NAME}:predict",
                     json={"instances": [{"prompt": "Hello", **GREEDY}], "stream": True}) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert "".join(line["text"] for line in lines) == whole.json()["predictions"][0]["text"]
    assert lines[-1]["finish_reason"] == "length"
    # A line per token, none for the stream's admission by the predictor (an empty chunk).
    assert len(lines) == GREEDY["max_tokens"]


def test_v2_infer_with_text_input(http):
    body = {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [2], "data": ["Hello", "A longer prompt"]}],
            "parameters": {"max_tokens": 5, "temperature": 0}}
    response = http.post(f"/v2/models/{MODEL_NAME}/infer", json=body)
    assert response.status_code == 200, response.text
    outputs = {output["name"]: output["data"] for output in response.json()["outputs"]}
    assert outputs["finish_reason"] == ["length", "length"]
    assert outputs["completion_tokens"] == [5, 5]
    assert all(isinstance(text, str) and text for text in outputs["text_output"])


def test_tritonclient_reads_text_output(transformer, http):
    client = triton_http.InferenceServerClient(f"127.0.0.1:{transformer.http_port}")
    try:
        text_input = triton_http.InferInput("text_input", [1], "BYTES")
        text_input.set_data_from_numpy(np.array([b"Hello"], dtype=np.object_), binary_data=False)
        result = client.infer(MODEL_NAME, [text_input], parameters={"max_tokens": 5, "temperature": "0"})
    finally:
        client.close()
    expected = http.post(f"/v2/models/{MODEL_NAME}/generate", json={"text_input": "Hello", "parameters": {
        "max_tokens": 5, "temperature": 0}}).json()["text_output"]
    assert result.as_numpy("text_output")[0].decode() == expected


def test_generate_extension_whole_and_streamed(http):
    body = {"text_input": "Once upon a time", "parameters": {"max_tokens": 12, "temperature": 0.8, "seed": 3}}
    whole = http.post(f"/v2/models/{MODEL_NAME}/generate", json=body).json()
    assert whole["finish_reason"] == "length" and whole["completion_tokens"] == 12
    with http.stream("POST", f"/v2/models/{MODEL_NAME}/generate_stream", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = parse_sse(list(response.iter_lines()))
    assert "".join(event["text_output"] for event in events) == whole["text_output"]
    assert events[-1]["finish_reason"] == "length"
    assert len(events) == body["parameters"]["max_tokens"]  # an event per token, none for the admission


@pytest.mark.parametrize("body, fragment", [
    ({"instances": [{"prompt": "x", "messages": [{"role": "user", "content": "y"}]}]}, "exactly one of"),
    ({"instances": [{"prompt": "x", "temperature": "hot"}]}, "temperature"),
    ({"instances": []}, "instances"),
    ({"instances": [{"prompt": "x", "max_tokens": 5000}]}, "context"),
])
def test_v1_bad_input_is_a_kserve_shaped_400(http, body, fragment):
    response = http.post(f"/v1/models/{MODEL_NAME}:predict", json=body)
    assert response.status_code == 400
    assert fragment in response.json()["error"]


LONE_SURROGATE = "a \ud800 b"


# The routes whose JSON parser (Python's, FastAPI's) takes half a surrogate pair ("\ud800") into
# the text; the OpenAI routes' (pydantic's) and KServe v1's (orjson) refuse such JSON themselves.
@pytest.mark.parametrize("path, body", [
    ("/tokenize", {"prompt": LONE_SURROGATE}),
    (f"/v2/models/{MODEL_NAME}/generate", {"text_input": LONE_SURROGATE}),
    (f"/v2/models/{MODEL_NAME}/infer",
     {"inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES", "data": [LONE_SURROGATE]}]}),
], ids=["tokenize", "generate", "v2"])
def test_a_lone_surrogate_in_the_text_is_a_400_not_a_tokenizer_failure(http, path, body):
    response = http.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert "lone surrogate (U+D800)" in response.text


def test_an_error_that_quotes_half_a_surrogate_pair_is_still_answered(http):
    # The 404 quotes the model name, which had no UTF-8 form, and failed as a 500.
    body = json.dumps({"model": "demo\ud800", "prompt": "x"}).encode()
    response = http.post("/tokenize", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 404
    assert "demo\ufffd" in response.json()["error"]["message"]


def test_v2_data_that_does_not_fit_its_shape_is_400(http):
    body = {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": [["a", "b", "c"]]}]}
    response = http.post(f"/v2/models/{MODEL_NAME}/infer", json=body)
    assert response.status_code == 400, response.text
    assert "text_input: its data does not match its shape [1]" in response.json()["error"]


def test_v2_without_text_input_is_400(http):
    body = {"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [1], "data": [1]}]}
    response = http.post(f"/v2/models/{MODEL_NAME}/infer", json=body)
    assert response.status_code == 400 and "text_input" in response.json()["error"]


def test_grpc_predictor_protocol_gives_the_same_text(predictor, launch_transformer, http):
    over_grpc = launch_transformer(f"127.0.0.1:{predictor.grpc_port}", "--predictor_protocol", "grpc-v2",
                                   "--predictor_rest_host", f"127.0.0.1:{predictor.http_port}")
    body = {"instances": [{"prompt": "Functions", **GREEDY}, {"prompt": "Functions", **PENALIZED}]}
    expected = http.post(f"/v1/models/{MODEL_NAME}:predict", json=body).json()
    # The penalties reached the predictor (over REST here, over gRPC below: the texts must match).
    assert expected["predictions"][0]["text"] != expected["predictions"][1]["text"]
    with httpx.Client(base_url=over_grpc.url, timeout=60) as client:
        predictions = client.post(f"/v1/models/{MODEL_NAME}:predict", json=body).json()["predictions"]
        # The same tokens; `confidence` to float32 rounding (the two instances may share a batch
        # on one path and not on the other).
        for prediction, wanted in zip(predictions, expected["predictions"], strict=True):
            assert prediction["confidence"] == pytest.approx(wanted["confidence"], abs=1e-4)
            assert {**prediction, "confidence": None} == {**wanted, "confidence": None}
        streamed = client.post("/openai/v1/completions", json={"model": MODEL_NAME, "prompt": "Functions",
                                                                "stream": True, **GREEDY})
    events = parse_sse([line for line in streamed.text.splitlines() if line != "data: [DONE]"])
    text = "".join(event["choices"][0]["text"] for event in events)
    assert text == expected["predictions"][0]["text"]
    assert "v2 gRPC" in over_grpc.log()
