"""The learned routing policy: fitted by router.train on labelled outcomes or on the router's own
decision log, saved as safetensors and loaded back unchanged, scored fast and explained by feature
group; a model file that cannot be used stops the router with a message that says why."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from router.config import PolicyConfig
from router.decision_log import LoggedDecision, weak_label
from router.features import RoutingRequest
from router.learned_policy import LearnedModel, LearnedModelError, LearnedPolicy, load_policy
from router.policy import Hint, Route, RoutingPolicy
from router.train import Example, TrainingError, fit, main as train_main, read_decision_log, read_outcomes
from router.text_features import DEFAULT_NUM_BUCKETS

EASY = ["Add {} and {}.", "Reverse this list: {}, {}.", "What is the capital of the country of Bravem?"]
HARD = ["Sort these numbers from smallest to largest: {}, {}, {}, {}, {}, {}.",
        "What does the village of Tudiar grow, {} or {}?"]


def _prompts(templates: list[str], count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(templates).format(*(rng.randrange(10, 100) for _ in range(6))) for _ in range(count)]


def _examples(count: int = 120, seed: int = 0) -> list[Example]:
    easy = [Example(RoutingRequest(text), None, False, "outcomes") for text in _prompts(EASY, count, seed)]
    hard = [Example(RoutingRequest(text), None, True, "outcomes") for text in _prompts(HARD, count, seed + 1)]
    return easy + hard


@pytest.fixture(scope="module")
def model() -> LearnedModel:
    return fit(_examples(), num_buckets=4096, log=lambda message: None)


def test_a_fitted_policy_scores_what_it_learned_hard_above_easy(model):
    policy = LearnedPolicy(model, threshold=0.5)
    easy = [policy.decide(RoutingRequest(text)) for text in _prompts(EASY, 30, 7)]
    hard = [policy.decide(RoutingRequest(text)) for text in _prompts(HARD, 30, 8)]
    assert max(decision.score for decision in easy) < min(decision.score for decision in hard)
    assert {decision.route for decision in easy} == {Route.SMALL}
    assert {decision.route for decision in hard} == {Route.LARGE}
    assert model.training["cross_validated_auc"] > 0.95


def test_a_decision_explains_its_score_by_feature_group(model):
    decision = LearnedPolicy(model, 0.5).decide(RoutingRequest(_prompts(HARD, 1, 3)[0]))
    described = decision.as_dict()
    assert set(described["features"]) == {"words", "structure", "rule_features", "bias"}
    logit = sum(part["logit"] for part in described["features"].values())
    assert described["score"] == pytest.approx(1 / (1 + np.exp(-logit)), abs=1e-3)


def test_a_hint_overrides_the_learned_score(model):
    decision = LearnedPolicy(model, 0.5).decide(RoutingRequest(_prompts(HARD, 1, 3)[0]), Hint(Route.SMALL, "test"))
    assert decision.route is Route.SMALL


def test_the_model_file_loads_back_the_same_scores(model, tmp_path):
    path = tmp_path / "router.safetensors"
    model.save(path)
    loaded = LearnedModel.load(path)
    assert loaded.training == model.training
    for text in _prompts(EASY + HARD, 20, 9):
        request = RoutingRequest(text)
        assert LearnedPolicy(loaded, 0.5).score(request) == LearnedPolicy(model, 0.5).score(request)


def test_the_config_chooses_the_learned_policy_by_its_file(model, tmp_path):
    path = tmp_path / "router.safetensors"
    model.save(path)
    assert isinstance(load_policy(PolicyConfig(threshold=0.3, learned_model=path)), LearnedPolicy)
    assert isinstance(load_policy(PolicyConfig(threshold=0.3)), RoutingPolicy)


def test_a_missing_file_says_so(tmp_path):
    with pytest.raises(LearnedModelError, match="does not exist.*router.train"):
        LearnedModel.load(tmp_path / "absent.safetensors")


def test_a_file_that_is_not_safetensors_says_so(tmp_path):
    path = tmp_path / "router.safetensors"
    path.write_bytes(b"\x80\x04\x95 a pickle, perhaps")
    with pytest.raises(LearnedModelError, match="not a readable safetensors file"):
        LearnedModel.load(path)


def test_a_safetensors_file_of_another_kind_says_so(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "weights.safetensors"
    save_file({"weight": np.zeros(4, np.float32)}, str(path))
    with pytest.raises(LearnedModelError, match="is not a .*learned-routing-policy"):
        LearnedModel.load(path)


def test_weights_that_do_not_fit_the_featurizer_are_called_corrupt(model, tmp_path):
    path = tmp_path / "router.safetensors"
    LearnedModel(model.sparse_weights, model.dense_weights[:3], model.dense_mean, model.dense_scale, 0.0).save(path)
    with pytest.raises(LearnedModelError, match="corrupt: dense_weights has shape"):
        LearnedModel.load(path)
    LearnedModel(model.sparse_weights * np.nan, model.dense_weights, model.dense_mean, model.dense_scale,
                 0.0).save(path)
    with pytest.raises(LearnedModelError, match="not finite"):
        LearnedModel.load(path)


def test_fitting_needs_both_labels(tmp_path):
    only_easy = [example for example in _examples() if not example.gain]
    with pytest.raises(TrainingError, match="each label"):
        fit(only_easy, num_buckets=1024, log=lambda message: None)


def test_labelled_outcomes_are_read_with_the_gain_as_label(tmp_path):
    path = tmp_path / "outcomes.jsonl"
    rows = [{"prompt": "a", "small_correct": True, "large_correct": True},
            {"messages": [{"role": "user", "content": "b"}], "small_correct": False, "large_correct": True},
            {"prompt": "c", "small_correct": False, "large_correct": False}]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    assert [example.gain for example in read_outcomes(path)] == [False, True, False]
    path.write_text('{"prompt": "a", "small_correct": "perhaps"}\n')
    with pytest.raises(TrainingError, match="line 1: .*small_correct"):
        read_outcomes(path)


def _logged(**fields) -> LoggedDecision:
    return LoggedDecision(route="small", decided_by="policy", score=0.2, prompt="What is 2 plus 2?", **fields)


def test_the_cascade_gives_weak_labels():
    assert weak_label(_logged(cascade={"verdict": "accepted", "confidence": -0.1})) is False
    assert weak_label(_logged(cascade={"verdict": "low_confidence"}, agreement=True)) is False
    assert weak_label(_logged(cascade={"verdict": "low_confidence"}, agreement=False)) is True
    assert weak_label(_logged(explored=True, cascade={"verdict": "accepted"}, agreement=False)) is True
    # Sent straight to the large model, or escalated to a large model that failed: nothing to learn.
    assert weak_label(_logged()) is None
    assert weak_label(_logged(cascade={"verdict": "low_confidence"})) is None


def test_router_train_fits_on_a_decision_log(tmp_path, capsys):
    log = tmp_path / "decisions.jsonl"
    lines = []
    for example in _examples(60):
        verdict = "low_confidence" if example.gain else "accepted"
        record = _logged(cascade={"verdict": verdict}, agreement=False if example.gain else None)
        lines.append(record.model_copy(update={"prompt": example.request.text}).model_dump_json(exclude_none=True))
    lines.append(LoggedDecision(route="large", decided_by="policy", score=0.9, prompt="x").model_dump_json())
    log.write_text("\n".join(lines) + "\n")
    examples, skipped = read_decision_log(log, DEFAULT_NUM_BUCKETS)
    assert len(examples) == 120 and sum(skipped.values()) == 1
    out = tmp_path / "learned.safetensors"
    train_main(["--decision_log", str(log), "--out", str(out), "--buckets", "4096"])
    assert "cross_validated_auc" in capsys.readouterr().out
    policy = LearnedPolicy(LearnedModel.load(out), 0.5)
    assert policy.score(RoutingRequest(_prompts(HARD, 1, 5)[0])) > policy.score(RoutingRequest(_prompts(EASY, 1, 5)[0]))
