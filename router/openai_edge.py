"""The router's OpenAI-compatible edge, beside its KServe routes: /openai/v1/models, /completions,
/chat/completions, /tokenize and /detokenize. `model: "auto"` is routed by the policy (an
`x-route: small|large` request header overrides it) and falls back to the other model when the
chosen one cannot answer; a target's model name goes to that target only. An `auto` chat goes
only to a target that serves chat (router/capability.py): never to one configured `chat: false`,
neither first, nor as fallback, nor by the cascade. Streams pass through byte for byte (KServe's
graph router cannot stream), and a client that leaves closes the target's stream. A whole answer
the policy sent to the small model may be escalated by the cascade. Bodies are validated here, so
a bad one gets an OpenAI-shaped 400 before any target is called.

Response headers say what happened: `x-route` (the model that answered: small | large),
`x-route-score` (the policy's score, when the policy decided), `x-route-fallback`
(`<route>:<failure>`: the model that could not answer, and why), `x-route-escalated` (the
cascade's reason) and `x-route-reason` (`capability: <model> serves no chat`, when the model the
policy or the hint chose cannot serve the request). Answers keep the `model` name of the target
that wrote them, as OpenAI's name the snapshot behind an alias. vLLM's /tokenize and /detokenize
go to the transformer of the model they name (`auto` is refused: the two models may tokenize
differently)."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus

import httpx
from fastapi import FastAPI
from fastapi.responses import Response
from kserve.errors import InvalidInput, ModelNotFound
from starlette.types import Receive, Scope, Send

from router.cascade import CascadeTrace
from router.config import AUTO_MODEL
from router.features import RoutingRequest
from router.gateway.admission_gate import admitted
from router.learning import Learning
from router.load_metrics import LoadPoller
from router.metrics import ESCALATIONS, EXPLORED, ROUTING_LATENCY
from router.model import ROUTE_HEADER, RouterModel
from router.openai_cascade import (
    answers_agree,
    ask_for_logprobs,
    client_token_limit,
    judge,
    lowest_confidence,
    small_answers,
    without_logprobs,
)
from router.policy import CAPABILITY, Decision, Hint, Route, parse_hint
from router.replicas import ReplicaSet
from router.schemas import chat_routing_request
from router.upstream import Answer, Call, Fallback, Plan, TargetFailed, Upstream
from serving import tracing
from serving.http_client import Pools
from serving.lifespan import chain_lifespan
from serving.openai_protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    ModelCard,
    TokenizeRequest,
    now,
)
from serving.openai_routes import (
    CHAT_COMPLETIONS_PATH,
    COMPLETIONS_PATH,
    DETOKENIZE_PATH,
    MODEL_OWNER,
    TOKENIZE_PATH,
    mount_openai_routes,
)
from serving.streaming import EventStreamResponse

logger = logging.getLogger(__name__)

SCORE_HEADER = "x-route-score"
FALLBACK_HEADER = "x-route-fallback"
ESCALATED_HEADER = "x-route-escalated"
REASON_HEADER = "x-route-reason"
# Idle keep-alive connections kept for the load poller's scrapes of the predictors' metrics.
MAX_KEEPALIVE_CONNECTIONS = 32

OpenAIRequest = CompletionRequest | ChatCompletionRequest


@dataclass(frozen=True, slots=True)
class Routing:
    """A request's decision; `by_policy`: no hint or model name chose for it; `fallback`: the other
    model, when the router may send the request there too (the client asked for `auto`, and the
    other model can serve the request); `seconds`: how long choosing took."""

    decision: Decision
    by_policy: bool
    fallback: Route | None
    seconds: float = 0.0

    @property
    def route(self) -> Route:
        return self.decision.route


class OpenAIEdge:
    """The edge of one router: its policy (through the RouterModel), its targets' replicas, kept-alive
    connections to the transformers (serving/http_client.py: this hop is on every token's first
    byte), and an HTTP client for their predictors' metrics."""

    def __init__(self, model: RouterModel) -> None:
        config = model.config
        self.model = model
        self.cascade = config.cascade
        self.learning = Learning(model, config.learning)
        self.replica_sets = {route: ReplicaSet(route, config.targets.of(route), config.circuit_breakers, model.name)
                             for route in Route}
        timeouts = config.timeouts
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeouts.request_seconds, connect=timeouts.connect_seconds),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=MAX_KEEPALIVE_CONNECTIONS),
            trust_env=False,
        )
        self.pools = Pools(connect_timeout=timeouts.connect_seconds, read_timeout=timeouts.request_seconds)
        self.upstream = Upstream(model.name, self.replica_sets, self.pools)
        self.poller = LoadPoller(self.client, self.replica_sets.values(),
                                 config.load_balancing.metrics_interval_seconds)
        self.created = now()

    async def start(self) -> None:
        for route, replicas in self.replica_sets.items():
            logger.info("OpenAI edge: %s model %r at %s", route, replicas.model, replicas.describe())
        cascade = f"min_confidence {self.cascade.min_confidence:g}" if self.cascade.enabled else "disabled"
        logger.info("OpenAI edge: cascade %s, fallback for model %r", cascade, AUTO_MODEL)
        self.poller.start()

    async def stop(self) -> None:
        self.learning.close()
        await self.poller.stop()
        await self.client.aclose()
        await self.pools.close()

    def model_cards(self) -> list[ModelCard]:
        names = [AUTO_MODEL, *(self.replica_sets[route].model for route in Route)]
        return [ModelCard(id=name, created=self.created, owned_by=MODEL_OWNER) for name in names]

    async def completions(self, body: CompletionRequest, headers: Mapping[str, str]) -> Response:
        return await self.answer(COMPLETIONS_PATH, body, completion_routing_requests(body), headers)

    async def chat_completions(self, body: ChatCompletionRequest, headers: Mapping[str, str]) -> Response:
        routing_request = chat_routing_request(body.messages, body.requested_max_tokens)
        return await self.answer(CHAT_COMPLETIONS_PATH, body, [routing_request], headers)

    async def tokenize(self, body: TokenizeRequest, headers: Mapping[str, str]) -> Response:
        return await self.answer_tokens(TOKENIZE_PATH, body, headers)

    async def detokenize(self, body: DetokenizeRequest, headers: Mapping[str, str]) -> Response:
        return await self.answer_tokens(DETOKENIZE_PATH, body, headers)

    async def answer(self, path: str, body: OpenAIRequest, requests: list[RoutingRequest],
                     headers: Mapping[str, str]) -> Response:
        """Route the request, send it on, and answer with what came back. Both models answer (the
        exploration, the cascade) only where both can serve the request."""
        chat = path == CHAT_COMPLETIONS_PATH
        routing, plan = self.choose(body.model, requests, headers, chat)
        call = Call.of(path, body.model_dump(mode="json", exclude_unset=True, exclude={"model"}), headers, body.stream)
        # Chosen while the gateway may still be admitting the request; counted once it has.
        await admitted()
        self.count(routing)
        both = routing.by_policy and routing.fallback is not None and not body.stream
        if both and self.learning.explores():
            answer, trace = await self._explore(call, chat)
        elif both and self.cascade.enabled and routing.route is Route.SMALL:
            answer, trace = await self._cascade(plan, call, chat)
        else:
            answer, trace = await self.upstream.send(plan, call), CascadeTrace()
        self.learning.record(routing.decision, requests, headers, answer, trace)
        if tracing.ENABLED:
            tracing.annotate(_answer_attributes(body.model, answer, trace))
        return _response(answer, routing, trace.escalated)

    async def answer_tokens(self, path: str, body: TokenizeRequest | DetokenizeRequest,
                            headers: Mapping[str, str]) -> Response:
        """vLLM's token routes, answered by the named model's transformer. Token ids belong to one
        model's vocabulary, so `auto` (or no model) is refused rather than guessed."""
        if body.model is None or body.model == AUTO_MODEL:
            names = " or ".join(self.replica_sets[route].model for route in Route)
            raise InvalidInput(f"name the model ({names}): `{AUTO_MODEL}` routes each request by its prompt, "
                               "and the two models may tokenize differently")
        route = self._hint(body.model, headers).route
        call = Call.of(path, body.model_dump(mode="json", exclude_unset=True, exclude={"model"}), headers,
                       stream=False)
        answer = await self.upstream.send(Plan(route, self.replica_sets[route].ranked(), None), call)
        return Response(answer.body, status_code=answer.status, media_type=answer.content_type,
                        headers={ROUTE_HEADER: answer.route.value})

    def plan(self, requested_model: str, requests: list[RoutingRequest], headers: Mapping[str, str],
             chat: bool) -> tuple[Routing, Plan]:
        """The request's decision and where it goes: the chosen target's replicas, least loaded
        first, and the fallback target, if any; counted in the metrics."""
        routing, plan = self.choose(requested_model, requests, headers, chat)
        self.count(routing)
        return routing, plan

    def choose(self, requested_model: str, requests: list[RoutingRequest], headers: Mapping[str, str],
               chat: bool) -> tuple[Routing, Plan]:
        """As `plan`, counting nothing yet."""
        started = time.perf_counter()
        routing = self.route(requested_model, requests, headers, chat)
        plan = Plan(routing.route, self.replica_sets[routing.route].ranked(), routing.fallback)
        return dataclasses.replace(routing, seconds=time.perf_counter() - started), plan

    def count(self, routing: Routing) -> None:
        """A decision acted on: router_routed_requests_total, its score, and how long choosing
        took (router_routing_latency_seconds)."""
        self.model.count_decision(routing.decision, hinted=not routing.by_policy)
        ROUTING_LATENCY.labels(self.model.name).observe(routing.seconds)

    def route(self, requested_model: str, requests: list[RoutingRequest], headers: Mapping[str, str],
              chat: bool) -> Routing:
        """A named model is served by its target whatever it is asked; `auto` requests go only
        where they can be served."""
        hint = self._hint(requested_model, headers)
        auto = requested_model == AUTO_MODEL
        decision, _ = self.model.choose(requests, hint, chat=chat and auto)
        other = decision.route.other
        fallback = other if auto and self.model.config.targets.of(other).serves(chat) else None
        return Routing(decision, by_policy=hint is None, fallback=fallback)

    def _hint(self, requested_model: str, headers: Mapping[str, str]) -> Hint | None:
        if requested_model != AUTO_MODEL:
            for route, replicas in self.replica_sets.items():
                if replicas.model == requested_model:
                    return Hint(route, "the request's `model`")
            raise ModelNotFound(requested_model)
        if (header := headers.get(ROUTE_HEADER)) is None:
            return None
        try:
            return parse_hint(header, f"the {ROUTE_HEADER} header")
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None

    async def _cascade(self, plan: Plan, call: Call, chat: bool) -> tuple[Answer, CascadeTrace]:
        """The small model answers first, with logprobs; the large one answers again only when the
        small one was unsure. If the large one then fails, the small one's answer stands."""
        payload, added = ask_for_logprobs(call.payload, chat)
        small = await self.upstream.send(plan, dataclasses.replace(call, payload=payload))
        if small.status != HTTPStatus.OK or small.route is not Route.SMALL:
            return _stripped(small, added), CascadeTrace()
        answers = small_answers(small.json(), chat, client_token_limit(call.payload, chat))
        escalate, verdict = judge(answers, self.cascade)
        trace = CascadeTrace(verdict, lowest_confidence(answers))
        if not escalate:
            return _stripped(small, added), trace
        ESCALATIONS.labels(self.model.name, verdict.value).inc()
        large = await self._second_opinion(small, call, chat)
        if large is None:
            return _stripped(small, added), dataclasses.replace(trace, escalated=verdict.value)
        return large, dataclasses.replace(trace, escalated=verdict.value, agreement=_agreement(small, large, chat))

    async def _explore(self, call: Call, chat: bool) -> tuple[Answer, CascadeTrace]:
        """Both models answer, the small one first as in the cascade, so that the decision log
        learns how the small one does where the policy would not have sent it. The client gets
        the large model's answer (the small one's if the large one fails)."""
        EXPLORED.labels(self.model.name).inc()
        payload, added = ask_for_logprobs(call.payload, chat)
        plan = Plan(Route.SMALL, self.replica_sets[Route.SMALL].ranked(), Route.LARGE)
        small = await self.upstream.send(plan, dataclasses.replace(call, payload=payload))
        if small.status != HTTPStatus.OK or small.route is not Route.SMALL:
            return _stripped(small, added), CascadeTrace(explored=True)
        answers = small_answers(small.json(), chat, client_token_limit(call.payload, chat))
        _, verdict = judge(answers, self.cascade)
        trace = CascadeTrace(verdict, lowest_confidence(answers), explored=True)
        large = await self._second_opinion(small, call, chat)
        if large is None:
            return _stripped(small, added), trace
        return large, dataclasses.replace(trace, agreement=_agreement(small, large, chat))

    async def _second_opinion(self, small: Answer, call: Call, chat: bool) -> Answer | None:
        """The large model's answer after the small one's, or None (the fallback is counted and
        set on `small`) if it fails or answers with an error."""
        try:
            large = await self.upstream.send_to(Route.LARGE, self.replica_sets[Route.LARGE].ranked(), call)
        except TargetFailed as failed:
            self.upstream.count_fallback(failed)
            small.fallback = Fallback(failed.route, failed.failure)
            return None
        return large


