"""Which replica of a target takes the next request: the least loaded by its predictor's metrics
(waiting queue, then KV cache use), equals and unknowns in turn, those whose circuit breakers
hold requests back skipped; and how the load is read from Prometheus text."""

from __future__ import annotations

import pytest

from router.config import CircuitBreakersConfig, Target
from router.load_metrics import parse_load
from router.policy import Route
from router.replicas import Load, ReplicaSet

from .test_breakers import Clock

URLS = ["http://a", "http://b", "http://c"]


def replica_set(clock: Clock | None = None, **breakers: object) -> ReplicaSet:
    return ReplicaSet(Route.SMALL, Target(model="llm-small", urls=URLS), CircuitBreakersConfig(**breakers),
                      "router", clock or Clock())


def refuse_connection(replicas: ReplicaSet, index: int) -> None:
    replicas.endpoints[index].breaker.admit().failed("no connection", at_once=True)


def first_picks(replicas: ReplicaSet, count: int) -> list[str]:
    return [replicas.ranked()[0].url for _ in range(count)]


def set_loads(replicas: ReplicaSet, *loads: Load | None) -> None:
    for endpoint, load in zip(replicas.endpoints, loads):
        endpoint.load = load


def test_the_shortest_queue_goes_first_then_the_emptiest_kv_cache():
    replicas = replica_set()
    set_loads(replicas, Load(2, 0.1), Load(0, 0.9), Load(0, 0.3))
    assert [endpoint.url for endpoint in replicas.ranked()] == ["http://c", "http://b", "http://a"]


def test_equally_loaded_replicas_take_turns():
    replicas = replica_set()
    set_loads(replicas, Load(0, 0.0), Load(0, 0.0), Load(3, 0.0))
    assert first_picks(replicas, 4) == ["http://a", "http://b", "http://a", "http://b"]


def test_replicas_of_unknown_load_take_turns_with_the_least_loaded():
    replicas = replica_set()
    assert first_picks(replicas, 4) == ["http://a", "http://b", "http://c", "http://a"]
    set_loads(replicas, Load(1, 0.5), None, Load(4, 0.2))
    assert sorted(first_picks(replicas, 2)) == ["http://a", "http://b"]
    assert replicas.ranked()[-1].url == "http://c"


def test_a_replica_whose_breaker_is_open_is_skipped_until_it_half_opens():
    clock = Clock()
    replicas = replica_set(clock, open_seconds=5)
    set_loads(replicas, Load(0, 0.0), Load(1, 0.0), Load(2, 0.0))
    refuse_connection(replicas, 0)
    assert [endpoint.url for endpoint in replicas.ranked()] == ["http://b", "http://c"]
    clock.advance(5)
    assert replicas.ranked()[0].url == "http://a"


def test_a_half_open_replica_is_offered_only_while_a_probe_is_free():
    clock = Clock()
    replicas = replica_set(clock, open_seconds=5)
    refuse_connection(replicas, 0)
    clock.advance(5)
    probe = replicas.endpoints[0].breaker.admit()
    assert "http://a" not in [endpoint.url for endpoint in replicas.ranked()]
    probe.release()
    assert "http://a" in [endpoint.url for endpoint in replicas.ranked()]


def test_a_long_waiting_queue_polled_opens_the_replicas_breaker():
    replicas = replica_set(max_waiting=4)
    replicas.endpoints[0].report_load(Load(4, 0.1))
    replicas.endpoints[1].report_load(Load(3, 0.1))
    assert sorted(endpoint.url for endpoint in replicas.ranked()) == ["http://b", "http://c"]


def test_no_replica_is_offered_when_every_breaker_is_open_and_the_first_half_opens_soonest():
    clock = Clock()
    replicas = replica_set(clock, open_seconds=5)
    for index in range(len(URLS)):
        refuse_connection(replicas, index)
        clock.advance(1)
    assert replicas.ranked() == []
    assert replicas.seconds_until_half_open() == pytest.approx(2)


PREDICTOR_METRICS = """\
# HELP vllm:num_requests_waiting Requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="llm-small"} 3.0
vllm:num_requests_waiting{model_name="other"} 9.0
# HELP vllm:kv_cache_usage_perc KV cache usage (1 means 100 percent).
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{model_name="llm-small"} 0.25
# HELP vllm:num_requests_running Requests in the model's batch.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="llm-small"} 7.0
"""


def test_the_load_is_read_for_the_targets_model():
    assert parse_load(PREDICTOR_METRICS, "llm-small") == Load(waiting=3.0, kv_cache_usage=0.25)


@pytest.mark.parametrize(("text", "model", "message"), [
    (PREDICTOR_METRICS, "llm-large",
     "no vllm:num_requests_waiting or vllm:kv_cache_usage_perc for model_name='llm-large'"),
    (PREDICTOR_METRICS.split("# HELP vllm:kv")[0], "llm-small", "no vllm:kv_cache_usage_perc for"),
])
def test_missing_gauges_leave_the_load_unknown(text, model, message):
    with pytest.raises(ValueError, match=message):
        parse_load(text, model)
