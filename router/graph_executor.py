"""Runs a request through an InferenceGraph the way KServe's Go router (cmd/router/main.go) does:
every step is a POST whose whole response is read before the next; Sequence, Switch, Splitter and
Ensemble nodes; Soft and Hard dependencies; the routing errors and their status codes."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from router.graph_condition import MISSING, condition_matches, parse_json
from router.graph_spec import (
    ROOT_NODE,
    Dependency,
    InferenceGraph,
    InferenceRouter,
    InferenceStep,
    RouterType,
    StepData,
)
from serving.request_bodies import off_loop_if_large

logger = logging.getLogger(__name__)

# The `error` of every routing failure; the `cause` says which (KServe's InferenceGraphRoutingError).
ROUTING_ERROR = "Failed to process request"
NO_SWITCH_MATCH = "None of the routes matched with the switch condition"
INVALID_RESPONSE = "invalid response"
# Go's http.Client writes these itself, whatever the propagation patterns say.
_NEVER_PROPAGATED = {"Host", "Content-Length", "Transfer-Encoding", "Trailer"}

Headers = Sequence[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class StepResponse:
    status: int
    body: bytes

    @property
    def succeeded(self) -> bool:
        return 200 <= self.status <= 299


class GraphRoutingError(Exception):
    """A failure the router answers with {"error": "Failed to process request", "cause": ...}."""

    def __init__(self, status: int, cause: str) -> None:
        super().__init__(cause)
        self.status = status
        self.cause = cause


class GraphExecutor:
    """One graph, the URLs of the services it names, and the client every step shares."""

    def __init__(self, graph: InferenceGraph, service_urls: Mapping[str, str], client: httpx.AsyncClient,
                 propagate_headers: Sequence[re.Pattern[str]] = (), rng: random.Random | None = None) -> None:
        missing = sorted(graph.service_names - service_urls.keys())
        if missing:
            raise ValueError(f"no URL for the service(s) {', '.join(missing)} that graph {graph.name!r} calls")
        self.graph = graph
        self.service_urls = dict(service_urls)
        self.client = client
        self.propagate_headers = tuple(propagate_headers)
        # KServe draws from crypto/rand; a seeded generator makes Splitter tests reproducible.
        self.rng = rng or random.Random()
        self.service_timeout = graph.router_timeouts.service_client or None
        self._runners = {
            RouterType.SEQUENCE: self._run_sequence,
            RouterType.SWITCH: self._run_switch,
            RouterType.SPLITTER: self._run_splitter,
            RouterType.ENSEMBLE: self._run_ensemble,
        }

    async def run(self, body: bytes, headers: Iterable[tuple[str, str]]) -> StepResponse:
        """The graph's answer to one request (its path and method play no part, as in KServe)."""
        return await self._run_node(ROOT_NODE, body, propagated_headers(headers, self.propagate_headers))

    async def _run_node(self, name: str, body: bytes, headers: Headers) -> StepResponse:
        node = self.graph.nodes[name]
        started = time.perf_counter()
        response = await self._runners[node.router_type](name, node, body, headers)
        logger.debug("node %s (%s) answered %d in %.1f ms", name, node.router_type.value, response.status,
                     (time.perf_counter() - started) * 1e3)
        return response

    async def _run_step(self, node_name: str, index: int, step: InferenceStep, body: bytes,
                        headers: Headers) -> StepResponse:
        logger.debug("node %s step %d%s -> %s", node_name, index, f" ({step.name})" if step.name else "", step.target)
        if step.node_name:
            return await self._run_node(step.node_name, body, headers)
        return await self._call_service(step.service_url or self.service_urls[step.service_name], body, headers)

    async def _run_sequence(self, name: str, node: InferenceRouter, body: bytes, headers: Headers) -> StepResponse:
        # Before the first step there is no response: an empty body, which is not JSON, so a
        # condition there fails the request as KServe's does ("invalid response").
        previous = StepResponse(200, b"")
        for index, step in enumerate(node.steps):
            request = previous.body if step.data is StepData.RESPONSE and index > 0 else body
            if step.map_predictions_to_instances:
                request = await off_loop_if_large(len(request), functools.partial(predictions_as_instances, request))
            if step.condition and not await _previous_matches(previous, step.condition):
                logger.debug("node %s step %d: condition %r not met, the sequence ends", name, index, step.condition)
                return StepResponse(200, previous.body)  # 200 whatever the previous step's status
            previous = await self._run_step(name, index, step, request, headers)
            if step.dependency is Dependency.HARD and not previous.succeeded:
                logger.debug("node %s step %d: Hard dependency answered %d, the sequence ends", name, index,
                             previous.status)
                return previous
        return previous  # the last step's status, even a Soft step's failure

    async def _run_switch(self, name: str, node: InferenceRouter, body: bytes, headers: Headers) -> StepResponse:
        index = await off_loop_if_large(len(body), functools.partial(_first_matching_step, node, body))
        if index is None:
            raise GraphRoutingError(404, NO_SWITCH_MATCH)
        return await self._run_step(name, index, node.steps[index], body, headers)

    async def _run_splitter(self, name: str, node: InferenceRouter, body: bytes, headers: Headers) -> StepResponse:
        point = self.rng.randrange(100)
        end = 0
        for index, step in enumerate(node.steps):
            end += step.weight or 0
            if point < end:
                return await self._run_step(name, index, step, body, headers)
        raise GraphRoutingError(500, "no route was selected by the splitter")

    async def _run_ensemble(self, name: str, node: InferenceRouter, body: bytes, headers: Headers) -> StepResponse:
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._run_ensemble_member(name, index, step, body, headers))
                         for index, step in enumerate(node.steps)]
        except ExceptionGroup as failures:
            routing_errors = [error for error in failures.exceptions if isinstance(error, GraphRoutingError)]
            if not routing_errors:
                raise
            raise routing_errors[0] from None
        merged = {}
        for index, (step, task) in enumerate(zip(node.steps, tasks)):
            response, value = task.result()
            if step.dependency is Dependency.HARD and not response.succeeded:
                return StepResponse(response.status, go_json(value))  # the first failed Hard step, by position
            merged[step.name or str(index)] = value
        return StepResponse(200, go_json(merged))

    async def _run_ensemble_member(self, name: str, index: int, step: InferenceStep, body: bytes,
                                   headers: Headers) -> tuple[StepResponse, Any]:
        response = await self._run_step(name, index, step, body, headers)
        value = await off_loop_if_large(len(response.body), functools.partial(parse_json, response.body))
        # KServe decodes each answer into a map: anything but an object (or null) fails the node.
        if value is not None and not isinstance(value, dict):
            key = step.name or str(index)
            raise GraphRoutingError(500, f"Ensemble step {key!r} answered {response.status} "
                                         "with a body that is not a JSON object")
        return response, value

    async def _call_service(self, url: str, body: bytes, headers: Headers) -> StepResponse:
        outgoing = list(headers)
        if not any(name == "Content-Type" for name, _ in outgoing):
            outgoing.append(("Content-Type", "application/json"))
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.service_timeout):
                response = await self.client.post(url, content=body, headers=outgoing)
        except TimeoutError:
            raise GraphRoutingError(500, f'Post "{url}": context deadline exceeded '
                                         "(Client.Timeout exceeded while awaiting headers)") from None
        except httpx.HTTPError as error:
            raise GraphRoutingError(500, f'Post "{url}": {type(error).__name__}: {error}') from None
        logger.debug("POST %s -> %d (%d bytes) in %.1f ms", url, response.status_code, len(response.content),
                     (time.perf_counter() - started) * 1e3)
        return StepResponse(response.status_code, response.content)


