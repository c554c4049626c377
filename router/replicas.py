"""A target's replicas and the order to try them in: least loaded first by their predictors' live
metrics - the shortest waiting queue, then the least KV cache in use - as the Gateway API
inference extension's endpoint picker chooses. Equals, and replicas whose load is unknown, take
turns. A replica that refused a connection is skipped for a while."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from router.config import Target
from router.policy import Route

logger = logging.getLogger(__name__)


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
    load: Load | None = None  # None: unknown (no metrics URL, or the last poll failed)
    down_until: float = 0.0  # time.monotonic() until which it is skipped

    def is_down(self, now: float) -> bool:
        return now < self.down_until


class ReplicaSet:
    """The replicas of one target (its transformers) and the model name they serve."""

    def __init__(self, route: Route, target: Target, down_seconds: float) -> None:
        self.route = route
        self.model = target.model
        self.endpoints = [Endpoint(replica.url, replica.metrics_url) for replica in target.replicas]
        self.down_seconds = down_seconds
        self._turn = 0

    def describe(self) -> str:
        return ", ".join(endpoint.url + (f" (load from {endpoint.metrics_url})" if endpoint.metrics_url else "")
                         for endpoint in self.endpoints)

    def ranked(self) -> list[Endpoint]:
        """The replicas not marked down, the one to try first first: the least loaded ones and
        those of unknown load, in turn from one call to the next, then the others by load."""
        now = time.monotonic()
        up = [endpoint for endpoint in self.endpoints if not endpoint.is_down(now)]
        least = min((endpoint.load.rank for endpoint in up if endpoint.load is not None), default=None)
        first = [endpoint for endpoint in up if endpoint.load is None or endpoint.load.rank == least]
        rest = sorted((endpoint for endpoint in up if endpoint not in first), key=lambda endpoint: endpoint.load.rank)
        if not first:
            return rest
        turn = self._turn % len(first)
        self._turn += 1
        return first[turn:] + first[:turn] + rest

    def mark_down(self, endpoint: Endpoint) -> None:
        """Skip `endpoint` for down_seconds: it refused a connection, and the next request should
        not wait on it too."""
        endpoint.down_until = time.monotonic() + self.down_seconds
        logger.warning("%s replica %s refused the connection: skipped for %g s", self.model, endpoint.url,
                       self.down_seconds)
