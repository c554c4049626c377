"""Sending an OpenAI request on to a target's transformers, with fallback: the chosen target's
replicas in their order of preference, then the other target's when the router was free to choose.
A failure moves on only before any byte of the answer has gone to the client: a refused or
dropped connection, a 503 or 504, no answer (for a stream: no first token) in time, or a stream
whose first event after a chat role chunk is a server error (the request was admitted, then
failed before its first token: timed out in the predictor's queue, its predictor went away).
Any other answer, errors included, is the target's to give. Each attempt's outcome goes to the
replica's circuit breaker (router/breakers.py), and no attempt is made where it is open: a target
whose breakers are all open is passed over at once, for the fallback or a 503 whose Retry-After
says when its first replica half-opens."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from http import HTTPStatus

from router.breakers import Permit
from router.metrics import FALLBACKS
from router.policy import Route
from router.replicas import Endpoint, ReplicaSet
from serving import tracing
from serving.errors import RequestTimeout, ServiceUnavailable, error_message
from serving.http_client import Pools, Response, UpstreamDisconnected, UpstreamUnreachable
from serving.openai_protocol import openai_error_body
from serving.sse import DONE_EVENT, EventParser, encode_event

logger = logging.getLogger(__name__)

# Passed on to the transformers, as KServe's transformer passes them on to its predictor.
FORWARDED_HEADERS = ("authorization", "x-request-id", "x-b3-traceid")
EVENT_END = b"\n\n"


class Failure(StrEnum):
    """Why a target did not answer; also the `reason` label of router_fallbacks_total."""

    UNAVAILABLE = "unavailable"  # it answered 503 (queue full, draining, its predictor down)
    DOWN = "down"  # it refused or dropped the connection
    TIMEOUT = "timeout"  # no answer in time, or a 504
    FAILED = "failed"  # it admitted a stream, then ended it with a server error before its first token
    CIRCUIT_OPEN = "circuit_open"  # its replicas' circuit breakers held the request back: none was tried

    @classmethod
    def of_status(cls, status: int) -> Failure | None:
        return {HTTPStatus.SERVICE_UNAVAILABLE: cls.UNAVAILABLE, HTTPStatus.GATEWAY_TIMEOUT: cls.TIMEOUT}.get(status)


@dataclass(frozen=True, slots=True)
class Fallback:
    """The target chosen first, and why it did not serve."""

    from_route: Route
    failure: Failure

    def __str__(self) -> str:
        return f"{self.from_route}:{self.failure}"


@dataclass(frozen=True, slots=True)
class Call:
    """One OpenAI request to send: `payload` lacks `model`, which each target gets its own of."""

    path: str
    payload: dict
    headers: dict[str, str]
    stream: bool

    @classmethod
    def of(cls, path: str, payload: dict, request_headers: Mapping[str, str], stream: bool) -> Call:
        headers = {name: request_headers[name] for name in FORWARDED_HEADERS if name in request_headers}
        if tracing.ENABLED:
            tracing.inject(headers)
        return cls(path, payload, headers, stream)

    @property
    def echoed_prompt(self) -> str | None:
        """The prompt a completion with `echo` opens its stream with (echo takes one text prompt)."""
        prompt = self.payload.get("prompt")
        return prompt if self.payload.get("echo") and isinstance(prompt, str) else None


@dataclass(slots=True)
class Plan:
    """Where a request goes: the chosen target's replicas in order, and the target that serves
    if they all fail (None: the client named the model, so no other may answer)."""

    route: Route
    endpoints: list[Endpoint]
    fallback: Route | None


@dataclass(slots=True)
class Answer:
    """A target's answer, its body whole - or for a stream, its first chunk with the rest to come."""

    route: Route
    status: int
    content_type: str | None
    body: bytes
    rest: AsyncIterator[bytes] | None = None
    response: Response | None = None
    fallback: Fallback | None = None

    @property
    def is_stream(self) -> bool:
        return self.rest is not None

    def json(self) -> object:
        return json.loads(self.body)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The stream's bytes as they come. If the target fails mid-stream between two events, the
        client gets an OpenAI error event and `[DONE]`; mid-event, the connection is dropped."""
        yield self.body
        at_event_end = self.body.endswith(EVENT_END)
        try:
            async for chunk in self.rest:
                yield chunk
                at_event_end = chunk.endswith(EVENT_END)
        except (ConnectionError, TimeoutError) as exc:
            logger.warning("the %s target failed mid-stream: %s", self.route, type(exc).__name__)
            if not at_event_end:
                raise
            message = openai_error_body(HTTPStatus.BAD_GATEWAY, f"the {self.route} model failed mid-stream")
            yield encode_event(message) + DONE_EVENT

    async def close(self) -> None:
        """Give the connection back, or close it if the answer was left unfinished (which makes
        the target abort the request)."""
        if self.response is not None:
            self.response.release()


class TargetFailed(Exception):
    """Every replica of a target failed; `answer` is the last one's 503 or 504, or its stream that
    failed before the first token, if it gave one. `retry_after`: the seconds until a replica's
    breaker half-opens, when breakers held the request back."""

    def __init__(self, route: Route, failure: Failure, reason: str, answer: Answer | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.route = route
        self.failure = failure
        self.reason = reason
        self.answer = answer
        self.retry_after = retry_after


class Upstream:
    def __init__(self, model_name: str, replica_sets: Mapping[Route, ReplicaSet], client: Pools) -> None:
        self.model_name = model_name
        self.replica_sets = replica_sets
        self.client = client

    async def send(self, plan: Plan, call: Call) -> Answer:
        """The chosen target's answer, else the fallback's (saying so). When none answers: 503;
        without a fallback, the target's own 503 or 504 if it gave one, else 503 (504 for a timeout).
        A 503 because breakers held the request back says when to retry: when one half-opens."""
        try:
            return await self.send_to(plan.route, plan.endpoints, call)
        except TargetFailed as failed:
            if plan.fallback is None:
                return _answer_of(failed)
            self.count_fallback(failed)
            first = failed
        try:
            answer = await self.send_to(plan.fallback, self.replica_sets[plan.fallback].ranked(), call)
        except TargetFailed as failed:
            raise ServiceUnavailable(self.model_name, f"no model could answer: {first}; {failed}",
                                     _sooner(first.retry_after, failed.retry_after)) from None
        answer.fallback = Fallback(first.route, first.failure)
        return answer

    def count_fallback(self, failed: TargetFailed) -> None:
        FALLBACKS.labels(self.model_name, failed.route.value, failed.failure.value).inc()
        logger.warning("falling back from the %s model: %s", failed.route, failed)

    async def send_to(self, route: Route, endpoints: list[Endpoint], call: Call) -> Answer:
        """The first answer of `endpoints` (each tried once, in order, unless its breaker holds the
        request back); TargetFailed if none answers."""
        last: tuple[Endpoint, _AttemptFailed] | None = None
        for endpoint in endpoints:
            # Its breaker may have opened, or its probes been taken, since `endpoints` were ranked.
            permit = endpoint.breaker.admit()
            if permit is None:
                continue
            try:
                return await self._attempt(route, endpoint, call, permit)
            except _AttemptFailed as failed:
                last = endpoint, failed
        if last is None:
            raise self._circuit_open(route)
        endpoint, failed = last
        model = self.replica_sets[route].model
        raise TargetFailed(route, failed.failure, f"{model} at {endpoint.url}: {failed.reason}", failed.answer)

    def _circuit_open(self, route: Route) -> TargetFailed:
        replicas = self.replica_sets[route]
        retry_after = replicas.seconds_until_half_open()
        if retry_after > 0:
            reason = (f"the circuit breaker of every {replicas.model} replica is open (the first half-opens in "
                      f"{retry_after:.1f} s)")
        else:
            reason = f"every {replicas.model} replica's circuit breaker is open, or half-open with probes under way"
        return TargetFailed(route, Failure.CIRCUIT_OPEN, reason, retry_after=retry_after)

    async def _attempt(self, route: Route, endpoint: Endpoint, call: Call, permit: Permit) -> Answer:
        """The replica's answer, its outcome told to its breaker: a failure, a success (timed to
        the answer's first byte), or nothing if the request ended otherwise (the client left)."""
        try:
            answer = await self._exchange(route, endpoint, call)
        except _AttemptFailed as failed:
            permit.failed(failed.reason, at_once=failed.no_connection)
            raise
        except BaseException:
            permit.release()
            raise
        permit.succeeded()
        return answer

    async def _exchange(self, route: Route, endpoint: Endpoint, call: Call) -> Answer:
        payload = json.dumps({**call.payload, "model": self.replica_sets[route].model}).encode()
        with _failures():
            response = await self.client.request("POST", endpoint.url + call.path, payload, call.headers)
        try:
            with _failures():
                return await _read(route, response, call.stream, call.echoed_prompt)
        except BaseException:
            response.release()
            raise


