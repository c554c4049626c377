"""Wire formats of the predictor (v1 instances, v2 request parameters, the generate extension),
validated at the edge, and their conversion to the engine's SamplingParams."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from runtime.engine import SamplingParams, StructuredOutput
from serving.openai_protocol import TokenBias, TokenIds
from serving.structured_outputs import CONSTRAINT_FIELDS, StructuredOutputFields, StructuredOutputs


class SamplingFields(StructuredOutputFields):
    """Sampling fields a request may set; anything left out takes SamplingParams' default.

    Lax types on purpose: gRPC parameters carry numbers as strings ("0.7"), and JSON clients
    send 1.0 for 1. `stop_token_ids` may also be a comma-separated string, since v2 parameters
    hold no lists. The output's constraint, if any, is `structured_outputs` (what the transformer
    sends) or one of vLLM's `guided_*` fields; objects and lists in it may come as JSON text.
    """

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    stop_token_ids: TokenIds | None = None
    ignore_eos: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    min_tokens: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    # {token id: bias}, or "token:bias,token:bias" where a dict cannot go (v2 parameters).
    logit_bias: TokenBias | None = None
    # The engine's scheduling order (lower first), not a sampling parameter: see engine_priority.
    priority: int | None = None

    @property
    def engine_priority(self) -> int:
        """The priority the engine request is opened with (vLLM's default 0 when unset)."""
        return self.priority or 0

    def to_sampling_params(self, *, logprobs: bool = False) -> SamplingParams:
        """Build SamplingParams (which checks ranges and raises ValueError with the allowed one);
        `logprobs=True` computes them whatever the request asked."""
        fields = self.model_dump(include=_SAMPLING_PARAMS_FIELDS, exclude_none=True)
        if "stop_token_ids" in fields:
            fields["stop_token_ids"] = tuple(fields["stop_token_ids"])
        if logprobs:
            fields["logprobs"] = True
        if (constraint := self.structured_output) is not None:
            fields["structured_output"] = engine_structured_output(constraint)
        return SamplingParams(**fields)


# The fields SamplingParams takes as they are (the constraint is converted; the priority is the
# engine request's own).
_SAMPLING_PARAMS_FIELDS = set(SamplingFields.model_fields) - set(CONSTRAINT_FIELDS) - {"priority"}


def engine_structured_output(constraint: StructuredOutputs) -> StructuredOutput:
    """The wire's constraint as the engine's (which bounds its size: ValueError when too large)."""
    choice = None if constraint.choice is None else tuple(constraint.choice)
    return StructuredOutput(json=constraint.json_schema, json_object=bool(constraint.json_object),
                            regex=constraint.regex, choice=choice, grammar=constraint.grammar,
                            strict=bool(constraint.strict))


class PredictInstance(SamplingFields):
    """One v1 instance: `{"input_ids": [...], "max_tokens": 16, ...}`."""

    input_ids: list[StrictInt]


class PredictRequest(BaseModel):
    """A v1 predict body; `stream` answers with JSON lines, one per engine step."""

    model_config = ConfigDict(extra="forbid")

    instances: list[PredictInstance] = Field(min_length=1)
    stream: bool = False


class Prediction(BaseModel):
    output_ids: list[int]
    finish_reason: str
    # The least likely sampled token's log-probability: low means the model was unsure.
    confidence: float | None
    logprobs: list[float] | None = None


class PredictStreamChunk(BaseModel):
    output_ids: list[int]
    finish_reason: str | None
    logprobs: list[float] | None = None


class GenerateRequest(BaseModel):
    """Body of /v2/models/{name}/generate and /generate_stream."""

    model_config = ConfigDict(extra="forbid")

    input_ids: list[StrictInt]
    parameters: SamplingFields = Field(default_factory=SamplingFields)


class GenerateResponse(BaseModel):
    model_name: str
    output_ids: list[int]
    finish_reason: str
    logprobs: list[float] | None = None
    # Per output token, the `top_logprobs` most likely tokens: {token id: log-probability}.
    top_logprobs: list[dict[int, float]] | None = None


class GenerateStreamEvent(BaseModel):
    """One server-sent event: the ids new since the previous event; finish_reason on the last."""

    model_name: str
    output_ids: list[int]
    finish_reason: str | None
    logprobs: list[float] | None = None
    top_logprobs: list[dict[int, float]] | None = None
