"""OpenAI's tool calling on the wire, for every component: the `tools` a chat request offers, its
`tool_choice`, the calls an assistant message carries, and the constraint that makes the model
call a tool when `tool_choice` demands one (a JSON schema for {"name", "arguments"}, enforced
by the predictor's structured outputs)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serving.structured_outputs import StructuredOutputs

MAX_TOOLS = 128
# OpenAI's rule for a function's name.
FUNCTION_NAME = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FunctionDefinition(_Body):
    name: FUNCTION_NAME
    description: str | None = None
    # A JSON schema of the arguments, an object's; none means the function takes none.
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _check_parameters(cls, parameters: dict[str, Any] | None) -> dict[str, Any] | None:
        if parameters is None:
            return None
        if parameters.get("type", "object") != "object":
            raise ValueError(f'a function\'s parameters are a JSON schema of type "object", '
                             f"not {parameters['type']!r}")
        if not isinstance(parameters.get("properties", {}), dict):
            # A ValueError, which pydantic reports as the field's 400.
            raise ValueError("a function's parameters' `properties` must be an object")  # noqa: TRY004
        required = parameters.get("required", [])
        if not isinstance(required, list) or not all(isinstance(name, str) for name in required):
            raise ValueError("a function's parameters' `required` must be a list of property names")
        return parameters

    @property
    def arguments_schema(self) -> dict[str, Any]:
        return self.parameters if self.parameters is not None else {"type": "object", "properties": {}}


class Tool(_Body):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Body):
    name: str


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice
Tools = Annotated[list[Tool], Field(min_length=1, max_length=MAX_TOOLS)]


class FunctionCall(_Body):
    name: str
    # JSON text, as OpenAI sends and takes it.
    arguments: str


class ToolCall(_Body):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall

    def template_form(self) -> dict:
        """As chat templates read a call: the arguments as an object (templates write them with
        `tojson`), or as the text itself when it is not JSON."""
        try:
            arguments = json.loads(self.function.arguments)
        except ValueError:
            arguments = self.function.arguments
        return {"id": self.id, "type": "function",
                "function": {"name": self.function.name, "arguments": arguments}}


def template_tools(tools: list[Tool] | None) -> list[dict] | None:
    """The tools as chat templates read them: OpenAI's {"type": "function", "function": {...}}."""
    return None if tools is None else [tool.model_dump(exclude_none=True) for tool in tools]


def check_tools(tools: list[Tool] | None, tool_choice: ToolChoice | None) -> None:
    """ValueError (a 400) for duplicate function names, or a tool_choice that needs tools the
    request does not offer."""
    names = [tool.function.name for tool in tools or []]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"each tool needs its own function name; {', '.join(duplicates)} is given twice")
    if isinstance(tool_choice, NamedToolChoice) and tool_choice.function.name not in names:
        raise ValueError(f"tool_choice names the function {tool_choice.function.name!r}, which is not among "
                         f"the tools ({', '.join(names) or 'none given'})")
    if tool_choice == "required" and not names:
        raise ValueError('tool_choice "required" needs at least one tool')


def forced_tools(tools: list[Tool] | None, tool_choice: ToolChoice | None) -> list[Tool]:
    """The tools one of which the model must call: all of them for "required", the named one;
    none when the model may answer in text."""
    if tool_choice == "required":
        return list(tools or [])
    if isinstance(tool_choice, NamedToolChoice):
        return [tool for tool in tools or [] if tool.function.name == tool_choice.function.name]
    return []


class ToolRequestFields(_Body):
    """The tool fields of a chat request, shared by the OpenAI chat route and the WebSocket
    protocol's generate message: the tools offered and tool_choice, and what they make of it."""

    tools: Tools | None = None
    tool_choice: ToolChoice | None = None

    @model_validator(mode="after")
    def _check_tool_fields(self) -> ToolRequestFields:
        check_tools(self.tools, self.tool_choice)
        return self

    @property
    def effective_tool_choice(self) -> ToolChoice:
        """"none" without tools (nothing to call); with them, the request's, by default "auto"."""
        if not self.tools:
            return "none"
        return self.tool_choice or "auto"

    @property
    def forced_tools(self) -> list[Tool]:
        """The tools one of which the model must call ("required", or a named one)."""
        return forced_tools(self.tools, self.tool_choice)

    def tool_constraints(self) -> dict[str, StructuredOutputs]:
        """{"tool_choice": the constraint} when tool_choice forces a call, to go with the request's
        other constraints (at most one of them may be set)."""
        tools = self.forced_tools
        return {"tool_choice": tool_call_constraint(tools)} if tools else {}


def tool_call_constraint(tools: list[Tool]) -> StructuredOutputs:
    """A JSON object {"name": one of the tools' names, "arguments": that tool's arguments}."""
    schemas = [{"type": "object",
                "properties": {"name": {"const": tool.function.name}, "arguments": tool.function.arguments_schema},
                "required": ["name", "arguments"], "additionalProperties": False}
               for tool in tools]
    schema = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    return StructuredOutputs(json=schema, strict=any(tool.function.strict for tool in tools) or None)
