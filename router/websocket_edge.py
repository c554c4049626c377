"""The router edge's backend of the WebSocket generate protocol (serving/websocket_session.py). Each
request is routed as the OpenAI edge routes one (`model` "auto" by the policy, or a target's model
name; the handshake's `x-route` header as a hint; least-loaded replicas; fallback to the other
model before the first byte; an `auto` chat only to a model that serves chat) and sent, as one
pooled HTTP stream, to the chosen transformer's OpenAI streaming route: completions for a
`prompt`, chat completions for `messages`. Its server-sent events become deltas, and the usage
chunk (asked for) the `done`. Cancelling the request closes that stream, which aborts the request
in the predictor. Streams are never cascaded (the cascade judges whole answers).

Behind the gateway, each request is admitted against its tenant's limits as an HTTP one is (a
refusal fails that request with 429, 403 or 503, and the session goes on), and metered from the
usage on every chunk, so that a cancelled request bills the tokens it got; the ledger record is
durable before the `done` that reports its usage is sent.

A `subscribe` follows a background request (router/batch/background.py) of the connection's
tenant: its status changes, then its final result (the whole answer, not token deltas: it ran
as a batch line does, not streamed)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from http import HTTPStatus

import httpx

from router.batch.background import BackgroundApi
from router.batch.routes import ApiError
from router.batch.store import BatchStoreUnavailable
from router.config import AUTO_MODEL
from router.features import RoutingRequest
from router.gateway.gateway import ANONYMOUS, Gateway, Ticket, refusal_of
from router.gateway.reservation import reserved_tokens
from router.gateway.usage_record import Endpoint
from router.openai_edge import OpenAIEdge
from router.schemas import chat_routing_request
from router.upstream import Answer, Call
from serving.errors import error_message
from serving.openai_protocol import Usage
from serving.openai_routes import CHAT_COMPLETIONS_PATH, COMPLETIONS_PATH
from serving.sse import json_events
from serving.structured_outputs import CONSTRAINT_FIELDS
from serving.tool_calling import ToolCall
from serving.websocket_protocol import (
    BackgroundMessage,
    Finish,
    GenerateMessage,
    RequestFailed,
    TextDelta,
)


class RoutedGenerationBackend:
    def __init__(self, edge: OpenAIEdge, gateway: Gateway | None = None) -> None:
        self.edge = edge
        self.gateway = gateway
        # The background requests `subscribe` follows; set once the batch API is installed.
        self.background: BackgroundApi | None = None

    async def follow(self, request_id: str, headers: Mapping[str, str]) -> AsyncIterator[BackgroundMessage]:
        """The background request's updates, read as the connection's tenant (another tenant's
        id is unknown, as over HTTP)."""
        if self.background is None:
            raise RequestFailed(HTTPStatus.SERVICE_UNAVAILABLE, "background requests are not served yet")
        try:
            tenant = self.gateway.authenticate(headers.get("authorization")).name if self.gateway else ANONYMOUS.name
            async with aclosing(self.background.updates(tenant, request_id)) as updates:
                async for update in updates:
                    yield BackgroundMessage(id=request_id, status=update["status"], response=update["response"],
                                            error=update["error"])
        except ApiError as exc:
            raise RequestFailed(exc.status, str(exc)) from None
        except BatchStoreUnavailable as exc:
            raise RequestFailed(HTTPStatus.SERVICE_UNAVAILABLE, f"the batch store cannot be reached now: {exc}") from None
        except Exception as exc:
            refusal = refusal_of(exc)
            if refusal is None:
                raise
            raise RequestFailed(refusal.status, refusal.message, refusal.retry_after_seconds) from None

    async def stream(self, request: GenerateMessage, headers: Mapping[str, str]) -> AsyncIterator[TextDelta | Finish]:
        payload = openai_payload(request, continuous_usage=self.gateway is not None)
        ticket = await self._admit(request, payload, headers) if self.gateway is not None else None
        outcome = "failed"
        holding = ticket.hold_slot() if ticket is not None else None
        try:
            answer = await self._open(request, payload, headers)
            try:
                async with aclosing(_relay(answer, request, ticket)) as events:
                    async for event in events:
                        yield event
                outcome = "ok"
            finally:
                await answer.close()
        except (GeneratorExit, asyncio.CancelledError):
            outcome = "cancelled"
            raise
        finally:
            if holding is not None:
                holding.cancel()
            if ticket is not None:
                await asyncio.shield(ticket.finish(outcome))

    async def _admit(self, request: GenerateMessage, payload: dict, headers: Mapping[str, str]) -> Ticket:
        """The request's ticket from the gateway, or RequestFailed with the status it refused with."""
        model = request.model or AUTO_MODEL
        try:
            tenant = self.gateway.authenticate(headers.get("authorization"))
            self.gateway.check_model(tenant, model)
            reservation = reserved_tokens(request.prompt is None, payload, self.gateway.counter,
                                          self.gateway.settings.unbounded_max_tokens)
            return await self.gateway.admit(tenant, Endpoint.WEBSOCKET, reservation, model)
        except Exception as exc:
            refusal = refusal_of(exc)
            if refusal is None:
                raise
            raise RequestFailed(refusal.status, refusal.message, refusal.retry_after_seconds) from None

    async def _open(self, request: GenerateMessage, payload: dict, headers: Mapping[str, str]) -> Answer:
        """The chosen target's stream, open up to its first chunk; RequestFailed with the target's
        status if it answered with an error."""
        chat = request.prompt is None
        _, plan = self.edge.plan(request.model or AUTO_MODEL, [_routing_request(request)], headers, chat)
        path = CHAT_COMPLETIONS_PATH if chat else COMPLETIONS_PATH
        answer = await self.edge.upstream.send(plan, Call.of(path, payload, headers, stream=True))
        if answer.status != HTTPStatus.OK:
            raise RequestFailed(answer.status, _error_text(answer))
        return answer


