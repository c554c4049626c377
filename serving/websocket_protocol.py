"""The WebSocket generate protocol (`/ws/v1/generate`) the transformer and the router's edge both
speak: the messages a client sends (`generate`, `cancel`, and `subscribe` at the router) and
those it gets back (`delta`, `done`, `error`, `background`), validated with pydantic, and the
error codes a failed request is answered with. See docs/websocket.md for the protocol as a client
sees it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from http import HTTPStatus
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from serving.errors import RETRY_AFTER_SECONDS, describe_validation_errors
from serving.openai_protocol import ChatMessage, SamplingBase, Usage
from serving.structured_outputs import CONSTRAINT_FIELDS, STRUCTURED_OUTPUTS_FIELD, StructuredOutputs
from serving.tool_calling import ToolCall, ToolRequestFields

WEBSOCKET_PATH = "/ws/v1/generate"
MAX_ID_CHARS = 128
# The finish reason of a request the client cancelled.
CANCELLED = "cancelled"


class ErrorCode(StrEnum):
    INVALID_REQUEST = "invalid_request"  # the message itself is wrong (400)
    DUPLICATE_ID = "duplicate_id"  # the id is in use by a request in flight, which goes on
    NOT_FOUND = "not_found"  # an unknown model (404)
    FORBIDDEN = "forbidden"  # the connection's key may not use this model (403)
    TOO_MANY_REQUESTS = "too_many_requests"  # this connection has as many requests in flight as it may
    OVERLOADED = "overloaded"  # the server cannot take it now: retry after `retry_after` seconds (503)
    TIMEOUT = "timeout"  # the request ran past its time limit and was aborted (504)
    UPSTREAM_ERROR = "upstream_error"  # a server behind this one answered something unexpected (502)
    INTERNAL = "internal"  # anything else (500), reported by type only

    @classmethod
    def of_status(cls, status: int) -> ErrorCode:
        return _CODES_BY_STATUS.get(status, cls.INTERNAL)


_CODES_BY_STATUS = {
    HTTPStatus.BAD_REQUEST: ErrorCode.INVALID_REQUEST,
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: ErrorCode.INVALID_REQUEST,
    HTTPStatus.NOT_FOUND: ErrorCode.NOT_FOUND,
    HTTPStatus.FORBIDDEN: ErrorCode.FORBIDDEN,
    HTTPStatus.TOO_MANY_REQUESTS: ErrorCode.OVERLOADED,
    HTTPStatus.SERVICE_UNAVAILABLE: ErrorCode.OVERLOADED,
    HTTPStatus.GATEWAY_TIMEOUT: ErrorCode.TIMEOUT,
    HTTPStatus.BAD_GATEWAY: ErrorCode.UPSTREAM_ERROR,
}


class RequestFailed(Exception):
    """A request that failed with an HTTP status (a server behind this one answered it), to be
    reported to the client with that status's error code; `retry_after_seconds`, when the server
    that refused it said how long to wait."""

    def __init__(self, status: int, message: str, retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after_seconds = retry_after_seconds


# Client messages ------------------------------------------------------------------------

RequestId = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]


class GenerateMessage(ToolRequestFields, SamplingBase):
    """Generate text for a `prompt` (a completion) or chat `messages` (the chat template applies),
    with the OpenAI routes' sampling fields (unknown fields are refused, as there) and, with
    `messages`, the chat route's `tools` and `tool_choice`. `model` defaults to the server's own
    (the transformer's model, the router edge's `auto`). Unset `max_tokens`: the rest of the
    context."""

    type: Literal["generate"]
    id: RequestId
    model: str | None = None
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    seed: int | None = None
    logprobs: bool = False

    @model_validator(mode="after")
    def _one_input(self) -> GenerateMessage:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("a generate message needs exactly one of `prompt` (text) or `messages` (chat)")
        if self.tools is not None and self.messages is None:
            raise ValueError("tools go with `messages` (chat), not with a `prompt`")
        return self

    def requested_constraints(self) -> dict[str, StructuredOutputs]:
        return {**self.tool_constraints(), **super().requested_constraints()}

    def sampling_fields(self) -> dict:
        """The sampling fields the client set (`stop` as a list), with the constraint a forced
        tool call makes."""
        fields = self.model_dump(include=SAMPLING_FIELDS, exclude_none=True)
        fields["stop"] = self.stop_strings
        if self.forced_tools:
            # The only constraint then: any other is refused with it.
            fields[STRUCTURED_OUTPUTS_FIELD] = self.structured_output
        return fields


SAMPLING_FIELDS = frozenset({"max_tokens", "temperature", "top_p", "seed", "stop", "logprobs", "top_k",
                             "min_tokens", "ignore_eos", "presence_penalty", "frequency_penalty",
                             "repetition_penalty", "logit_bias", "min_p", "stop_token_ids", "priority",
                             *CONSTRAINT_FIELDS})


class CancelMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["cancel"]
    id: RequestId


class SubscribeMessage(BaseModel):
    """Follow a background request (submitted over HTTP with `"background": true`) by its id: its
    status now and at each change, up to the final one with its result. Only the router serves it."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["subscribe"]
    id: RequestId


