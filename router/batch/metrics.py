"""The batch API's Prometheus metrics, on the router's /metrics (the default registry).

- `router_batch_lines_total{outcome}`: lines the worker handled: `completed` (a 2xx answer kept),
  `failed` (another answer kept, for the error file), `retried` (a 429 or 503: run again after
  its Retry-After), `preempted` (its request cancelled for online requests: sent again later),
  `skipped` (its batch had ended, or it already had a result: a redelivery).
- `router_batch_lines_in_flight`: lines this process is running now.
- `router_batch_transitions_total{to, kind}`: batches (`kind` batch) and background requests
  (`kind` background, batches of one line) that reached a status: `in_progress` or `failed` at
  creation, then `finalizing` and how they ended.
- `router_batch_lines_pending`: lines of the store's batches in progress (background requests
  included) that have no result yet, as this process's sweeper last counted them (every second).
  The store is shared, so every replica shows the same backlog: take the max, not the sum."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

BATCH_LINES = Counter("router_batch_lines", "Batch lines handled by this process's worker, by outcome.",
                      ["outcome"])
BATCH_LINES_IN_FLIGHT = Gauge("router_batch_lines_in_flight", "Batch lines this process is running now.")
BATCH_TRANSITIONS = Counter("router_batch_transitions", "Batches that reached a status, by the status and kind.",
                            ["to", "kind"])
BATCH_LINES_PENDING = Gauge("router_batch_lines_pending",
                            "Lines of the batches in progress without a result yet, as the sweeper last counted them.")

# Every series from the start, so that a dashboard's rate() sees the first increment.
LINE_OUTCOMES = ("completed", "failed", "retried", "preempted", "skipped")
for _outcome in LINE_OUTCOMES:
    BATCH_LINES.labels(_outcome)
