"""`make serve-real`'s stack on the real models of the real-models extra, started as the launcher
starts it (models prepared once in this process, then every component), on free ports: through the
router's OpenAI edge, an `auto` completion of arithmetic goes to Gemma 3 270M (the large model by
cost) and is right; an `auto` chat the policy would send there goes to SmolLM2, the model with a
chat template, and says why; a chat that names Gemma gets its transformer's 400, passed through.
Skipped without the extra. Everything started is stopped, and nothing listens afterwards."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devstack.local_stack import SIZES, Ports, Stack, stack_components, write_router_config
from devstack.model_sources import REAL_EXTRA_HINT, RealModels, prepare_real_models
from runtime.gguf_checkpoint import GGUFCheckpointError
from runtime.real_models import RealModelMissing
from tests.devstack.stacks import running
from tests.devstack.test_local_stack import listening_ports
from tests.serving.ports import free_port_block, is_listening

# One thread per predictor on the suite's 2 cores; no C++ kernel to compile (as test_stack_e2e).
PREDICTOR_ARGS = ["--device", "cpu", "--dtype", "float32", "--attention_backend", "torch", "--num_threads", "1"]
# The rule policy, which sends arithmetic to the large model at this threshold: the test is of the
# stack's wiring, and must not move when the shipped learned policy is refitted.
ARITHMETIC_GOES_LARGE = {"threshold": 0.1}
COMPLETIONS = "/openai/v1/completions"
CHAT = "/openai/v1/chat/completions"


@pytest.fixture(scope="module")
def real_models() -> RealModels:
    for package in ("gguf", "accelerate"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"needs the real-models extra ({REAL_EXTRA_HINT}): {package} is not installed")
    try:
        return prepare_real_models()
    except (RealModelMissing, GGUFCheckpointError) as exc:
        pytest.skip(f"needs the real-models extra ({REAL_EXTRA_HINT}): {exc}")


@pytest.fixture(scope="module")
def stack(real_models, tmp_path_factory) -> Iterator[tuple[Stack, Ports]]:
    directory: Path = tmp_path_factory.mktemp("real-stack")
    base = free_port_block(30)
    ports = Ports(base=base, router=base + 15, graph=base + 17)
    config = write_router_config(directory / "router.yaml", ports, real_models, policy=ARITHMETIC_GOES_LARGE)
    with running(Stack(stack_components(ports, config, PREDICTOR_ARGS, real_models), log_dir=directory)) as started:
        yield started, ports
    for port in listening_ports(ports):
        assert not is_listening(port), f"something still listens on {port} after the stack stopped"


def test_auto_routes_completions_by_policy_and_chats_to_the_model_with_a_chat_template(stack, real_models):
    _, ports = stack
    assert [real_models.model_name(size) for size in SIZES] == ["smollm2-135m-instruct", "gemma-3-270m"]
    with httpx.Client(base_url=f"http://127.0.0.1:{ports.router}", timeout=120) as client:
        completion = client.post(COMPLETIONS, json={"model": "auto", "prompt": "12 + 30 =", "max_tokens": 8,
                                                    "stop": ["\n"], "temperature": 0})
        chat = client.post(CHAT, json={"model": "auto", "messages": [{"role": "user", "content": "What is 12 + 30?"}],
                                       "max_tokens": 16, "temperature": 0})
        refused = client.post(CHAT, json={"model": "gemma-3-270m", "messages": [{"role": "user", "content": "Hi!"}]})
    assert completion.status_code == 200, completion.text
    assert completion.headers["x-route"] == "large" and completion.json()["model"] == "gemma-3-270m"
    assert completion.json()["choices"][0]["text"] == " 42"
    # The policy sends arithmetic to the large model, which has no chat template.
    assert chat.status_code == 200, chat.text
    assert chat.headers["x-route"] == "small" and chat.json()["model"] == "smollm2-135m-instruct"
    assert chat.headers["x-route-reason"] == "capability: gemma-3-270m serves no chat"
    assert chat.json()["choices"][0]["message"]["content"]
    assert refused.status_code == 400 and refused.headers["x-route"] == "large"
    assert refused.json()["error"]["message"] == \
        "this model has no chat template; use the completions API with a plain prompt"