ClientMessage = Annotated[GenerateMessage | CancelMessage | SubscribeMessage, Field(discriminator="type")]
_CLIENT_MESSAGE = TypeAdapter(ClientMessage)
MESSAGE_TYPES = ("generate", "cancel", "subscribe")


class InvalidMessage(Exception):
    """A client message that cannot be served: the error answers it, under its id if it had one."""

    def __init__(self, request_id: str | None, message: str) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.message = message


def parse_client_message(raw: str | bytes) -> GenerateMessage | CancelMessage | SubscribeMessage:
    """One client message; InvalidMessage says what is wrong with it."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidMessage(None, f"a message must be a JSON object: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidMessage(None, f"a message must be a JSON object, got {type(data).__name__}")
    request_id = data.get("id") if isinstance(data.get("id"), str) else None
    if data.get("type") not in MESSAGE_TYPES:
        raise InvalidMessage(request_id, f"unknown message type {data.get('type')!r}; "
                                         f"the types are {', '.join(MESSAGE_TYPES)}")
    try:
        return _CLIENT_MESSAGE.validate_python(data)
    except ValidationError as exc:
        raise InvalidMessage(request_id, describe_validation_errors(_without_type_tag(exc.errors()))) from None


def _without_type_tag(errors: list[dict]) -> list[dict]:
    """Errors located without the union's tag (`max_tokens`, not `generate.max_tokens`)."""
    return [{**error, "loc": error["loc"][1:]} for error in errors]


# Server messages ------------------------------------------------------------------------


class DeltaMessage(BaseModel):
    type: Literal["delta"] = "delta"
    id: str
    text: str
    # The log-probability of each token behind `text`, when the request asked for them.
    logprobs: list[float] | None = None


class DoneMessage(BaseModel):
    type: Literal["done"] = "done"
    id: str
    finish_reason: str
    # The model that answered (at the router edge: the target it chose). None when cancelled.
    model: str | None = None
    # None when the request was cancelled.
    usage: Usage | None = None
    # The calls the answer made (finish_reason "tool_calls"), as the chat route's message has them.
    tool_calls: list[ToolCall] | None = None


class ErrorMessage(BaseModel):
    type: Literal["error"] = "error"
    id: str | None
    code: ErrorCode
    message: str
    # Seconds to wait before retrying, on `overloaded`.
    retry_after: float | None = None

    @classmethod
    def of_status(cls, request_id: str | None, status: int, message: str,
                  retry_after_seconds: float | None = None) -> ErrorMessage:
        code = ErrorCode.of_status(status)
        retry_after = (retry_after_seconds or RETRY_AFTER_SECONDS) if code is ErrorCode.OVERLOADED else None
        return cls(id=request_id, code=code, message=message, retry_after=retry_after)


class BackgroundMessage(BaseModel):
    """A subscribed background request's status; the final one (completed, failed, cancelled,
    expired) carries its `response` (an answer's status_code, request_id and body) or its `error`
    (why it never ran), and ends the subscription."""

    type: Literal["background"] = "background"
    id: str
    status: str
    response: dict | None = None
    error: dict | None = None

    @property
    def ends(self) -> bool:
        return self.response is not None or self.error is not None


# What a backend yields for one request: text as it comes, then how it finished.


@dataclass(slots=True)
class TextDelta:
    text: str
    logprobs: list[float] | None = None

    def message(self, request_id: str) -> DeltaMessage:
        return DeltaMessage(id=request_id, text=self.text, logprobs=self.logprobs)


@dataclass(slots=True)
class Finish:
    finish_reason: str
    model: str
    usage: Usage
    tool_calls: list[ToolCall] | None = None

    def message(self, request_id: str) -> DoneMessage:
        return DoneMessage(id=request_id, finish_reason=self.finish_reason, model=self.model, usage=self.usage,
                           tool_calls=self.tool_calls)


def as_json(message: DeltaMessage | DoneMessage | ErrorMessage | BackgroundMessage) -> str:
    """A server message as sent: optional fields that are unset are left out; `id` never is (null
    on an error about a message whose id could not be read)."""
    data = message.model_dump(mode="json", exclude_none=True)
    data.setdefault("id", None)
    return json.dumps(data, separators=(",", ":"))