def _answer_attributes(requested_model: str, answer: Answer, trace: CascadeTrace) -> dict:
    """What the request's span says of how it was answered."""
    attributes = {"gen_ai.request.model": requested_model, "router.answered_route": answer.route.value}
    if answer.fallback is not None:
        attributes["router.fallback"] = str(answer.fallback)
    if trace.confidence is not None:
        attributes["router.cascade.confidence"] = trace.confidence
    if trace.escalated is not None:
        attributes["router.escalated"] = trace.escalated
    if trace.explored:
        attributes["router.explored"] = True
    return attributes


def _agreement(small: Answer, large: Answer, chat: bool) -> bool | None:
    """Whether the two models answered alike (None when the large one answered with an error)."""
    if large.status != HTTPStatus.OK:
        return None
    return answers_agree(small.json(), large.json(), chat)


def _stripped(answer: Answer, added_logprobs: bool) -> Answer:
    """The answer without the logprobs the cascade asked for and the client did not."""
    if added_logprobs and answer.status == HTTPStatus.OK:
        answer.body = json.dumps(without_logprobs(answer.json())).encode()
    return answer


def _route_headers(answer: Answer, routing: Routing, escalated: str | None) -> dict[str, str]:
    headers = {ROUTE_HEADER: answer.route.value}
    if routing.by_policy:
        headers[SCORE_HEADER] = f"{routing.decision.score:g}"
    if answer.fallback is not None:
        headers[FALLBACK_HEADER] = str(answer.fallback)
    if escalated is not None:
        headers[ESCALATED_HEADER] = escalated
    if routing.decision.capability is not None:
        headers[REASON_HEADER] = f"{CAPABILITY}: {routing.decision.capability}"
    return headers


