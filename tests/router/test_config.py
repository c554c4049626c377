"""The router's YAML config: the shipped example loads; a wrong file is refused with a message that
names the field, both by load_config and by `python -m router` at start-up; the deprecated
`load_balancing.down_seconds` still works, as `circuit_breakers.open_seconds`."""

from __future__ import annotations

import logging

import pytest

from router.config import CircuitBreakersConfig, ConfigError, Replica, RouterConfig, load_config, parse_config
from router.policy import Route

from .conftest import EXAMPLE_CONFIG, run_python

TARGETS = {
    "small": {"model": "llm-small", "urls": ["http://127.0.0.1:9001"]},
    "large": {"model": "llm-large", "urls": ["http://127.0.0.1:9002/", "https://large-2.example:8443"]},
}


def test_the_example_config_loads():
    config = load_config(EXAMPLE_CONFIG)
    assert config.model_name == "router"
    assert config.targets.of(Route.SMALL).model == "llm-small"
    assert config.targets.of(Route.LARGE).replicas == [
        Replica(url="http://127.0.0.1:9002", metrics_url="http://127.0.0.1:9004/metrics")]
    assert 0.0 <= config.policy.threshold <= 1.0 and config.policy.weights == {}
    # The learned model's path is read from the config file's folder.
    assert config.policy.learned_model == EXAMPLE_CONFIG.parent / "data" / "task_router.safetensors"
    assert config.cascade.enabled and config.cascade.min_confidence == -3.0 and not config.cascade.escalate_on_length
    assert config.learning.decision_log is None and config.learning.explore_share == 0.0
    assert (config.timeouts.connect_seconds, config.timeouts.request_seconds) == (5, 600)
    assert config.load_balancing.metrics_interval_seconds == 1
    assert config.circuit_breakers == CircuitBreakersConfig(
        failure_threshold=3, open_seconds=5, max_open_seconds=60, half_open_probes=1, max_waiting=None,
        max_latency_seconds=None)
    # The task models' millions of matmul parameters per token; both serve chat.
    assert (config.targets.small.cost_per_token, config.targets.large.cost_per_token) == (0.72, 2.63)
    assert config.targets.small.chat and config.targets.large.chat


def test_only_targets_are_required_and_urls_lose_their_trailing_slash():
    config = parse_config({"targets": TARGETS})
    assert config == RouterConfig.model_validate({"targets": TARGETS})
    assert config.policy.threshold == 0.5 and config.timeouts.request_seconds == 600
    assert config.targets.large.urls == ["http://127.0.0.1:9002", "https://large-2.example:8443"]
    assert config.targets.large.replicas == [Replica(url="http://127.0.0.1:9002"),
                                             Replica(url="https://large-2.example:8443")]
    # Unset costs are not compared; a target serves chat unless it says otherwise.
    assert config.targets.small.cost_per_token is None and config.targets.large.chat


def test_a_target_says_what_a_token_costs_and_whether_it_serves_chat():
    targets = {"small": {**TARGETS["small"], "cost_per_token": 134.48},
               "large": {**TARGETS["large"], "cost_per_token": 268.04, "chat": False}}
    config = parse_config({"targets": targets})
    assert config.targets.small.serves(chat=True) and config.targets.small.serves(chat=False)
    assert not config.targets.large.serves(chat=True) and config.targets.large.serves(chat=False)
    assert config.targets.large.describe() == "llm-large (cost 268.04 per token, no chat)"
    # Equal costs are allowed: the small target must only not cost more.
    parse_config({"targets": {**targets, "large": {**targets["large"], "cost_per_token": 134.48}}})


def test_a_replica_is_a_url_or_a_url_with_its_predictors_metrics():
    urls = ["http://127.0.0.1:9001/", {"url": "http://10.0.0.7:8080/", "metrics_url": "http://10.0.0.7:8082/metrics"}]
    config = parse_config({"targets": {**TARGETS, "small": {"model": "llm-small", "urls": urls}}})
    assert config.targets.small.replicas == [
        Replica(url="http://127.0.0.1:9001"),
        Replica(url="http://10.0.0.7:8080", metrics_url="http://10.0.0.7:8082/metrics"),
    ]