@contextmanager
def _failures() -> Iterator[None]:
    try:
        yield
    except UpstreamUnreachable as exc:
        # Nothing listens there (or not in time): the breaker opens at once, as the next request
        # should not wait on it too.
        raise _AttemptFailed(Failure.DOWN, f"no connection ({exc})", no_connection=True) from None
    except TimeoutError:
        raise _AttemptFailed(Failure.TIMEOUT, "no answer in time") from None
    except UpstreamDisconnected as exc:
        raise _AttemptFailed(Failure.DOWN, f"connection lost ({exc})") from None


class _AttemptFailed(Exception):
    def __init__(self, failure: Failure, reason: str, answer: Answer | None = None,
                 no_connection: bool = False) -> None:
        self.failure = failure
        self.reason = reason
        self.answer = answer
        self.no_connection = no_connection


async def _read(route: Route, response: Response, stream: bool, echoed_prompt: str | None) -> Answer:
    """The answer of an open response: a 200 stream up to its first event past the chunks it
    opens with (a chat role, a completion's echoed prompt), anything else whole."""
    content_type = response.headers.get("content-type")
    if stream and response.status == HTTPStatus.OK:
        rest = response.chunks()
        first, event, event_end = await _up_to_first_event(rest, echoed_prompt)
        if event is None or not _is_server_error(event):
            return Answer(route, response.status, content_type, first, rest, response)
        # What the client gets if no other target may answer: the stream as it ended, whole, so
        # that a failed answer never holds a connection (as a 503's does not).
        response.release()
        ended = Answer(route, response.status, content_type, first[:event_end] + DONE_EVENT, _no_chunks())
        raise _AttemptFailed(Failure.FAILED, f"failed before its first token: {error_message(event)}", ended)
    body = await response.read()
    response.release()
    answer = Answer(route, response.status, content_type, body)
    failure = Failure.of_status(response.status)
    if failure is not None:
        raise _AttemptFailed(failure, f"answered {response.status}", answer)
    return answer


