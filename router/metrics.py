"""The router's Prometheus metrics, on KServe's /metrics through the default registry. Names
follow Prometheus' conventions for instrumented code (snake_case, `_total` on counters); every
series carries `model_name`, as the predictor's do.

- `router_requests_total{model_name, route, decided_by}`: requests routed, by the route chosen
  (`small`, `large`) and what chose it (`policy`; `hint`: an `x-route` header, a `route` field,
  or a concrete model name on the OpenAI edge; `capability`: the target chosen cannot serve the
  request, a chat to a model without a chat template, so the other one does).
- `router_route_score{model_name}` (histogram): the policy's scores; hinted requests have none.
- `router_escalations_total{model_name, reason}`: cascade escalations from the small to the large
  model, by router.cascade.Verdict (`empty`, `length`, `low_confidence`).
- `router_explored_total{model_name}`: requests both models answered for the decision log
  (`learning.explore_share`), the small one first and the large one's answer returned.
- `router_fallbacks_total{model_name, from_route, reason}`: requests the other target served because
  the one chosen failed before answering, by router.upstream.Failure (`unavailable`: it answered
  503, `down`: it refused or dropped the connection, `timeout`: no answer in time or a 504,
  `failed`: it admitted a stream, then ended it with a server error before its first token,
  `circuit_open`: its replicas' circuit breakers held the request back, none was tried).
- `router_routing_latency_seconds{model_name}` (histogram): the OpenAI edge's time to decide and to
  pick a replica, before the request leaves.
- `router_circuit_breaker_state{model_name, target, replica}` (gauge): each replica's circuit
  breaker (router/breakers.py) as its target (`small`, `large`) and URL name it: 0 closed, 1
  half-open, 2 open.
- `router_circuit_breaker_transitions_total{model_name, target, replica, to}`: its changes of
  state, by the state it went `to` (`open`, `half_open`, `closed`); a change to half-open is
  counted when the next request or load poll finds it so.

The OpenAI edge counts all of them; predict only decides, so it counts requests and scores.
`router_responses_total{model_name, status}`, every response by status code, is counted by a
middleware of its own (router/response_metrics.py)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

from router.breakers import BreakerState, CircuitBreaker
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
EXPLORED = Counter(
    "router_explored",
    "Requests both models answered so that the decision log learns from them (learning.explore_share).",
    ["model_name"],
)
FALLBACKS = Counter(
    "router_fallbacks", "Requests the other target served because the chosen one was unavailable, down or slow.",
    ["model_name", "from_route", "reason"],
)
# Deciding is pure Python over the prompt's text: tens of microseconds, a millisecond for long prompts.
ROUTING_LATENCY = Histogram(
    "router_routing_latency_seconds", "Time to decide a request's route and pick a replica.", ["model_name"],
    buckets=[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1],
)

BREAKER_STATE = Gauge(
    "router_circuit_breaker_state", "Each replica's circuit breaker: 0 closed, 1 half-open, 2 open.",
    ["model_name", "target", "replica"],
)
BREAKER_TRANSITIONS = Counter(
    "router_circuit_breaker_transitions", "Changes of state of the replicas' circuit breakers, by the new state.",
    ["model_name", "target", "replica", "to"],
)


def record_decision(model_name: str, decision: Decision, hinted: bool) -> None:
    ROUTED_REQUESTS.labels(model_name, decision.route.value, decision.decided_by).inc()
    if not hinted:
        ROUTE_SCORES.labels(model_name).observe(decision.score)



def show_breaker_state(model_name: str, target: str, replica: str, breaker: CircuitBreaker) -> None:
    """router_circuit_breaker_state of `breaker`, read from it when /metrics is scraped."""
    BREAKER_STATE.labels(model_name, target, replica).set_function(lambda: breaker.state.value)


def breaker_transition_counter(model_name: str, target: str, replica: str) -> Callable[[BreakerState], None]:
    """What counts a breaker's transitions in router_circuit_breaker_transitions_total."""
    def count(state: BreakerState) -> None:
        BREAKER_TRANSITIONS.labels(model_name, target, replica, state.label).inc()

    return count
