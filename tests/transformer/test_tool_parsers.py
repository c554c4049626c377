"""The tool-call parsers on what each model family writes (Hermes and Qwen, Llama 3 and SmolLM JSON,
Gemma), and when a chat request reads calls at all."""

from __future__ import annotations

import json

from serving.openai_protocol import ChatCompletionRequest
from transformer.tool_parsers import (
    GemmaToolParser,
    HermesToolParser,
    JsonToolParser,
    calls_to_offered_tools,
    parser_for_template,
)


def _calls(parsed) -> list[tuple[str, dict]]:
    return [(call.function.name, json.loads(call.function.arguments)) for call in parsed.tool_calls]


def test_hermes_calls_with_text_around_them():
    text = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
            '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>')
    parsed = HermesToolParser().parse(text)
    assert _calls(parsed) == [("get_weather", {"city": "Paris"}), ("get_time", {})]
    assert parsed.content.strip() == "Let me check."
    assert all(call.id.startswith("call_") and call.type == "function" for call in parsed.tool_calls)


def test_hermes_without_calls_or_with_a_broken_one_is_content():
    assert HermesToolParser().parse("Just text.").content == "Just text."
    broken = "<tool_call>{not json</tool_call>"
    parsed = HermesToolParser().parse(broken)
    assert parsed.tool_calls == [] and parsed.content == broken


def test_hermes_reads_an_unclosed_last_call():
    parsed = HermesToolParser().parse('<tool_call>{"name": "f", "arguments": {"x": 1}}')
    assert _calls(parsed) == [("f", {"x": 1})] and parsed.content is None


def test_hermes_content_length_holds_back_a_possible_tag():
    parser = HermesToolParser()
    assert parser.content_length("Hello") == 5
    assert parser.content_length("Hello <tool") == 6
    assert parser.content_length("Hi <tool_call>{") == 3
    assert parser.content_length("a < b") == 5


def test_llama_json_parameters_and_arguments():
    parsed = JsonToolParser().parse('{"name": "get_weather", "parameters": {"city": "Lima"}}')
    assert _calls(parsed) == [("get_weather", {"city": "Lima"})] and parsed.content is None
    several = JsonToolParser().parse('<|python_tag|>{"name": "a", "arguments": {}}; {"name": "b", "arguments": {"n": 2}}')
    assert _calls(several) == [("a", {}), ("b", {"n": 2})]
    listed = JsonToolParser().parse('[{"name": "a", "arguments": {}}]')
    assert _calls(listed) == [("a", {})]


def test_llama_json_other_answers_are_content():
    for text in ("The weather is fine.", '{"answer": 42}', '{"name": "f", "arguments": {} trailing'):
        parsed = JsonToolParser().parse(text)
        assert parsed.tool_calls == [] and parsed.content == text
    assert JsonToolParser().content_length("  {") == 0
    assert JsonToolParser().content_length("Sure") == 4


def test_gemma_tool_code_blocks_and_json():
    text = 'I will look.\n```tool_code\nget_weather(city="Oslo", days=2)\nget_time(zone="UTC")\n```\nDone.'
    parsed = GemmaToolParser().parse(text)
    assert _calls(parsed) == [("get_weather", {"city": "Oslo", "days": 2}), ("get_time", {"zone": "UTC"})]
    assert parsed.content == "I will look.\n\nDone."
    assert _calls(GemmaToolParser().parse('{"name": "f", "parameters": {"a": [1, 2]}}')) == [("f", {"a": [1, 2]})]
    for text in ("```tool_code\nimport os\n```", "```tool_code\nf(x)\n```", "```tool_code\nf(**kw)\n```",
                 "```tool_code\nf(a=open('x'))\n```", "Plain text."):
        parsed = GemmaToolParser().parse(text)
        assert parsed.tool_calls == [] and parsed.content == text
    assert GemmaToolParser().content_length("See ```tool") == 4
    assert GemmaToolParser().content_length(" {") == 0


def test_parser_for_template():
    assert isinstance(parser_for_template("{{ '<tool_call>' }}"), HermesToolParser)
    assert isinstance(parser_for_template("{{ '<start_of_turn>user' }}"), GemmaToolParser)
    assert isinstance(parser_for_template("{{ messages }}"), JsonToolParser)
    assert isinstance(parser_for_template(None), JsonToolParser)


def test_without_tools_nothing_is_read_as_a_call():
    messages = [{"role": "user", "content": "x"}]
    assert ChatCompletionRequest(model="m", messages=messages, tool_choice="auto").effective_tool_choice == "none"
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert ChatCompletionRequest(model="m", messages=messages, tools=tools).effective_tool_choice == "auto"


def test_a_call_to_a_function_not_offered_is_content(caplog):
    text = '<tool_call>{"name": "get_weather", "arguments": {}}</tool_call><tool_call>{"name": "rm_rf", "arguments": {}}'
    parsed = HermesToolParser().parse(text)
    kept = calls_to_offered_tools(parsed, text, {"get_weather"})
    assert kept.tool_calls == [] and kept.content == text
    assert "rm_rf" in caplog.text and "did not offer" in caplog.text
    assert calls_to_offered_tools(parsed, text, {"get_weather", "rm_rf"}) is parsed