def _routing_request(request: GenerateMessage) -> RoutingRequest:
    if request.prompt is not None:
        return RoutingRequest(request.prompt, 1, request.max_tokens)
    return chat_routing_request(request.messages, request.max_tokens)


def openai_payload(request: GenerateMessage, continuous_usage: bool = False) -> dict:
    """The OpenAI streaming body of a generate message (without `model`: each target gets its
    own). `max_tokens` is always sent: unset, it means the rest of the context, as in chat.
    `continuous_usage`: usage on every chunk (the gateway meters with it)."""
    payload = request.model_dump(include={"temperature", "top_p", "seed", "top_k", "min_tokens", "ignore_eos",
                                          "presence_penalty", "frequency_penalty", "repetition_penalty",
                                          "logit_bias", "min_p", "stop_token_ids", *CONSTRAINT_FIELDS},
                                 exclude_none=True)
    payload.update(max_tokens=request.max_tokens, stream=True,
                   stream_options={"include_usage": True, "continuous_usage_stats": continuous_usage})
    if request.stop_strings:
        payload["stop"] = request.stop_strings
    if request.prompt is not None:
        payload["prompt"] = request.prompt
        if request.logprobs:
            payload["logprobs"] = 0
    else:
        payload["messages"] = [message.model_dump(exclude_none=True) for message in request.messages]
        payload["logprobs"] = request.logprobs
        payload.update(request.model_dump(include={"tools", "tool_choice"}, exclude_none=True))
    return payload


async def _relay(answer: Answer, request: GenerateMessage, ticket: Ticket | None) -> AsyncIterator[TextDelta | Finish]:
    """Deltas from the stream's chunks, then the Finish its usage chunk makes (it comes last); each
    usage seen goes to the ticket's meter, committed before the Finish."""
    finish_reason = None
    # A chat answer's calls come whole, in its last delta.
    tool_calls = None
    try:
        async with aclosing(json_events(answer.chunks())) as events:
            async for event in events:
                if "error" in event:
                    raise RequestFailed(HTTPStatus.BAD_GATEWAY,
                                        f"the {answer.route} model failed mid-stream: {error_message(event)}")
                usage = event.get("usage")
                if usage and ticket is not None:
                    ticket.meter.observe_usage(usage, event.get("model"))
                if usage and event.get("choices") == []:
                    if ticket is not None:
                        await ticket.meter.commit("ok")
                    yield Finish(finish_reason or "stop", event["model"], Usage.model_validate(usage), tool_calls)
                    return
                for choice in event["choices"]:
                    delta = _text_delta(choice, request.logprobs)
                    if delta is not None:
                        yield delta
                    finish_reason = choice.get("finish_reason") or finish_reason
                    tool_calls = _tool_calls(choice) or tool_calls
    except httpx.HTTPError as exc:
        raise RequestFailed(HTTPStatus.BAD_GATEWAY,
                            f"the {answer.route} model's stream broke ({type(exc).__name__})") from None
    raise RequestFailed(HTTPStatus.BAD_GATEWAY, f"the {answer.route} model's stream ended before the request finished")


def _text_delta(choice: dict, wants_logprobs: bool) -> TextDelta | None:
    """A completion chunk's `text`, or a chat chunk's `delta.content`, with the token logprobs."""
    text = choice["text"] if "text" in choice else choice["delta"].get("content") or ""
    logprobs = _token_logprobs(choice.get("logprobs")) if wants_logprobs else None
    if not text and not logprobs:
        return None
    return TextDelta(text, logprobs)


def _tool_calls(choice: dict) -> list[ToolCall] | None:
    """A chat chunk's calls (OpenAI's call deltas, less their `index`); None if it has none."""
    calls = choice.get("delta", {}).get("tool_calls") or []
    return [ToolCall(id=call["id"], function=call["function"]) for call in calls] or None


def _token_logprobs(logprobs: dict | None) -> list[float] | None:
    if not logprobs:
        return None
    if "content" in logprobs:
        return [token["logprob"] for token in logprobs["content"]]
    return logprobs["token_logprobs"]


def _error_text(answer: Answer) -> str:
    message = error_message(answer.body)
    return f"the {answer.route} model answered {answer.status}" if message is None else message
