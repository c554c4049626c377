"""The router's Prometheus metrics, on KServe's /metrics through the default registry. Names
follow Prometheus' conventions for instrumented code (snake_case, `_total` on counters); every
series carries `model_name`, as the predictor's do.

- `router_requests_total{model_name, route, decided_by}`: requests routed, by the route taken
  (`small`, `large`) and what chose it (`policy`, `hint`).
- `router_route_score{model_name}` (histogram): the policy's scores; hinted requests have none.
- `router_escalations_total{model_name, reason}`: cascade escalations from the small to the large
  model, by router.cascade.Verdict (`empty`, `length`, `low_confidence`).
- `router_fallbacks_total{model_name, from_route, reason}`: requests sent to the other target
  because the chosen one was overloaded (`overloaded`, a 503) or could not be reached (`down`).

The OpenAI edge counts escalations and fallbacks; predict only decides, so it counts requests and
scores."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from router.policy import Decision

SCORE_BUCKETS = [step / 20 for step in range(1, 21)]

ROUTED_REQUESTS = Counter(
    "router_requests", "Requests routed, by route and by what decided it.", ["model_name", "route", "decided_by"]
)
ROUTE_SCORES = Histogram(
    "router_route_score", "Routing scores of the policy (0: the small model will do, 1: needs the large one).",
    ["model_name"], buckets=SCORE_BUCKETS,
)
ESCALATIONS = Counter(
    "router_escalations", "Cascade escalations from the small to the large model, by reason.",
    ["model_name", "reason"],
)
FALLBACKS = Counter(
    "router_fallbacks", "Requests sent to the other target because the chosen one was overloaded or down.",
    ["model_name", "from_route", "reason"],
)


def record_decision(model_name: str, decision: Decision, hinted: bool) -> None:
    ROUTED_REQUESTS.labels(model_name, decision.route.value, "hint" if hinted else "policy").inc()
    if not hinted:
        ROUTE_SCORES.labels(model_name).observe(decision.score)