@pytest.mark.parametrize(("change", "message"), [
    ({"target": {}}, "target: Extra inputs are not permitted"),
    ({"policy": {"threshold": 1.5}}, "policy.threshold: Input should be less than or equal to 1"),
    ({"policy": {"treshold": 0.4}}, "policy.treshold: Extra inputs are not permitted"),
    ({"policy": {"weights": {"cod": 0.3}}}, "policy.weights: .*unknown feature.*cod; the features are prompt_tokens"),
    ({"policy": {"weights": {"code": -1}}}, "policy.weights: .*weights must be >= 0"),
    ({"cascade": {"min_confidence": 0.5}}, "cascade.min_confidence: Input should be less than or equal to 0"),
    ({"timeouts": {"connect_seconds": 0}}, "timeouts.connect_seconds: Input should be greater than 0"),
    ({"targets": {"small": TARGETS["small"]}}, "targets.large: Field required"),
    ({"targets": {**TARGETS, "medium": TARGETS["small"]}}, "targets.medium: Extra inputs are not permitted"),
    ({"targets": {**TARGETS, "small": {"model": "s", "urls": []}}}, "targets.small.urls: List should have at least 1"),
    ({"targets": {**TARGETS, "small": {"model": "s", "urls": ["localhost:9001"]}}},
     "targets.small.urls: .*must be http:// or https:// URLs with a host, got 'localhost:9001'"),
    ({"targets": {**TARGETS, "small": {"model": "s", "urls": [{"url": "http://a", "metrics_url": "a:9/metrics"}]}}},
     "targets.small.urls.0.replica.metrics_url: .*must be http:// or https:// URLs with a host, got 'a:9/metrics'"),
    ({"targets": {**TARGETS, "small": {"model": "s", "urls": [{"url": "http://a", "metrics": "http://a"}]}}},
     "targets.small.urls.0.replica.metrics: Extra inputs are not permitted"),
    ({"targets": {**TARGETS, "small": {"model": "llm-large", "urls": ["http://a"]}}},
     "targets: .*small and large serve the same model 'llm-large'"),
    ({"targets": {**TARGETS, "small": {"model": "auto", "urls": ["http://a"]}}}, "targets: .*'auto' asks the OpenAI"),
    ({"targets": {**TARGETS, "small": {**TARGETS["small"], "cost_per_token": 0}}},
     "targets.small.cost_per_token: Input should be greater than 0"),
    ({"targets": {"small": {**TARGETS["small"], "cost_per_token": 268.04},
                  "large": {**TARGETS["large"], "cost_per_token": 134.48}}},
     r"targets: .*small costs more per token than large \(268.04 > 134.48\): the cheaper model is the small target"),
    ({"targets": {**TARGETS, "large": {**TARGETS["large"], "cost_per_token": 2}}},
     "targets: .*cost_per_token is set on one target only: set it on small too"),
    ({"targets": {**TARGETS, "large": {**TARGETS["large"], "chat": "sometimes"}}},
     "targets.large.chat: Input should be a valid boolean"),
    ({"load_balancing": {"metrics_interval_seconds": 0}},
     "load_balancing.metrics_interval_seconds: Input should be greater than 0"),
    ({"circuit_breakers": {"failure_threshold": 0}}, "circuit_breakers.failure_threshold: Input should be greater "
                                                     "than or equal to 1"),
    ({"circuit_breakers": {"failure_threshold": 2.5}}, "circuit_breakers.failure_threshold: Input should be a valid "
                                                       "integer"),
    ({"circuit_breakers": {"open_seconds": 0}}, "circuit_breakers.open_seconds: Input should be greater than 0"),
    ({"circuit_breakers": {"half_open_probes": 0}}, "circuit_breakers.half_open_probes: Input should be greater"),
    ({"circuit_breakers": {"max_waiting": 0}}, "circuit_breakers.max_waiting: Input should be greater than or "
                                               "equal to 1"),
    ({"circuit_breakers": {"max_latency_seconds": -1}},
     "circuit_breakers.max_latency_seconds: Input should be greater than 0"),
    ({"circuit_breakers": {"open_seconds": 30, "max_open_seconds": 10}},
     r"circuit_breakers: .*max_open_seconds \(10\) is below open_seconds \(30\): the backoff starts at "
     r"open_seconds and is capped at max_open_seconds, so set max_open_seconds >= open_seconds"),
    ({"circuit_breakers": {"open_sconds": 30}}, "circuit_breakers.open_sconds: Extra inputs are not permitted"),
    ({"load_balancing": {"down_seconds": 2}, "circuit_breakers": {"open_seconds": 3}},
     "load_balancing.down_seconds is the deprecated name of circuit_breakers.open_seconds: set only "
     "circuit_breakers.open_seconds"),
])
def test_a_wrong_field_is_named_in_the_error(change, message):
    with pytest.raises(ConfigError, match=f"^router.yaml: {message}"):
        parse_config({"targets": TARGETS, **change}, "router.yaml")


def test_the_deprecated_down_seconds_is_read_as_open_seconds_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="router.config"):
        config = parse_config({"targets": TARGETS, "load_balancing": {"metrics_interval_seconds": 2,
                                                                      "down_seconds": 7}}, "router.yaml")
    assert config.circuit_breakers.open_seconds == 7 and config.load_balancing.metrics_interval_seconds == 2
    assert config.circuit_breakers.failure_threshold == 3
    assert caplog.messages == ["router.yaml: load_balancing.down_seconds is deprecated, read as "
                               "circuit_breakers.open_seconds: 7 (move it there)"]


def test_files_that_are_missing_or_not_yaml_mappings_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the router config"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("targets: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(tmp_path / "broken.yaml")
    (tmp_path / "list.yaml").write_text("- small\n- large\n")
    with pytest.raises(ConfigError, match="list.yaml: must be a YAML mapping with at least `targets`, got list"):
        load_config(tmp_path / "list.yaml")


# KServe, parsing sys.argv as it is imported, would take `--config` for its `--configure_logging`.
@pytest.mark.parametrize("spelling", ["--config PATH", "--config=PATH"])
def test_the_router_does_not_start_on_a_bad_config(tmp_path, spelling):
    config = tmp_path / "router.yaml"
    config.write_text(EXAMPLE_CONFIG.read_text().replace("threshold: ", "threshold: 7 #"))
    finished = run_python("-m", "router", *spelling.replace("PATH", str(config)).split())
    assert finished.returncode == 2
    assert f"cannot start the router: {config}: policy.threshold: Input should be less than or equal to 1" \
        in finished.stdout + finished.stderr


def test_the_router_does_not_start_when_small_costs_more(tmp_path):
    config = tmp_path / "router.yaml"
    config.write_text(EXAMPLE_CONFIG.read_text().replace("cost_per_token: 0.72", "cost_per_token: 5"))
    finished = run_python("-m", "router", "--config", str(config))
    assert finished.returncode == 2
    assert f"cannot start the router: {config}: targets: Value error, small costs more per token than large (5 > 2.63)" \
        in finished.stdout + finished.stderr
