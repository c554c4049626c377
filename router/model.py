"""RouterModel: the router as a kserve.Model, a step of an InferenceGraph. Its predict returns the
request with the decision added - top-level `route` ("small" | "large") and `route_score` - so
that a Switch node can branch on it, and `route_decisions`, each instance's decision with the
features that drove it.

KServe's Switch evaluates GJSON conditions against the whole JSON body, and a bare `route=="large"`
is not a GJSON query (it looks up a key of that name): the condition that works is
`[@this].#(route=="large")`. The Switch then sends that same body to the chosen target, so the
answer has to be a request the target takes:
- v1 `:predict` returns the body it got, with the three fields added (and `route_reason` when a
  chat was moved to the target that serves chat); a `route` hint in it is overwritten by the
  decision (which follows the hint, unless its target cannot serve a chat).
- v2 REST `/infer` returns the request echoed as v2 JSON (`id`, `inputs`, `parameters` without
  the router's own `route`) plus the three fields. It is sent as raw JSON bytes: a v2 response
  object has `outputs` instead of `inputs` and KServe would drop the added fields.
- v2 gRPC (which no graph uses) answers a plain response with outputs `route` BYTES [1] and
  `route_score` FP32 [1].

A batch is routed as one request, to where its most demanding instance needs (the highest
score); hints (`x-route: small|large` header, else `route` in the body or v2 parameters) apply to
the whole batch and override the policy. A batch with a chat instance goes only to a target that
serves chat (router/capability.py), whatever the policy or a hint chose."""

from __future__ import annotations

import json
import logging
import uuid

from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferRequest, InferResponse

from router.capability import placed
from router.config import RouterConfig
from router.features import RoutingRequest, TokenCounter
from router.metrics import record_decision
from router.learned_policy import LearnedPolicy, load_policy
from router.policy import CAPABILITY, Decision, Hint, RoutingPolicy, batch_decision, parse_hint
from router.schemas import ROUTER_PARAMETERS, InferParameters, PredictRequest
from router.tensors import INPUT_METADATA, OUTPUT_METADATA, echo_request, prompts_of, request_parameters, route_outputs
from serving import tracing
from serving.base_model import ServingModel

logger = logging.getLogger(__name__)

ROUTE_HEADER = "x-route"
# orjson, which KServe writes v1 answers with, writes JSON arrays and objects nested at most this
# deep, though it reads them up to 1024 deep: a request echoed back must not nest deeper.
MAX_ECHOED_DEPTH = 254


