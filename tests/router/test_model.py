"""The router as a KServe model, through a real `python -m router` process: v1 and v2 predict return
the request with `route` and `route_score` added, in a shape an InferenceGraph Switch can branch on
and pass on to the chosen target; hints override; bad bodies get a 400 that says what was wrong."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import gjson
import httpx
import numpy as np
import pytest
from kserve import InferenceGRPCClient, InferInput, InferRequest
from kserve.protocol.rest.v2_datamodels import InferenceRequest

from router.config import load_config
from router.model import RouterModel
from serving.errors import ServiceUnavailable
from tests.servers import REPO_ROOT, Server

from .conftest import ROUTER_NAME, start_router, write_config

THRESHOLD = 0.3
PREDICT = f"/v1/models/{ROUTER_NAME}:predict"
INFER = f"/v2/models/{ROUTER_NAME}/infer"
CHIT_CHAT = "How are you doing today?"
DEMANDING = ("Here is my Python code:\n```python\ndef mean(values):\n    return sum(values) / len(values)\n```\n"
             "Explain why it fails on an empty list, then rewrite it step by step, and prove the new version "
             "never divides by zero.")
# KServe's Switch condition for "the router chose the large model": a bare `route=="large"` is not
# a GJSON query, this is.
SWITCH_TO_LARGE = '[@this].#(route=="large")'


@pytest.fixture(scope="module")
def router(tmp_path_factory, tokenizer_dir) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("router")
    config = write_config(directory / "router.yaml", policy={"threshold": THRESHOLD})
    server = start_router(config, directory, "--tokenizer_dir", str(tokenizer_dir))
    yield server
    assert server.stop() == 0, server.log()[-3000:]


@pytest.fixture
def http(router) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=router.url, timeout=30) as client:
        yield client


def v2_body(prompts: list[str], parameters: dict | None = None) -> dict:
    body = {"id": "request-1", "inputs": [{"name": "text_input", "shape": [len(prompts)], "datatype": "BYTES",
                                           "data": prompts}]}
    if parameters is not None:
        body["parameters"] = parameters
    return body


def test_v1_returns_the_request_with_the_route_added(http):
    body = {"instances": [{"prompt": CHIT_CHAT, "max_tokens": 64, "temperature": 0.7}], "stream": False}
    response = http.post(PREDICT, json=body)
    assert response.status_code == 200, response.text
    routed = response.json()
    assert {key: routed[key] for key in body} == body
    assert routed["route"] == "small" and 0.0 <= routed["route_score"] < THRESHOLD
    [decision] = routed["route_decisions"]
    assert decision["route"] == "small" and decision["threshold"] == THRESHOLD
    assert decision["features"]["prompt_tokens"]["detail"] == "tokenizer"
    assert decision["features"]["max_tokens"]["value"] == 64


def test_v1_demanding_prompts_go_large_and_say_why(http):
    routed = http.post(PREDICT, json={"instances": [{"prompt": DEMANDING, "max_tokens": 2048}]}).json()
    assert routed["route"] == "large" and routed["route_score"] >= THRESHOLD
    features = routed["route_decisions"][0]["features"]
    assert "code block" in features["code"]["value"] and "step by step" in features["multi_step"]["value"]
    assert gjson.get(routed, SWITCH_TO_LARGE) == routed


def test_a_batch_goes_where_its_most_demanding_instance_needs(http):
    body = {"instances": [{"prompt": CHIT_CHAT}, {"prompt": DEMANDING}, {"prompt": "thanks!"}]}
    routed = http.post(PREDICT, json=body).json()
    assert [decision["route"] for decision in routed["route_decisions"]] == ["small", "large", "small"]
    assert routed["route"] == "large"
    assert routed["route_score"] == max(decision["score"] for decision in routed["route_decisions"])


def test_chat_messages_are_routed_with_their_depth(http):
    messages = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": [{"type": "text", "text": "tell me a joke"}]}]
    routed = http.post(PREDICT, json={"instances": [{"messages": messages}]}).json()
    assert routed["instances"][0]["messages"] == messages
    assert routed["route_decisions"][0]["features"]["conversation_depth"]["value"] == 2


@pytest.mark.parametrize(("headers", "body_route", "route", "source"), [
    ({"x-route": "large"}, None, "large", "the x-route header"),
    ({}, "large", "large", "`route` in the body"),
    ({"x-route": "small"}, "large", "small", "the x-route header"),
])
def test_hints_override_the_policy(http, headers, body_route, route, source):
    body = {"instances": [{"prompt": CHIT_CHAT if route == "large" else DEMANDING}]}
    if body_route is not None:
        body["route"] = body_route
    routed = http.post(PREDICT, json=body, headers=headers).json()
    assert routed["route"] == route and routed["route_score"] == (1.0 if route == "large" else 0.0)
    assert routed["route_decisions"][0]["features"] == {"hint": {
        "value": route, "activation": routed["route_score"], "weight": 1.0, "contribution": routed["route_score"],
        "detail": source}}


def test_v2_rest_echoes_a_request_the_chosen_target_can_take(http):
    body = v2_body([CHIT_CHAT, DEMANDING], {"max_tokens": 256, "temperature": "0.5", "route": "large"})
    response = http.post(INFER, json=body)
    assert response.status_code == 200, response.text
    routed = response.json()
    assert routed["route"] == "large" and routed["route_score"] == 1.0
    assert gjson.get(routed, SWITCH_TO_LARGE) == routed
    # The hint was for the router: the target gets the request without it.
    assert routed["parameters"] == {"max_tokens": 256, "temperature": "0.5"}
    forwarded = InferenceRequest.model_validate(routed)
    assert forwarded.id == "request-1"
    assert forwarded.inputs[0].model_dump(exclude_none=True) == body["inputs"][0]


def test_v2_rest_routes_by_the_policy_without_a_hint(http):
    routed = http.post(INFER, json=v2_body([DEMANDING], {"max_tokens": 1024})).json()
    assert routed["route"] == "large" and routed["route_score"] >= THRESHOLD
    assert routed["route_decisions"][0]["features"]["max_tokens"]["value"] == 1024
    assert "parameters" in routed and "route" not in routed["parameters"]
    assert http.post(INFER, json=v2_body([CHIT_CHAT])).json()["route"] == "small"


async def test_v2_grpc_answers_route_and_score_outputs(router):
    text = InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([DEMANDING.encode()], dtype=np.object_), binary_data=False)
    client = InferenceGRPCClient(router.grpc_url)
    try:
        response = await client.infer(InferRequest(model_name=ROUTER_NAME, infer_inputs=[text]), timeout=30)
    finally:
        await client.close()
    outputs = {output.name: output.as_numpy().tolist() for output in response.outputs}
    assert outputs["route"] == [b"large"]
    assert outputs["route_score"][0] >= THRESHOLD


@pytest.mark.parametrize(("body", "message"), [
    ({"instances": []}, "instances: List should have at least 1 item"),
    ({"inputs": []}, "instances: Field required"),
    ({"instances": [{"max_tokens": 5}]}, "instances.0: Value error, an instance needs exactly one of `prompt`"),
    ({"instances": [{"prompt": "a", "messages": [{"role": "user", "content": "b"}]}]}, "exactly one of `prompt`"),
    ({"instances": [{"prompt": 5}]}, "instances.0.prompt: Input should be a valid string"),
    ({"instances": [{"messages": [{"role": "robot", "content": "beep"}]}]},
     "instances.0.messages.0.role: Input should be"),
    ({"instances": [{"prompt": "a", "max_tokens": 0}]},
     "instances.0.max_tokens: Input should be greater than or equal to 1"),
    ({"instances": [{"prompt": "a"}], "route": "medium"}, "`route` in the body: the route must be 'small' or 'large'"),
    ([1, 2], "the body must be a JSON object"),
])
def test_v1_bad_bodies_get_400_saying_what_is_wrong(http, body, message):
    response = http.post(PREDICT, json=body)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_v1_non_json_and_bad_hint_headers_get_400(http):
    not_json = http.post(PREDICT, content=b"prompt=hi", headers={"content-type": "application/x-www-form-urlencoded"})
    assert not_json.status_code == 400 and "content-type: application/json" in not_json.json()["error"]
    bad_header = http.post(PREDICT, json={"instances": [{"prompt": "a"}]}, headers={"x-route": "huge"})
    assert bad_header.status_code == 400
    assert bad_header.json()["error"] == "the x-route header: the route must be 'small' or 'large', got 'huge'"


@pytest.mark.parametrize(("body", "message"), [
    ({"inputs": [{"name": "input_ids", "shape": [1], "datatype": "INT64", "data": [1]}]},
     "missing input tensor 'text_input' (got 'input_ids')"),
    ({"inputs": [{"name": "text_input", "shape": [1], "datatype": "INT64", "data": [1]}]},
     "text_input must be BYTES, got INT64"),
    ({"inputs": [{"name": "text_input", "shape": [0], "datatype": "BYTES", "data": []}]}, "text_input is empty"),
    ({**v2_body(["a"]), "parameters": {"max_tokens": "many"}}, "max_tokens: Input should be a valid integer"),
    ({**v2_body(["a"]), "parameters": {"route": "medium"}}, "the `route` parameter: the route must be"),
])
def test_v2_bad_bodies_get_400_saying_what_is_wrong(http, body, message):
    response = http.post(INFER, json=body)
    assert response.status_code == 400
    assert message in response.json()["error"]


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_a_v1_request_too_deeply_nested_to_echo_is_a_400(http):
    # The router answers with the request; KServe writes a v1 answer with orjson, which reads
    # JSON nested 1024 deep but writes only 254: deeper requests were read, then failed as a 500.
    body = {"instances": [{"prompt": "a"}]}
    assert http.post(PREDICT, json={**body, "extra": nested(253)}).status_code == 200  # 254 with the body's own
    response = http.post(PREDICT, json={**body, "extra": nested(254)})
    assert response.status_code == 400, response.text
    assert "more than 254 levels deep" in response.json()["error"]


HALF_A_PAIR = json.dumps(v2_body(["half \ud800 a pair"])).encode()


@pytest.mark.parametrize("body", [HALF_A_PAIR, HALF_A_PAIR.replace(b"\\ud800", b"\xed\xa0\x80")],
                         ids=["escaped", "raw bytes"])
def test_a_v2_prompt_with_half_a_surrogate_pair_is_routed(http, body):
    # KServe's v2 route reads JSON with Python's parser, which lets half a surrogate pair into the
    # text (escaped, or as its bytes); the policy's hashing needed UTF-8 and failed with a 500.
    response = http.post(INFER, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert response.json()["route"] in ("small", "large")


def test_decisions_are_counted_on_metrics(router, http):
    def sample(route: str, decided_by: str) -> float:
        labels = f'decided_by="{decided_by}",model_name="{ROUTER_NAME}",route="{route}"'
        return router.metric("router_requests_total", labels)

    before = sample("large", "hint"), sample("small", "policy")
    http.post(PREDICT, json={"instances": [{"prompt": "a"}]}, headers={"x-route": "large"})
    http.post(PREDICT, json={"instances": [{"prompt": CHIT_CHAT}]})
    assert (sample("large", "hint"), sample("small", "policy")) == (before[0] + 1, before[1] + 1)
    metrics = http.get("/metrics").text
    assert f'router_route_score_count{{model_name="{ROUTER_NAME}"}}' in metrics
    assert "# TYPE router_escalations_total counter" in metrics and "# TYPE router_fallbacks_total counter" in metrics


async def test_a_draining_router_refuses_new_requests_with_503(tmp_path):
    model = RouterModel(ROUTER_NAME, load_config(write_config(tmp_path / "router.yaml")))
    model.load()
    assert await model.healthy()
    model.start_draining()
    assert not await model.healthy()
    with pytest.raises(ServiceUnavailable, match="shutting down"):
        model.predict({"instances": [{"prompt": "hi"}]})


@pytest.mark.parametrize("policy", ["rule", "learned"])
def test_the_router_never_imports_torch(tmp_path, tokenizer_dir, policy):
    """What `python -m router` imports and runs, with a tokenizer, in a fresh interpreter: the
    rule policy, or the learned one of the shipped config."""
    config = write_config(tmp_path / "router.yaml", **({"policy": {"threshold": 0.5}} if policy == "rule" else {}))
    detail = "['prompt_tokens']['detail'] == 'tokenizer'" if policy == "rule" else "['words']['logit'] != 0"
    script = (
        "import sys\n"
        f"sys.argv = ['router', '--config', {str(config)!r}, '--tokenizer_dir', {str(tokenizer_dir)!r}]\n"
        "import router.__main__ as main\n"
        "args = main.build_parser().parse_args()\n"
        "model = main.build_model(args, main.load_config(args.config))\n"
        "model.load()\n"
        "routed = model.predict({'instances': [{'prompt': 'hello'}]})\n"
        f"assert routed['route_decisions'][0]['features']{detail}\n"
        "print('torch' in sys.modules)\n"
    )
    finished = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=60)
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.strip() == "False"