def _response(answer: Answer, routing: Routing, escalated: str | None) -> Response:
    headers = _route_headers(answer, routing, escalated)
    if answer.is_stream:
        return UpstreamStreamResponse(answer, headers)
    return Response(answer.body, status_code=answer.status, media_type=answer.content_type, headers=headers)


class UpstreamStreamResponse(EventStreamResponse):
    """A target's stream passed on as it comes. However the response ends - finished, failed, or
    cancelled because the client left, even before its first byte - the target's stream is
    closed, which aborts its request."""

    def __init__(self, answer: Answer, headers: dict[str, str]) -> None:
        super().__init__(answer.chunks(), status_code=answer.status, headers=headers)
        self.answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.answer.close()


def completion_routing_requests(body: CompletionRequest) -> list[RoutingRequest]:
    """Each prompt of a completion request; token-id prompts count by their length only."""
    return [RoutingRequest(prompt, 1, body.max_tokens) if isinstance(prompt, str)
            else RoutingRequest("", 1, body.max_tokens, prompt_tokens=len(prompt)) for prompt in body.prompts]


def add_openai_edge(app: FastAPI, edge: OpenAIEdge) -> None:
    """The edge's routes on `app`; its client and load poller live as long as the app serves."""
    mount_openai_routes(app, edge)
    _run_with_app(app, edge)


def _run_with_app(app: FastAPI, edge: OpenAIEdge) -> None:
    chain_lifespan(app, before_startup=edge.start, after_shutdown=edge.stop)
