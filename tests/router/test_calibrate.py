"""`python -m router.calibrate`: on the shipped prompt set, the threshold it writes sends the asked
share to the large model, and the config keeps everything else, comments included."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from router.calibrate import choose_threshold, main, read_prompts, write_threshold
from router.config import load_config
from router.learned_policy import load_policy
from router.policy import RoutingPolicy

from .conftest import EXAMPLE_CONFIG, SHIPPED_PROMPTS, run_python, write_config

TASK_OUTCOMES = EXAMPLE_CONFIG.parent / "data" / "task_outcomes.jsonl"
TASK_ROUTER = EXAMPLE_CONFIG.parent / "data" / "task_router.safetensors"


def copy_of_example(path):
    """router/router.yaml, comments and all, with its learned model's path made absolute."""
    path.write_text(EXAMPLE_CONFIG.read_text().replace("data/task_router.safetensors", str(TASK_ROUTER)))
    return path


def calibrate(*args: str):
    return run_python("-m", "router.calibrate", *map(str, args))


def test_the_shipped_prompts_calibrate_the_rule_policy_to_30_percent_large(tmp_path):
    config_path = write_config(tmp_path / "router.yaml", policy={"threshold": 0.5})
    finished = calibrate(SHIPPED_PROMPTS, "--large_share", "0.3", "--config", config_path)
    assert finished.returncode == 0, finished.stderr
    config = load_config(config_path)
    prompts = read_prompts(SHIPPED_PROMPTS)
    policy = RoutingPolicy(config.policy.threshold, config.policy.weights)
    num_large = sum(policy.decide(prompt.routing_request()).route == "large" for prompt in prompts)
    assert len(prompts) >= 200
    assert abs(num_large - 0.3 * len(prompts)) <= 1
    assert f"{num_large} of {len(prompts)} prompts" in finished.stdout
    assert f"wrote policy.threshold: {config.policy.threshold} into {config_path}" in finished.stdout


def test_the_task_outcomes_calibrate_the_shipped_learned_policy(tmp_path):
    """The shipped config's learned model, read from the config's own folder, scores the prompts."""
    config_path = copy_of_example(tmp_path / "router.yaml")
    finished = calibrate(TASK_OUTCOMES, "--large_share", "0.3", "--config", config_path)
    assert finished.returncode == 0, finished.stderr
    config = load_config(config_path)
    policy = load_policy(config.policy)
    prompts = read_prompts(TASK_OUTCOMES)
    num_large = sum(policy.decide(prompt.routing_request()).route == "large" for prompt in prompts)
    assert abs(num_large - 0.3 * len(prompts)) <= 0.01 * len(prompts)
    assert "people, level 4" in finished.stdout


def test_only_the_threshold_line_changes(tmp_path):
    config_path = copy_of_example(tmp_path / "router.yaml")
    before = config_path.read_text().splitlines()
    assert write_threshold(config_path, 0.4125) is True
    after = config_path.read_text().splitlines()
    changed = [(old, new) for old, new in zip(before, after) if old != new]
    assert len(before) == len(after) and len(changed) == 1
    old, new = changed[0]
    assert new.startswith("  threshold: 0.4125 ")
    assert new[new.index("#"):] == old[old.index("#"):] and new.index("#") == old.index("#")


def test_a_config_without_a_threshold_line_is_rewritten_keeping_its_keys_in_order(tmp_path):
    config_path = tmp_path / "router.yaml"
    original = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    original["policy"] = {"weights": {"code": 0.5}}
    config_path.write_text(json.dumps(original))  # JSON is YAML in flow style
    assert write_threshold(config_path, 0.25) is False
    rewritten = yaml.safe_load(config_path.read_text())
    assert list(rewritten) == list(original)
    assert rewritten["policy"] == {"weights": {"code": 0.5}, "threshold": 0.25}


def test_the_threshold_is_the_quantile_that_sends_the_share_to_large():
    scores = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert choose_threshold(scores, 0.3) == 0.65
    assert choose_threshold(scores, 1.0) == 0.0
    assert choose_threshold(scores, 0.0) == 0.95


def test_ties_get_the_nearest_achievable_share():
    # Four prompts tie at 0.5: 30 % of ten can only be 20 % or 60 %; 20 % is nearer.
    scores = [0.0, 0.0, 0.1, 0.1, 0.5, 0.5, 0.5, 0.5, 0.9, 0.95]
    threshold = choose_threshold(scores, 0.3)
    assert sum(score >= threshold for score in scores) == 2


def run_main(monkeypatch, *args: object) -> int:
    """router.calibrate's main in this process; its exit status."""
    monkeypatch.setattr(sys, "argv", ["python -m router.calibrate", *map(str, args)])
    with pytest.raises(SystemExit) as exited:
        main()
    return exited.value.code


def test_a_bad_prompt_line_is_reported_with_its_number(tmp_path, monkeypatch, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "hi"}\n\n{"max_tokens": 5}\n')
    config_path = copy_of_example(tmp_path / "router.yaml")
    before = config_path.read_text()
    assert run_main(monkeypatch, prompts, "--large_share", "0.3", "--config", config_path) == 2
    error = capsys.readouterr().err
    assert f"{prompts} line 3: " in error and "an instance needs exactly one of `prompt`" in error
    assert config_path.read_text() == before


@pytest.mark.parametrize("share", ["-0.1", "1.5"])
def test_the_share_must_be_between_0_and_1(tmp_path, monkeypatch, capsys, share):
    assert run_main(monkeypatch, SHIPPED_PROMPTS, "--large_share", share, "--config", tmp_path / "unused.yaml") == 2
    assert "--large_share must be in [0, 1]" in capsys.readouterr().err
