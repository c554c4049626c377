"""When batch lines may run: on spare capacity only (peak shaving). Online requests come first, so
a process sends at most `concurrency` lines at once while it serves no online request, fewer
(`beside_online`) from the moment one comes until `quiet_seconds` after the last one ended, and
none while a target is busy, its predictors' waiting queues (`vllm:num_requests_waiting`, polled
by router/load_metrics.py) at `max_waiting` or more. The waiting queue alone reacts too late: it
is polled once a second, and a predictor with free batch slots keeps it empty while batch lines
fill its steps and slow every online request's first token (benchmarks/batch_drain.py).
Kept in one small module, so that a benchmark can tune the policy."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from router.replicas import ReplicaSet
from serving.openai_routes import BATCHES_PATH, FILES_PATH

# Set in the scope of a batch line's request (router/batch/dispatch.py): it is no online traffic.
BATCH_LINE_SCOPE_KEY = "kserve_llm.batch_line"


class OnlineTraffic:
    """The online requests this router process is serving, and when the last one ended."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.in_flight = 0
        self._last_ended = -math.inf

    def started(self) -> None:
        self.in_flight += 1

    def ended(self) -> None:
        self.in_flight -= 1
        self._last_ended = self.clock()

    def quiet_seconds(self) -> float:
        """How long no online request has been in flight (0 while one is)."""
        return 0.0 if self.in_flight else self.clock() - self._last_ended


class OnlineTrafficMiddleware:
    """Counts every POST a client sends (completions, chats, predicts) into OnlineTraffic, from
    its start to its response's end; not the batch API's own routes, and not batch lines."""

    def __init__(self, app: ASGIApp, traffic: OnlineTraffic) -> None:
        self.app = app
        self.traffic = traffic

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_online(scope):
            await self.app(scope, receive, send)
            return
        self.traffic.started()
        try:
            await self.app(scope, receive, send)
        finally:
            self.traffic.ended()


def _is_online(scope: Scope) -> bool:
    return (scope["type"] == "http" and scope["method"] == "POST" and not scope.get(BATCH_LINE_SCOPE_KEY)
            and not scope["path"].startswith((FILES_PATH, BATCHES_PATH)))


class SpareCapacity:
    def __init__(self, replica_sets: Iterable[ReplicaSet], concurrency: int, max_waiting: float,
                 beside_online: int | None = None, quiet_seconds: float = 0.0,
                 online: OnlineTraffic | None = None) -> None:
        """`beside_online` None: as many lines beside online requests as without them."""
        self.replica_sets = list(replica_sets)
        self.concurrency = concurrency
        self.max_waiting = max_waiting
        self.beside_online = concurrency if beside_online is None else min(beside_online, concurrency)
        self.quiet_seconds = quiet_seconds
        self.online = online if online is not None else OnlineTraffic()

    def free_slots(self, in_flight: int) -> int:
        """How many more lines may start now, with `in_flight` running in this process."""
        if any(self._busy(replicas) for replicas in self.replica_sets):
            return 0
        return max(0, self.limit() - in_flight)

    def limit(self) -> int:
        """The lines this process may run now: all of `concurrency` only once online traffic has
        been quiet for `quiet_seconds` (arrivals a fraction of a second apart are one burst)."""
        online = self.online.in_flight or self.online.quiet_seconds() < self.quiet_seconds
        return self.beside_online if online else self.concurrency

    def _busy(self, replicas: ReplicaSet) -> bool:
        """Every replica that takes requests has a known queue at the bound. A replica of unknown
        load counts as idle (no metrics, or they failed: the circuit breaker guards it), and a
        target whose breakers are all open is not busy but down (the edge falls back)."""
        up = [endpoint for endpoint in replicas.endpoints if endpoint.breaker.admits()]
        return bool(up) and all(endpoint.load is not None and endpoint.load.waiting >= self.max_waiting
                                for endpoint in up)
