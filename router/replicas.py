"""A target's replicas and the order to try them in: least loaded first by their predictors' live
metrics - the shortest waiting queue, then the least KV cache in use - as the Gateway API
inference extension's endpoint picker chooses. Equals, and replicas whose load is unknown, take
turns. A replica whose circuit breaker (router/breakers.py) holds requests back is skipped: when
every replica's is open, so is the target's, and no request goes to it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from router.breakers import CircuitBreaker
from router.config import CircuitBreakersConfig, Target
from router.metrics import breaker_transition_counter, show_breaker_state
from router.policy import Route


@dataclass(frozen=True, slots=True)
class Load:
    """What a replica's predictor reports: requests waiting for a batch slot, and the fraction of
    its KV cache in use (vLLM's `num_requests_waiting` and `kv_cache_usage_perc`)."""

    waiting: float
    kv_cache_usage: float

    @property
    def rank(self) -> tuple[float, float]:
        return self.waiting, self.kv_cache_usage


@dataclass(slots=True)
class Endpoint:
    """One replica as the router sees it now."""

    url: str
    metrics_url: str | None
    breaker: CircuitBreaker
    load: Load | None = None  # None: unknown (no metrics URL, or the last poll failed)

    def report_load(self, load: Load | None) -> None:
        """The load just polled (None: unknown); its waiting queue may open the breaker."""
        self.load = load
        if load is not None:
            self.breaker.observe_waiting(load.waiting)


class ReplicaSet:
    """The replicas of one target (its transformers) and the model name they serve; `router_name`
    labels their breakers' metrics."""

    def __init__(self, route: Route, target: Target, breakers: CircuitBreakersConfig, router_name: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.route = route
        self.model = target.model
        self.endpoints = [Endpoint(replica.url, replica.metrics_url,
                                   self._breaker(replica.url, breakers, router_name, clock))
                          for replica in target.replicas]
        self._turn = 0

    def _breaker(self, url: str, config: CircuitBreakersConfig, router_name: str,
                 clock: Callable[[], float]) -> CircuitBreaker:
        counter = breaker_transition_counter(router_name, self.route.value, url)
        breaker = CircuitBreaker(f"{self.model} replica {url}", config, clock, counter)
        show_breaker_state(router_name, self.route.value, url, breaker)
        return breaker

    def describe(self) -> str:
        return ", ".join(endpoint.url + (f" (load from {endpoint.metrics_url})" if endpoint.metrics_url else "")
                         for endpoint in self.endpoints)

    def ranked(self) -> list[Endpoint]:
        """The replicas whose breakers let a request through, the one to try first first: the
        least loaded ones and those of unknown load, in turn from one call to the next, then the
        others by load."""
        up = [endpoint for endpoint in self.endpoints if endpoint.breaker.admits()]
        least = min((endpoint.load.rank for endpoint in up if endpoint.load is not None), default=None)
        first = [endpoint for endpoint in up if endpoint.load is None or endpoint.load.rank == least]
        rest = sorted((endpoint for endpoint in up if endpoint not in first), key=lambda endpoint: endpoint.load.rank)
        if not first:
            return rest
        turn = self._turn % len(first)
        self._turn += 1
        return first[turn:] + first[:turn] + rest

    def seconds_until_half_open(self) -> float:
        """How long until the first of the target's open breakers half-opens (0 if one is not
        open): when ranked() offers no replica, how long a client should wait to try again."""
        return min(endpoint.breaker.seconds_until_half_open() for endpoint in self.endpoints)
