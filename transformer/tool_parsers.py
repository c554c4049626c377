"""Tool calls read out of a model's text, in the format its family was trained on: Hermes'
`<tool_call>{json}</tool_call>` (Qwen's too), Llama 3's and SmolLM's bare JSON object
`{"name": ..., "parameters" | "arguments": ...}`, and the one object {"name", "arguments"}
that a forced call (tool_choice "required" or a named function) is constrained to. Text outside
the calls stays the message's content."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

from serving.tool_calling import FunctionCall, ToolCall

HERMES_START, HERMES_END = "<tool_call>", "</tool_call>"
_HERMES_CALL = re.compile(re.escape(HERMES_START) + r"(.*?)(?:" + re.escape(HERMES_END) + r"|$)", re.DOTALL)


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass(slots=True)
class ParsedMessage:
    """A model's text split into its content (None when only calls were written) and calls."""

    content: str | None
    tool_calls: list[ToolCall]


def _call(value: object) -> ToolCall | None:
    """A call from its decoded JSON: {"name", "arguments" (or Llama's "parameters")}; None for
    anything else."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        text = arguments
    else:
        text = json.dumps(arguments, ensure_ascii=False)
    return ToolCall(id=new_call_id(), function=FunctionCall(name=value["name"], arguments=text))


def _content(text: str) -> str | None:
    return text if text.strip() else None


class ToolParser:
    """Reads one family's format. `content_length` says how much of a text still being written
    is surely content, so that a stream sends that and holds back what may turn out a call."""

    def parse(self, text: str) -> ParsedMessage:
        raise NotImplementedError

    def content_length(self, text: str) -> int:
        """How many of the text's leading characters are content whatever comes next."""
        raise NotImplementedError


class HermesToolParser(ToolParser):
    """`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, any number of them, with text
    around them. A call that does not decode stays in the content, as the model wrote it."""

    def parse(self, text: str) -> ParsedMessage:
        calls, kept, position = [], [], 0
        for match in _HERMES_CALL.finditer(text):
            try:
                call = _call(json.loads(match.group(1)))
            except ValueError:
                call = None
            if call is None:
                continue
            calls.append(call)
            kept.append(text[position:match.start()])
            position = match.end()
        kept.append(text[position:])
        return ParsedMessage(_content("".join(kept)), calls)

    def content_length(self, text: str) -> int:
        start = text.find(HERMES_START)
        if start >= 0:
            return start
        # A tail that could be the start of the tag is held back until the next text says.
        for length in range(min(len(HERMES_START) - 1, len(text)), 0, -1):
            if HERMES_START.startswith(text[-length:]):
                return len(text) - length
        return len(text)


class JsonToolParser(ToolParser):
    """Llama 3's and SmolLM's: the whole answer is one call as a JSON object, or a list of
    them (`;`-separated objects too, as Llama 3.2 writes several); any other answer is content.
    Also reads the {"name", "arguments"} object a forced call is constrained to."""

    def parse(self, text: str) -> ParsedMessage:
        stripped = text.strip()
        if stripped.startswith("<|python_tag|>"):
            stripped = stripped.removeprefix("<|python_tag|>").strip()
        calls = self._calls(stripped)
        if calls is None:
            return ParsedMessage(_content(text), [])
        return ParsedMessage(None, calls)

    def _calls(self, text: str) -> list[ToolCall] | None:
        if not text.startswith(("{", "[")):
            return None
        decoder, values, position = json.JSONDecoder(), [], 0
        try:
            while position < len(text):
                value, end = decoder.raw_decode(text, position)
                values.extend(value if isinstance(value, list) else [value])
                position = end
                while position < len(text) and text[position] in " \t\r\n;":
                    position += 1
        except ValueError:
            return None
        calls = [_call(value) for value in values]
        return calls if calls and all(call is not None for call in calls) else None

    def content_length(self, text: str) -> int:
        # Until the first visible character, it may be a call; after one that is not a brace, it
        # is content.
        stripped = text.lstrip()
        if not stripped or stripped[0] in "{[<":
            return 0
        return len(text)


def parser_for_template(chat_template: str | None) -> ToolParser:
    """The parser of the format a chat template teaches: Hermes' tags where the template writes
    them, else the bare JSON object (Llama 3, SmolLM)."""
    if chat_template and HERMES_START in chat_template:
        return HermesToolParser()
    return JsonToolParser()
