"""When batch lines may run: on spare capacity only (peak shaving). Online requests come first, so
a process sends at most `concurrency` lines at once, and none while a target is busy, its
predictors' waiting queues (`vllm:num_requests_waiting`, polled by router/load_metrics.py) at
`max_waiting` or more. Kept in one small class, so that a benchmark can tune the policy."""

from __future__ import annotations

from collections.abc import Iterable

from router.replicas import ReplicaSet


class SpareCapacity:
    def __init__(self, replica_sets: Iterable[ReplicaSet], concurrency: int, max_waiting: float) -> None:
        self.replica_sets = list(replica_sets)
        self.concurrency = concurrency
        self.max_waiting = max_waiting

    def free_slots(self, in_flight: int) -> int:
        """How many more lines may start now, with `in_flight` running in this process."""
        if any(self._busy(replicas) for replicas in self.replica_sets):
            return 0
        return max(0, self.concurrency - in_flight)

    def _busy(self, replicas: ReplicaSet) -> bool:
        """Every replica that takes requests has a known queue at the bound. A replica of unknown
        load counts as idle (no metrics, or they failed: the circuit breaker guards it), and a
        target whose breakers are all open is not busy but down (the edge falls back)."""
        up = [endpoint for endpoint in replicas.endpoints if endpoint.breaker.admits()]
        return bool(up) and all(endpoint.load is not None and endpoint.load.waiting >= self.max_waiting
                                for endpoint in up)