async def _previous_matches(previous: StepResponse, condition: str) -> bool:
    return await off_loop_if_large(len(previous.body), functools.partial(_condition_met, previous.body, condition))


def _condition_met(body: bytes, condition: str) -> bool:
    document = parse_json(body)
    if document is MISSING:
        raise GraphRoutingError(500, INVALID_RESPONSE)
    return condition_matches(document, condition)


def _first_matching_step(node: InferenceRouter, body: bytes) -> int | None:
    """The switch's first step whose condition the request body meets."""
    document = parse_json(body)
    if document is MISSING:
        return None
    return next((index for index, step in enumerate(node.steps) if condition_matches(document, step.condition)), None)


def predictions_as_instances(request: bytes) -> bytes:
    """`mapPredictionsToInstances`: a v1 response made the next v1 request. As in KServe, only
    `instances` survives, and a body without a non-empty `predictions` list passes unchanged."""
    document = parse_json(request)
    if not isinstance(document, dict):
        return request
    predictions, instances = document.get("predictions"), document.get("instances")
    # Go decodes both into lists: another type fails the decoding, which leaves the request as is.
    if not isinstance(predictions, list) or not predictions or not isinstance(instances, (list, type(None))):
        return request
    return go_json({"instances": predictions})


def go_json(value: Any) -> bytes:
    """JSON as Go's json.Marshal writes a decoded map: compact, keys sorted."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def propagated_headers(headers: Iterable[tuple[str, str]],
                       patterns: Sequence[re.Pattern[str]]) -> list[tuple[str, str]]:
    """The incoming headers whose canonical name (`X-Request-Id`, as Go's server stores it) one of
    the patterns finds (unanchored, like Go's MatchString); by default none at all."""
    forwarded = []
    for raw_name, value in headers:
        name = canonical_header_name(raw_name)
        if name not in _NEVER_PROPAGATED and any(pattern.search(name) for pattern in patterns):
            forwarded.append((name, value))
    return forwarded


def canonical_header_name(name: str) -> str:
    """Go's textproto.CanonicalMIMEHeaderKey: `x-request-id` -> `X-Request-Id`."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))
