"""The router learning from its own traffic, through a real `python -m router` process in front of
fake transformers: each routed request becomes a decision log line (its prompt redacted, hashed or
whole as configured) with the cascade's verdict and whether both models agreed, and exploration
has both models answer. router.train then fits on that log."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from router.decision_log import LoggedDecision, weak_label
from tests.servers import Server

from .conftest import start_router, write_config
from .edge_fakes import FakeTransformer, running_transformers

CHAT = "/openai/v1/chat/completions"
PROMPT = "What is 347 plus 589? Mail me at ada@example.com"


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeTransformer]]:
    with running_transformers("llm-small", "llm-large") as running:
        yield running


def learning_config(path: Path, fakes: dict[str, FakeTransformer], **learning: object) -> Path:
    return write_config(
        path,
        targets={"small": {"model": "llm-small", "urls": [fakes["llm-small"].url]},
                 "large": {"model": "llm-large", "urls": [fakes["llm-large"].url]}},
        policy={"threshold": 0.99},
        cascade={"enabled": True, "min_confidence": -2.5},
        learning=learning,
    )


@pytest.fixture(scope="module")
def logging_router(fakes, tmp_path_factory) -> Iterator[tuple[Server, Path]]:
    directory = tmp_path_factory.mktemp("learning")
    log = directory / "decisions.jsonl"
    server = start_router(learning_config(directory / "router.yaml", fakes, decision_log=str(log)), directory)
    yield server, log
    assert server.stop() == 0, server.log()[-3000:]


def chat(content: str, model: str = "auto", **fields) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], **fields}


def logged_lines(log: Path, count: int) -> list[LoggedDecision]:
    """The log's last `count` lines, once written (a thread writes them after the answer)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = log.read_text().splitlines() if log.exists() else []
        if len(lines) >= count:
            return [LoggedDecision.model_validate_json(line) for line in lines[-count:]]
        time.sleep(0.05)
    raise AssertionError(f"the decision log has {len(lines)} lines, expected {count}")


@pytest.fixture
def reset(fakes) -> None:
    for fake in fakes.values():
        fake.reset()


def test_each_routed_request_is_logged_with_the_cascades_verdict(logging_router, fakes, reset):
    server, log = logging_router
    before = len(log.read_text().splitlines()) if log.exists() else 0
    with httpx.Client(base_url=server.url, timeout=30) as http:
        kept = http.post(CHAT, json=chat(PROMPT), headers={"x-request-id": "kept-1"})
        fakes["llm-small"].token_logprobs = [-0.1, -6.0]
        escalated = http.post(CHAT, json=chat(PROMPT))
        named = http.post(CHAT, json=chat(PROMPT, model="llm-large"))
    assert kept.headers["x-route"] == "small" and escalated.headers["x-route-escalated"] == "low_confidence"
    assert named.status_code == 200
    first, second, third = logged_lines(log, before + 3)[before:]
    assert first.request_id == "kept-1" and first.route == "small" and first.decided_by == "policy"
    assert first.cascade.verdict == "accepted" and first.cascade.confidence == pytest.approx(-0.2)
    # The default keeps prompts redacted: digits and e-mail addresses masked, words kept.
    assert first.prompt == "What is 000 plus 000? Mail me at <email>" and first.prompt_sha256
    assert weak_label(first) is False
    # Both fakes answer "<name> answers": they disagree, so the escalation was worth it.
    assert second.cascade.verdict == "low_confidence" and second.answered_by == "large"
    assert second.agreement is False and weak_label(second) is True
    assert third.decided_by == "hint" and third.cascade is None and weak_label(third) is None


def test_hashed_logs_keep_no_text_but_the_features_router_train_reads(fakes, reset, tmp_path):
    log = tmp_path / "decisions.jsonl"
    server = start_router(learning_config(tmp_path / "router.yaml", fakes, decision_log=str(log),
                                          log_prompts="hashed"), tmp_path)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            http.post(CHAT, json=chat(PROMPT))
        [line] = logged_lines(log, 1)
    finally:
        assert server.stop() == 0, server.log()[-3000:]
    raw = log.read_text()
    assert "plus" not in raw and "ada@" not in raw and "Mail" not in raw
    assert line.prompt is None and line.features.sparse and len(line.features.dense) > 0


def test_exploration_has_both_models_answer_and_returns_the_large_ones(fakes, reset, tmp_path):
    log = tmp_path / "decisions.jsonl"
    server = start_router(learning_config(tmp_path / "router.yaml", fakes, decision_log=str(log),
                                          explore_share=1.0), tmp_path)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            response = http.post(CHAT, json=chat(PROMPT))
            http.post(CHAT, json=chat(PROMPT, stream=True))
            metrics = http.get("/metrics").text
        [explored, stream] = logged_lines(log, 2)
    finally:
        assert server.stop() == 0, server.log()[-3000:]
    assert response.headers["x-route"] == "large"
    assert response.json()["choices"][0]["message"]["content"] == "llm-large answers"
    assert response.json()["choices"][0]["logprobs"] is None
    assert [request["body"].get("logprobs") for request in fakes["llm-small"].received[:1]] == [True]
    assert explored.explored and explored.cascade.verdict == "accepted" and explored.agreement is False
    assert weak_label(explored) is True
    # A stream is not explored (its tokens go to the client as they come).
    assert not stream.explored and stream.cascade is None
    assert any(line.startswith("router_explored_total{") and not line.endswith(" 0.0")
               for line in metrics.splitlines())


def test_a_decision_log_the_router_cannot_write_stops_it_with_a_message(fakes, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = learning_config(tmp_path / "router.yaml", fakes, decision_log=str(blocker / "decisions.jsonl"))
    with pytest.raises(RuntimeError, match="exited with 2") as failed:
        start_router(config, tmp_path)
    assert "cannot open the decision log" in str(failed.value)