class RouterModel(ServingModel):
    draining_reason = "the router is shutting down; retry on another replica"

    def __init__(self, name: str, config: RouterConfig, tokenizer_dir: str | None = None) -> None:
        super().__init__(name)
        self.config = config
        self.tokenizer_dir = tokenizer_dir
        self.policy: RoutingPolicy | LearnedPolicy | None = None
        # Counts prompt tokens for the policy and for the gateway's reservations.
        self.token_counter = TokenCounter(tokenizer_dir)

    # Lifecycle ----------------------------------------------------------------------

    def load(self) -> bool:
        # KServe calls load() again whenever healthy() is false (e.g. while draining): build once.
        if self.policy is None:
            counter = self.token_counter
            self.policy = load_policy(self.config.policy, counter)
            learned = self.config.policy.learned_model
            logger.info("router %r: %s policy, threshold %.4g, prompt tokens counted by %s, targets small=%s large=%s",
                        self.name, f"learned ({learned})" if learned else self.policy_kind, self.policy.threshold,
                        counter.method, self.config.targets.small.describe(), self.config.targets.large.describe())
        self.ready = True
        return self.ready

    @property
    def policy_kind(self) -> str:
        """`learned` (a model fitted by router.train) or `rule`."""
        return "learned" if self.config.policy.learned_model else "rule"

    # Metadata -----------------------------------------------------------------------

    def get_input_types(self) -> list[dict]:
        return INPUT_METADATA

    def get_output_types(self) -> list[dict]:
        return OUTPUT_METADATA

    # Decisions ----------------------------------------------------------------------

    def decide(self, requests: list[RoutingRequest], hint: Hint | None,
               chat: bool = False) -> tuple[Decision, list[Decision]]:
        """The batch's decision and each request's; counted in the metrics. `chat`: the batch
        holds a chat, which must go to a target that serves chat."""
        decision, decisions = self.choose(requests, hint, chat)
        self.count_decision(decision, hinted=hint is not None)
        return decision, decisions

    def choose(self, requests: list[RoutingRequest], hint: Hint | None,
               chat: bool = False) -> tuple[Decision, list[Decision]]:
        """As `decide`, counting nothing: the caller counts the decision once it acts on it."""
        self.check_admitting()
        if not tracing.ENABLED:
            return self._choose(requests, hint, chat)
        with tracing.tracer().start_as_current_span("route") as span:
            decision, decisions = self._choose(requests, hint, chat)
            span.set_attributes(decision_attributes(decision, self.config.targets.of(decision.route).model,
                                                    self.policy_kind, len(requests)))
            return decision, decisions

    def _choose(self, requests: list[RoutingRequest], hint: Hint | None,
                chat: bool) -> tuple[Decision, list[Decision]]:
        decisions = [self.policy.decide(request, hint) for request in requests]
        return placed(batch_decision(decisions), self.config.targets, chat), decisions

    def count_decision(self, decision: Decision, hinted: bool) -> None:
        record_decision(self.name, decision, hinted)

    # KServe's handlers -----------------------------------------------------------------

    def predict(
        self, payload: dict | InferRequest, headers: dict[str, str] | None = None
    ) -> dict | bytes | InferResponse:
        if isinstance(payload, InferRequest):
            return self._route_v2(payload, headers or {})
        return self._route_v1(payload, headers or {})

    def _route_v1(self, payload: object, headers: dict[str, str]) -> dict:
        if not isinstance(payload, dict):
            raise InvalidInput('the body must be a JSON object (content-type: application/json): '
                               '{"instances": [{"prompt": "..."} or {"messages": [...]}]}')
        request = self.validated(PredictRequest, _echoable(payload))
        hint = _hint(headers, request.route, "`route` in the body")
        chat = any(instance.messages is not None for instance in request.instances)
        decision, decisions = self.decide([instance.routing_request() for instance in request.instances], hint, chat)
        return {**payload, **routing_fields(decision, decisions)}

    def _route_v2(self, request: InferRequest, headers: dict[str, str]) -> bytes | InferResponse:
        parameters = self.validated(InferParameters, request_parameters(request))
        hint = _hint(headers, parameters.route, "the `route` parameter")
        prompts = prompts_of(request)
        requests = [RoutingRequest(prompt, 1, parameters.max_tokens) for prompt in prompts]
        decision, decisions = self.decide(requests, hint)
        if request.from_grpc:
            return self._grpc_response(request, decision)
        echoed = {**echo_request(request, ROUTER_PARAMETERS), **routing_fields(decision, decisions)}
        return json.dumps(echoed).encode()

    def _grpc_response(self, request: InferRequest, decision: Decision) -> InferResponse:
        return InferResponse(response_id=request.id or uuid.uuid4().hex, model_name=self.name,
                             infer_outputs=route_outputs(decision.route.value, decision.score))


def routing_fields(decision: Decision, decisions: list[Decision]) -> dict:
    """What the router adds to a request (`route_reason` when capability moved it, as the OpenAI
    edge's x-route-reason header)."""
    fields = {
        "route": decision.route.value,
        "route_score": decision.score,
        "route_decisions": [each.as_dict() for each in decisions],
    }
    if decision.capability is not None:
        fields["route_reason"] = f"{CAPABILITY}: {decision.capability}"
    return fields


def _hint(headers: dict[str, str], body_route: str | None, body_source: str) -> Hint | None:
    """The header wins over the body: it is what a gateway or an operator sets."""
    try:
        if (header := headers.get(ROUTE_HEADER)) is not None:
            return parse_hint(header, f"the {ROUTE_HEADER} header")
        if body_route is not None:
            return parse_hint(body_route, body_source)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    return None


def _echoable(document: dict) -> dict:
    """The v1 request to be echoed, refused if it nests deeper than its echo can be written (a v2
    request cannot nest: its parameters are scalars, its tensors flat)."""
    if _nests_deeper_than(document, MAX_ECHOED_DEPTH):
        raise InvalidInput(f"the request nests JSON arrays or objects more than {MAX_ECHOED_DEPTH} levels deep; "
                           "the router answers with the request itself, which cannot be written that deep")
    return document


def _nests_deeper_than(value: object, limit: int) -> bool:
    # A walk without recursion: Python's own stack would overflow first.
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        pending.extend((child, depth + 1) for child in children)
    return False


def decision_attributes(decision: Decision, target_model: str, policy_kind: str, num_requests: int) -> dict:
    """A decision as the `route` span's attributes."""
    attributes = {
        "router.route": decision.route.value,
        "router.target_model": target_model,
        "router.policy": policy_kind,
        "router.decided_by": decision.decided_by,
        "router.score": decision.score,
        "router.threshold": decision.threshold,
        "router.batch_size": num_requests,
    }
    if decision.capability is not None:
        attributes["router.capability"] = decision.capability
    return attributes
