"""Structured outputs on the wire, for every component: vLLM's `structured_outputs` object (also
the predictor's generate parameter, the contract between transformer and predictor), vLLM's older
`guided_json` / `guided_regex` / `guided_choice` / `guided_grammar` fields, and OpenAI's
`response_format`. A request sets at most one constraint, whichever field carries it; the
predictor's engine compiles and bounds it (runtime/engine/structured_output.py)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

# The request fields that each carry one constraint (response_format on the OpenAI routes too).
GUIDED_FIELDS = ("guided_json", "guided_regex", "guided_choice", "guided_grammar")
STRUCTURED_OUTPUTS_FIELD = "structured_outputs"
CONSTRAINT_FIELDS = (*GUIDED_FIELDS, STRUCTURED_OUTPUTS_FIELD)


def json_from_text(value: object) -> object:
    """A JSON value written as text (v2 gRPC parameters hold no lists or objects), decoded; any
    other value as it is."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        raise ValueError("must be JSON (an object or a list), or JSON text of one") from None


Choices = Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1), BeforeValidator(json_from_text)]


class _Wire(BaseModel):
    # `json` and `schema` are the wire's names, and BaseModel's (deprecated) methods: the fields
    # go by other names and are written back under their aliases, as clients send them (the
    # router passes bodies on as it dumps them).
    model_config = ConfigDict(extra="forbid", validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)


class StructuredOutputs(_Wire):
    """vLLM's `structured_outputs`: exactly one of `json` (a JSON schema, or its text), `regex`,
    `choice`, `grammar` (Lark or GBNF) or `json_object: true`. `strict` (ours, from OpenAI's
    json_schema) refuses a schema with keywords the grammar cannot enforce, rather than ignoring
    them."""

    json_schema: dict[str, Any] | str | None = Field(None, alias="json")
    regex: str | None = None
    choice: Choices | None = None
    grammar: str | None = None
    json_object: bool | None = None
    strict: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: object) -> object:
        return json_from_text(value)

    @model_validator(mode="after")
    def _exactly_one(self) -> StructuredOutputs:
        kinds = self.kinds()
        if len(kinds) != 1:
            found = " and ".join(kinds) if kinds else "none"
            raise ValueError(f"structured_outputs sets exactly one of json, regex, choice, grammar or "
                             f"json_object: true; got {found}")
        return self

    def kinds(self) -> list[str]:
        set_fields = {"json": self.json_schema, "regex": self.regex, "choice": self.choice, "grammar": self.grammar,
                      "json_object": self.json_object or None}
        return [name for name, value in set_fields.items() if value is not None]

    def parameter(self) -> dict:
        """As the predictor's `structured_outputs` parameter."""
        return self.model_dump(mode="json", exclude_none=True)


class JsonSchemaFormat(_Wire):
    """OpenAI's `response_format.json_schema`."""

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Wire):
    """OpenAI's `response_format`: `text` (no constraint), `json_object` (any JSON object) or
    `json_schema` (with its `json_schema`; without a `schema` in it, any JSON object)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError('response_format takes `json_schema` with type "json_schema", and only then')
        return self

    def structured_outputs(self) -> StructuredOutputs | None:
        if self.type == "text":
            return None
        if self.type == "json_object" or self.json_schema.json_schema is None:
            return StructuredOutputs(json_object=True)
        return StructuredOutputs(json=self.json_schema.json_schema, strict=self.json_schema.strict)


class StructuredOutputFields(_Wire):
    """The constraint fields a request may set (each component's sampling fields include them);
    at most one of them, and of `response_format` where the request has one."""

    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: Choices | None = None
    guided_grammar: str | None = None
    structured_outputs: StructuredOutputs | None = None

    @model_validator(mode="after")
    def _one_constraint(self) -> StructuredOutputFields:
        constraints = self.requested_constraints()
        if len(constraints) > 1:
            raise ValueError(f"{' and '.join(constraints)} each constrain the output; send only one of them")
        return self

    def requested_constraints(self) -> dict[str, StructuredOutputs]:
        """{the field that set it: the constraint} for each constraint the request sets."""
        guided = {
            "guided_json": None if self.guided_json is None else StructuredOutputs(json=self.guided_json),
            "guided_regex": None if self.guided_regex is None else StructuredOutputs(regex=self.guided_regex),
            "guided_choice": None if self.guided_choice is None else StructuredOutputs(choice=self.guided_choice),
            "guided_grammar": None if self.guided_grammar is None else StructuredOutputs(grammar=self.guided_grammar),
            STRUCTURED_OUTPUTS_FIELD: self.structured_outputs,
        }
        return {name: constraint for name, constraint in guided.items() if constraint is not None}

    @property
    def structured_output(self) -> StructuredOutputs | None:
        """The request's one constraint, whichever field set it; None without one."""
        constraints = self.requested_constraints()
        return next(iter(constraints.values()), None)
