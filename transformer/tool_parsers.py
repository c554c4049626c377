"""Tool calls read out of a model's text, in the format its family was trained on: Hermes'
`<tool_call>{json}</tool_call>` (Qwen's too), Llama 3's and SmolLM's bare JSON object
`{"name": ..., "parameters" | "arguments": ...}`, Gemma's Python calls in a ```tool_code block
(or the JSON object), and the one object {"name", "arguments"}
that a forced call (tool_choice "required" or a named function) is constrained to. Text outside
the calls stays the message's content; an answer that calls a function the request did not offer
is content as a whole. read_calls and StreamedAnswer read a whole or a streamed answer, for the
chat route and the WebSocket protocol alike."""

from __future__ import annotations

import ast
import json
import logging
import re
import uuid
from dataclasses import dataclass

from serving.tool_calling import FunctionCall, ToolCall, ToolRequestFields

logger = logging.getLogger(__name__)

HERMES_START, HERMES_END = "<tool_call>", "</tool_call>"
_HERMES_CALL = re.compile(re.escape(HERMES_START) + r"(.*?)(?:" + re.escape(HERMES_END) + r"|$)", re.DOTALL)
GEMMA_START = "```tool_code"
_GEMMA_BLOCK = re.compile(re.escape(GEMMA_START) + r"\s*(.*?)(?:```|$)", re.DOTALL)


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
        return _content_before(text, HERMES_START)


def _content_before(text: str, marker: str) -> int:
    """The text's length up to where the marker starts, or to a tail that could be its start
    (held back until the next text says)."""
    start = text.find(marker)
    if start >= 0:
        return start
    for length in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-length:]):
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


class GemmaToolParser(ToolParser):
    """Gemma's: Python calls with literal keyword arguments in a ```tool_code block,
    `get_weather(city="Paris", days=2)`, one a line; without such a block, the JSON object
    (Gemma writes either, as prompted)."""

    def parse(self, text: str) -> ParsedMessage:
        calls, kept, position = [], [], 0
        for match in _GEMMA_BLOCK.finditer(text):
            block_calls = _python_calls(match.group(1))
            if not block_calls:
                continue
            calls.extend(block_calls)
            kept.append(text[position:match.start()])
            position = match.end()
        if not calls:
            return JsonToolParser().parse(text)
        kept.append(text[position:])
        return ParsedMessage(_content("".join(kept)), calls)

    def content_length(self, text: str) -> int:
        if JsonToolParser().content_length(text) == 0:
            return 0
        return _content_before(text, GEMMA_START)


def _python_calls(code: str) -> list[ToolCall]:
    """Each `name(key=literal, ...)` statement of the code as a call; none if any statement is
    something else."""
    try:
        statements = ast.parse(code.strip()).body
        calls = []
        for statement in statements:
            call = statement.value if isinstance(statement, ast.Expr) else None
            if (not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name) or call.args
                    or any(keyword.arg is None for keyword in call.keywords)):
                return []
            arguments = {keyword.arg: ast.literal_eval(keyword.value) for keyword in call.keywords}
            calls.append(_call({"name": call.func.id, "arguments": arguments}))
    except (SyntaxError, ValueError, TypeError):
        return []
    return calls


def calls_to_offered_tools(parsed: ParsedMessage, text: str, offered: set[str]) -> ParsedMessage:
    """`parsed`, or, when one of its calls names a function outside `offered`, the whole `text`
    as content (as vLLM does): the client could not run that call, and the user can still read
    what the model wrote."""
    unknown = sorted({call.function.name for call in parsed.tool_calls} - offered)
    if not unknown:
        return parsed
    logger.warning("the model called %s, which the request did not offer (it offered %s); the answer is returned "
                   "as content", ", ".join(unknown), ", ".join(sorted(offered)) or "none")
    return ParsedMessage(text, [])


# A forced call is the one JSON object {"name", "arguments"} its constraint allows.
FORCED_CALL_PARSER = JsonToolParser()


def read_calls(request: ToolRequestFields, parser: ToolParser, text: str, finish_reason: str) -> ParsedMessage | None:
    """The calls of a finished answer where the request reads them: in the constraint's format when
    tool_choice forced a call, else in the model's own (`parser`'s). None when the answer is
    content only: tool_choice "none" (or no tools), an answer cut short, or no call in it."""
    if request.effective_tool_choice == "none" or finish_reason != "stop":
        return None
    if request.forced_tools:
        parsed = FORCED_CALL_PARSER.parse(text)
    else:
        parsed = calls_to_offered_tools(parser.parse(text), text, {tool.function.name for tool in request.tools})
    return parsed if parsed.tool_calls else None


class StreamedAnswer:
    """A streamed chat answer whose calls are read: its content is sent as soon as it is surely
    content (what may be the start of a call is held back), its calls at the end, whole."""

    def __init__(self, request: ToolRequestFields, parser: ToolParser) -> None:
        self.request = request
        self.parser = parser
        self.text = ""
        self.num_sent = 0

    def add(self, text: str) -> str:
        """The content that can be sent now that `text` has come."""
        self.text += text
        end = self.num_sent
        if not self.request.forced_tools:
            end = max(end, self.parser.content_length(self.text))
        content, self.num_sent = self.text[self.num_sent:end], end
        return content

    def finish(self, text: str, finish_reason: str) -> tuple[str, list[ToolCall], str]:
        """With the answer's last `text`: the content still to send, the calls, and the finish
        reason ("tool_calls" when there are calls)."""
        self.text += text
        parsed = read_calls(self.request, self.parser, self.text, finish_reason)
        if parsed is None:
            return self.text[self.num_sent:], [], finish_reason
        return (parsed.content or "")[self.num_sent:], parsed.tool_calls, "tool_calls"


def parser_for_template(chat_template: str | None) -> ToolParser:
    """The parser of the format a chat template teaches: Hermes' tags where the template writes
    them, Gemma's where it is Gemma's (turns as <start_of_turn>), else the bare JSON object
    (Llama 3, SmolLM)."""
    if chat_template and HERMES_START in chat_template:
        return HermesToolParser()
    if chat_template and "<start_of_turn>" in chat_template:
        return GemmaToolParser()
    return JsonToolParser()
