"""OpenAI's completions and chat completions wire format (the subset we serve), validated at the
edge, and its error shape. Shared by the transformer, which serves it, and the router's edge,
which routes it. Fields we do not implement are refused with a 400 that names them, rather than
silently ignored."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, field_validator, model_validator

from serving.structured_outputs import ResponseFormat, StructuredOutputFields, StructuredOutputs
from serving.text import without_lone_surrogates
from serving.tool_calling import ToolCall, ToolRequestFields, Tools, check_tools

MAX_STOP_STRINGS = 4
MAX_STOP_STRING_CHARS = 256
MAX_CHOICES = 16
MAX_TOP_LOGPROBS = 20
# OpenAI's ranges (the engine checks the same ones: runtime/engine/sampling_params.py).
MAX_ADDITIVE_PENALTY = 2.0
MAX_LOGIT_BIAS = 100.0
MAX_LOGIT_BIAS_TOKENS = 300
MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY = 0.01, 10.0
MAX_STOP_TOKEN_IDS = 256
# OpenAI request fields that change nothing about the generation, accepted and ignored (and named
# in the response's x-ignored-fields header): storing completions, their metadata, the service
# tier, predicted outputs (a latency hint), the end user's id. `parallel_tool_calls`: a forced
# call is always one call, and a model's own format says how many it makes.
# A priority fits in gRPC's int64 parameters with room to spare.
MIN_PRIORITY, MAX_PRIORITY = -(2**31), 2**31 - 1
BENIGN_FIELDS = ("store", "metadata", "service_tier", "parallel_tool_calls", "prediction", "user")


class _Body(BaseModel):
    # Unknown fields are refused: OpenAI's API does the same, and a typo should not pass silently.
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Body):
    include_usage: bool = False
    # vLLM's: with include_usage, every chunk also carries the usage so far.
    continuous_usage_stats: bool = False


Stop = str | Annotated[list[str], Field(max_length=MAX_STOP_STRINGS)] | None


def token_ids_from_text(value: object) -> object:
    """Token ids written as "1,2,3" (v2 parameters hold no lists), or one id, as a list; any
    other value as it is."""
    if isinstance(value, str):
        try:
            return [int(part) for part in value.split(",") if part.strip()]
        except ValueError:
            raise ValueError("must be a list of token ids or a comma-separated string of them") from None
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    return value


def logit_bias_from_text(value: object) -> object:
    """A logit bias written as "token:bias,token:bias" (v2 parameters hold no objects) as a dict;
    any other value as it is."""
    if not isinstance(value, str):
        return value
    bias = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        token, separator, number = item.partition(":")
        try:
            if not separator:
                raise ValueError
            bias[int(token)] = float(number)
        except ValueError:
            raise ValueError('a logit_bias string must be "token:bias" pairs separated by commas, '
                             f"got {item!r}") from None
    return bias


# Token ids and a logit bias as fields, also read from their text forms (v2 parameters hold no
# lists or objects); the predictor's parameters use these as they are, the edges add bounds.
TokenIds = Annotated[list[StrictInt], BeforeValidator(token_ids_from_text)]
TokenBias = Annotated[dict[int, float], BeforeValidator(logit_bias_from_text)]
LogitBias = Annotated[dict[int, Annotated[float, Field(ge=-MAX_LOGIT_BIAS, le=MAX_LOGIT_BIAS)]],
                      Field(max_length=MAX_LOGIT_BIAS_TOKENS), BeforeValidator(logit_bias_from_text)]
AdditivePenalty = Annotated[float, Field(ge=-MAX_ADDITIVE_PENALTY, le=MAX_ADDITIVE_PENALTY)]


class SamplingBase(StructuredOutputFields, _Body):
    """The sampling fields the OpenAI routes and the WebSocket protocol share beyond OpenAI's own
    (whose ranges differ by route): stop strings, the penalties and logit bias, and vLLM's
    extensions (the openai client sends those through `extra_body`), its structured outputs among
    them (serving/structured_outputs.py)."""

    stop: Stop = None
    top_k: Annotated[int, Field(ge=-1)] | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    min_tokens: Annotated[int, Field(ge=0)] | None = None
    ignore_eos: bool | None = None
    stop_token_ids: Annotated[TokenIds, Field(max_length=MAX_STOP_TOKEN_IDS)] | None = None
    presence_penalty: AdditivePenalty | None = None
    frequency_penalty: AdditivePenalty | None = None
    repetition_penalty: Annotated[float, Field(ge=MIN_REPETITION_PENALTY, le=MAX_REPETITION_PENALTY)] | None = None
    # {token id: bias}; JSON object keys are strings, so "50256" is read as 50256.
    logit_bias: LogitBias | None = None
    # vLLM's scheduling priority: among requests waiting for the engine, lower values start first
    # (ties first come, first served). The batch API sends its lines at BATCH_PRIORITY.
    priority: Annotated[int, Field(ge=MIN_PRIORITY, le=MAX_PRIORITY)] | None = None

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, stop: Stop) -> Stop:
        for string in [stop] if isinstance(stop, str) else stop or []:
            if not string or len(string) > MAX_STOP_STRING_CHARS:
                raise ValueError(f"each stop string must have 1 to {MAX_STOP_STRING_CHARS} characters")
        return stop

    @property
    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class _SamplingRequest(SamplingBase):
    model: str
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    n: Annotated[int, Field(ge=1, le=MAX_CHOICES)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    response_format: ResponseFormat | None = None
    # BENIGN_FIELDS, typed as OpenAI's so that a wrong value is still refused.
    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    parallel_tool_calls: bool | None = None
    prediction: dict[str, Any] | None = None
    user: str | None = None

    def requested_constraints(self) -> dict[str, StructuredOutputs]:
        constraints = super().requested_constraints()
        constraint = None if self.response_format is None else self.response_format.structured_outputs()
        if constraint is None:
            return constraints
        return {f"response_format ({self.response_format.type})": constraint, **constraints}

    @property
    def ignored_fields(self) -> list[str]:
        """The BENIGN_FIELDS the request set (and that nothing reads)."""
        return [name for name in BENIGN_FIELDS if name in self.model_fields_set]

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def include_continuous_usage(self) -> bool:
        return self.include_usage and self.stream_options.continuous_usage_stats


class CompletionRequest(_SamplingRequest):
    prompt: str | list[int] | Annotated[list[str], Field(min_length=1)] | Annotated[list[list[int]], Field(min_length=1)]
    # OpenAI's default for completions.
    max_tokens: Annotated[int, Field(ge=1)] | None = 16
    logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    @property
    def prompts(self) -> list[str] | list[list[int]]:
        """Its prompts: `prompt` is one (a text or token ids) or a list of them."""
        prompt = self.prompt
        if isinstance(prompt, str) or not prompt or isinstance(prompt[0], int):
            return [prompt]
        return prompt

    @model_validator(mode="after")
    def _refuse_unsupported_completion_fields(self) -> CompletionRequest:
        if self.suffix:
            raise ValueError("suffix (insertion) is not supported")
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of must equal n (or be left out)")
        if self.echo and not isinstance(self.prompt, str):
            raise ValueError("echo is supported for a single text prompt only")
        if self.echo and self.logprobs is not None:
            # OpenAI's answer would carry the prompt's logprobs too; giving only the output's would
            # look the same to a client (an evaluation harness scoring the prompt) and mislead it.
            raise ValueError("echo with logprobs (the prompt tokens' logprobs) is not supported; "
                             "ask for one or the other")
        return self


class TextContentPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextContentPart] | None = None
    name: str | None = None
    # An assistant's calls, and a tool message's answer to one of them.
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _tool_fields_with_their_roles(self) -> ChatMessage:
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError(f"only an assistant message carries tool_calls, not a {self.role} message")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        return self

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class TokenizeRequest(_Body):
    """vLLM's /tokenize: a completion `prompt`, or chat `messages` (rendered by the chat
    template), as the token ids the completion and chat routes would send the model."""

    model: str | None = None
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    # Rendered with the messages, as the chat route renders them.
    tools: Tools | None = None
    add_generation_prompt: bool = True

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("send exactly one of `prompt` (text) or `messages` (chat)")
        if self.tools is not None and self.messages is None:
            raise ValueError("tools go with `messages` (chat), not with a `prompt`")
        check_tools(self.tools, None)
        return self


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeRequest(_Body):
    """vLLM's /detokenize: token ids back to text (special tokens skipped, as in completions)."""

    model: str | None = None
    tokens: list[StrictInt]


class DetokenizeResponse(BaseModel):
    prompt: str


class ChatCompletionRequest(ToolRequestFields, _SamplingRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    # No default: the rest of the context window.
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    add_generation_prompt: bool = True

    @model_validator(mode="after")
    def _refuse_unsupported_chat_fields(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs: true")
        return self

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def requested_constraints(self) -> dict[str, StructuredOutputs]:
        return {**self.tool_constraints(), **super().requested_constraints()}


# Responses ------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens)


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float] = Field(default_factory=list)
    top_logprobs: list[dict[str, float]] | None = None
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    # None when the answer is only tool calls.
    content: str | None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ToolCallDelta(ToolCall):
    """A call in a stream: sent whole, in the last delta, with its position among the calls."""

    index: int


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


# Errors ---------------------------------------------------------------------------------

# The `type` OpenAI gives each status.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    502: "server_error",
    503: "server_error",
    504: "server_error",
}


def openai_error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    """The error's body; its message and param may quote the client's input, which must be writable."""
    return {"error": {"message": without_lone_surrogates(message), "type": ERROR_TYPES.get(status, "server_error"),
                      "param": None if param is None else without_lone_surrogates(param), "code": code}}
