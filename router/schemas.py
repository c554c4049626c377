"""What the router reads of a request: the v1 predict body in the transformer's shape,
`{"instances": [{"prompt": ...} or {"messages": [...]}, ...]}`, and the v2 request parameters,
each optionally with a `route` hint. Only what the policy looks at is validated (chat messages as
the OpenAI routes take them); every other field (sampling fields, ...) is the target's to check
and passes through untouched."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from router.features import RoutingRequest
from serving.openai_protocol import ChatMessage


class _PassThrough(BaseModel):
    model_config = ConfigDict(extra="allow")


class Instance(_PassThrough):
    """One request: a `prompt`, or chat `messages`; `max_tokens` if it asks for an output length."""

    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    max_tokens: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> Instance:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("an instance needs exactly one of `prompt` (a string) or `messages` (a chat)")
        return self

    def routing_request(self) -> RoutingRequest:
        if self.messages is None:
            return RoutingRequest(self.prompt, 1, self.max_tokens)
        return chat_routing_request(self.messages, self.max_tokens)


def chat_routing_request(messages: list[ChatMessage], max_tokens: int | None) -> RoutingRequest:
    """A conversation as the policy sees it: every message's text, and its number of user turns."""
    text = "\n".join(message.text for message in messages)
    user_turns = sum(message.role == "user" for message in messages)
    return RoutingRequest(text, user_turns, max_tokens)


class PredictRequest(_PassThrough):
    instances: list[Instance] = Field(min_length=1)
    route: str | None = Field(None, description="a hint that overrides the policy: 'small' or 'large'")


class InferParameters(_PassThrough):
    """The v2 request parameters the router reads; the others are the target's."""

    max_tokens: int | None = Field(None, ge=1)
    route: str | None = Field(None, description="a hint that overrides the policy: 'small' or 'large'")


# Parameters meant for the router alone: they are not passed on to the target.
ROUTER_PARAMETERS = frozenset({"route"})
