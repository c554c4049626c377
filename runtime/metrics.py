"""Prometheus metrics with vLLM's names (so KEDA queries, Grafana dashboards and the Gateway API
endpoint picker work unchanged), on KServe's /metrics through the default registry.

Gauges and the engine's cumulative counters are read from `EngineClient.stats()` at scrape
time, so they are right at every moment, aborts included; per-request counters and histograms
are fed from each request's outputs by a RequestTracker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from runtime.engine import EngineStats, RequestOutput

LABELS = ["model_name"]

# vLLM's bucket boundaries.
_TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
_ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0]
_REQUEST_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                    240.0, 480.0, 960.0, 1920.0, 7680.0]

PROMPT_TOKENS = Counter("vllm:prompt_tokens", "Prefill tokens processed.", LABELS)
GENERATION_TOKENS = Counter("vllm:generation_tokens", "Generation tokens processed.", LABELS)
REQUEST_SUCCESS = Counter(
    "vllm:request_success", "Finished requests, by finish reason.", LABELS + ["finished_reason"]
)
TIME_TO_FIRST_TOKEN = Histogram(
    "vllm:time_to_first_token_seconds", "Time to first token in seconds.", LABELS, buckets=_TTFT_BUCKETS
)
INTER_TOKEN_LATENCY = Histogram(
    "vllm:inter_token_latency_seconds", "Inter-token latency in seconds.", LABELS, buckets=_ITL_BUCKETS
)
E2E_REQUEST_LATENCY = Histogram(
    "vllm:e2e_request_latency_seconds", "End-to-end request latency in seconds.", LABELS, buckets=_REQUEST_BUCKETS
)
REQUEST_QUEUE_TIME = Histogram(
    "vllm:request_queue_time_seconds", "Time requests spent waiting to be scheduled, in seconds.", LABELS,
    buckets=_REQUEST_BUCKETS,
)
# Not one of vLLM's (it has none for start-up): our own prefix, as kserve_llm:replica_requests.
STARTUP_SECONDS = Gauge(
    "kserve_llm:startup_seconds", "Wall seconds of each start-up phase, process start to ready; the phases add up "
    "to the whole.", LABELS + ["phase"],
)


def set_startup_seconds(model_name: str, breakdown: dict[str, float]) -> None:
    """Publish a finished start-up's phases (StartupTimings.breakdown)."""
    for phase, seconds in breakdown.items():
        STARTUP_SECONDS.labels(model_name, phase).set(seconds)


class EngineStatsCollector(Collector):
    """Reads the engine's state at every scrape."""

    def __init__(self, model_name: str, read_stats: Callable[[], EngineStats]) -> None:
        self.model_name = model_name
        self.read_stats = read_stats

    def collect(self) -> Iterator[Metric]:
        stats = self.read_stats()
        labels = [self.model_name]
        yield self._gauge("vllm:num_requests_running", "Requests in the running batch.", stats.num_requests_running)
        yield self._gauge("vllm:num_requests_waiting", "Requests waiting to be scheduled.", stats.num_requests_waiting)
        yield self._gauge("vllm:kv_cache_usage_perc", "KV cache usage (1 means 100 percent).", stats.kv_cache_usage)
        for name, documentation, value in (
            ("vllm:num_preemptions", "Preemptions by the scheduler.", stats.num_preemptions),
            ("vllm:prefix_cache_queries", "Prefix cache queries.", stats.prefix_cache_queries),
            ("vllm:prefix_cache_hits", "Prefix cache hits.", stats.prefix_cache_hits),
            # Speculative decoding (zero without a draft model).
            ("vllm:spec_decode_num_drafts", "Speculative proposals, one per sequence and step.",
             stats.spec_decode_num_drafts),
            ("vllm:spec_decode_num_draft_tokens", "Draft tokens proposed.", stats.spec_decode_num_draft_tokens),
            ("vllm:spec_decode_num_accepted_tokens", "Draft tokens the target accepted.",
             stats.spec_decode_num_accepted_tokens),
        ):
            counter = CounterMetricFamily(name, documentation, labels=LABELS)
            counter.add_metric(labels, value)
            yield counter

    def _gauge(self, name: str, documentation: str, value: float) -> GaugeMetricFamily:
        gauge = GaugeMetricFamily(name, documentation, labels=LABELS)
        gauge.add_metric([self.model_name], value)
        return gauge


def register_engine_stats(model_name: str, read_stats: Callable[[], EngineStats]) -> EngineStatsCollector:
    collector = EngineStatsCollector(model_name, read_stats)
    REGISTRY.register(collector)
    return collector


def unregister_engine_stats(collector: EngineStatsCollector) -> None:
    REGISTRY.unregister(collector)


class RequestTracker:
    """Feeds one request's outputs into the per-request metrics."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.previous_token_time: float | None = None
        self.finished = False

    def observe(self, output: RequestOutput) -> None:
        timing = output.metrics
        if self.previous_token_time is None and output.output_token_ids:
            PROMPT_TOKENS.labels(self.model_name).inc(len(output.prompt_token_ids))
            if timing.first_token_time is not None:
                TIME_TO_FIRST_TOKEN.labels(self.model_name).observe(timing.first_token_time - timing.arrival_time)
            if timing.first_scheduled_time is not None:
                REQUEST_QUEUE_TIME.labels(self.model_name).observe(timing.first_scheduled_time - timing.arrival_time)
        elif self.previous_token_time is not None and output.new_token_ids and timing.last_token_time is not None:
            INTER_TOKEN_LATENCY.labels(self.model_name).observe(timing.last_token_time - self.previous_token_time)
        if output.new_token_ids:
            GENERATION_TOKENS.labels(self.model_name).inc(len(output.new_token_ids))
            self.previous_token_time = timing.last_token_time
        if output.finished:
            self._finish(output.finish_reason or "abort")
            if timing.finished_time is not None:
                E2E_REQUEST_LATENCY.labels(self.model_name).observe(timing.finished_time - timing.arrival_time)

    def close(self) -> None:
        """The request ended without a final output (client gone, timeout): count it as aborted."""
        if not self.finished:
            self._finish("abort")

    def _finish(self, reason: str) -> None:
        self.finished = True
        REQUEST_SUCCESS.labels(self.model_name, reason).inc()