async def _up_to_first_event(chunks: AsyncIterator[bytes], echoed_prompt: str | None) -> tuple[bytes, dict | None, int]:
    """(the stream's bytes read up to its first whole event that is not an opening chunk, that
    event parsed, the offset where it ends); the event is None if the stream ended first or it is
    not JSON. A chat stream opens with the role, and a completion with `echo` with its prompt, as
    soon as the request is admitted: holding them until the first token costs the client nothing,
    and lets a failure before that token fall back."""
    body, parser = b"", EventParser()
    async for chunk in chunks:
        body += chunk
        for event in parser.feed(chunk):
            data = _json_object(event.data)
            if data is None or not (_is_role_chunk(data) or _is_echo_chunk(data, echoed_prompt)):
                return body, data, event.end
    return body, None, len(body)


async def _no_chunks() -> AsyncIterator[bytes]:
    return
    yield


def _json_object(data: bytes) -> dict | None:
    try:
        event = json.loads(data)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def _is_role_chunk(event: dict) -> bool:
    """A chat chunk that only announces the assistant's role (and an empty content)."""
    choices = event.get("choices")
    if not isinstance(choices, list) or not choices:
        return False
    return all(isinstance(choice, dict) and choice.get("finish_reason") is None and not choice.get("logprobs")
               and isinstance(choice.get("delta"), dict) and choice["delta"].get("role") is not None
               and not choice["delta"].get("content") and set(choice["delta"]) <= {"role", "content"}
               for choice in choices)


def _is_echo_chunk(event: dict, echoed_prompt: str | None) -> bool:
    """A completion chunk that only repeats the prompt (`echo`), before any token."""
    choices = event.get("choices")
    if not echoed_prompt or not isinstance(choices, list) or not choices:
        return False
    return all(isinstance(choice, dict) and choice.get("text") == echoed_prompt and choice.get("finish_reason") is None
               and not choice.get("logprobs") for choice in choices)


def _is_server_error(event: dict) -> bool:
    """An OpenAI error event of a server-side failure (a client's error would fail anywhere)."""
    error = event.get("error")
    if isinstance(error, dict):
        return error.get("type") in (None, "server_error")
    return error is not None


def _answer_of(failed: TargetFailed) -> Answer:
    """What a client that named its model gets when that model's target failed."""
    if failed.answer is not None:
        return failed.answer
    if failed.failure is Failure.TIMEOUT:
        raise RequestTimeout(f"the {failed.route} model did not answer in time: {failed.reason}")
    raise ServiceUnavailable(failed.route.value, f"the {failed.route} model cannot be reached: {failed.reason}",
                             failed.retry_after)


def _sooner(first: float | None, second: float | None) -> float | None:
    """When to try again if both targets' breakers held a request back (None unless both did)."""
    return None if first is None or second is None else min(first, second)
