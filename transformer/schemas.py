"""Wire formats of the transformer's KServe routes (v1 instances, v2 parameters, the text generate
extension), validated at the edge, and their conversion to a TextRequest for the predictor."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serving.openai_protocol import MAX_TOP_LOGPROBS, ChatMessage, SamplingBase
from serving.structured_outputs import CONSTRAINT_FIELDS, STRUCTURED_OUTPUTS_FIELD


class TextSamplingFields(SamplingBase):
    """Sampling fields a request may set; anything left out takes the predictor's default.

    Lax number types on purpose: gRPC parameters carry numbers as strings ("0.7"). `stop` is a
    string or a list of them; v2 parameters hold no lists, so there it is one string.
    """

    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    seed: int | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None

    def predictor_parameters(self, *, logprobs: bool = False) -> dict:
        """The fields the predictor takes (all but `stop`, which the transformer applies, and the
        request's constraint goes as one `structured_outputs`, whichever field set it);
        `logprobs=True` asks for them whatever the request said (for `confidence`)."""
        parameters = {name: value for name in _PREDICTOR_FIELDS if (value := getattr(self, name)) is not None}
        if logprobs:
            parameters["logprobs"] = True
        if (constraint := self.structured_output) is not None:
            parameters[STRUCTURED_OUTPUTS_FIELD] = constraint.parameter()
        return parameters


# What the predictor's parameters take as they are: every sampling field but `stop` and the constraint.
_PREDICTOR_FIELDS = tuple(name for name in TextSamplingFields.model_fields
                          if name != "stop" and name not in CONSTRAINT_FIELDS)


class PredictInstance(TextSamplingFields):
    """One v1 instance: a completion `prompt` or chat `messages`, plus sampling fields."""

    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _one_input(self) -> PredictInstance:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("each instance needs exactly one of `prompt` (text) or `messages` (chat)")
        return self


class PredictRequest(BaseModel):
    """A v1 predict body. Other top-level keys are ignored rather than refused: an InferenceGraph
    router step adds its decision (`route`, `route_score`) to the request it passes on."""

    model_config = ConfigDict(extra="ignore")

    instances: Annotated[list[PredictInstance], Field(min_length=1)]
    stream: bool = False


class Prediction(BaseModel):
    text: str
    finish_reason: str
    # The least likely generated token's log-probability: low means the model was unsure
    # (an InferenceGraph cascade escalates on it).
    confidence: float | None
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[float] | None = None


class TextGenerateRequest(BaseModel):
    """Body of the text generate extension: /v2/models/{name}/generate and /generate_stream."""

    model_config = ConfigDict(extra="forbid")

    text_input: str
    parameters: TextSamplingFields = Field(default_factory=TextSamplingFields)


class TextGenerateResponse(BaseModel):
    model_name: str
    text_output: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[float] | None = None


class TextGenerateEvent(BaseModel):
    """One server-sent event: the text new since the previous one; finish_reason on the last."""

    model_name: str
    text_output: str
    finish_reason: str | None
    logprobs: list[float] | None = None
