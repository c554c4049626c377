"""Tools and tool messages reach the chat template as templates that know tools read them
(Qwen's Hermes-style template, cut down): the tools' definitions, an assistant's calls with
their arguments as an object, and a tool message's answer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from runtime.demo import build_demo_model
from serving.openai_protocol import ChatMessage
from transformer.model import _conversation_turn
from transformer.tokenizer import TextTokenizer

HERMES_TEMPLATE = (
    "{% if tools %}<tools>{% for tool in tools %}{{ tool | tojson }}{% endfor %}</tools>\n{% endif %}"
    "{% for message in messages %}"
    "{% if message.role == 'tool' %}<tool_response id={{ message.tool_call_id }}>{{ message.content }}</tool_response>\n"
    "{% elif message.tool_calls %}{% for call in message.tool_calls %}"
    "<tool_call>{\"name\": \"{{ call.function.name }}\", \"arguments\": {{ call.function.arguments | tojson }}}</tool_call>\n"
    "{% endfor %}{% else %}{{ message.role }}: {{ message.content }}\n{% endif %}{% endfor %}"
)


def _tokenizer_with_template(directory: Path) -> TextTokenizer:
    demo = build_demo_model("small")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(demo / name, directory / name)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    (directory / "tokenizer_config.json").write_text(json.dumps(config | {"chat_template": HERMES_TEMPLATE}))
    return TextTokenizer(directory, max_model_len=4096)


def test_tools_calls_and_answers_are_rendered(tmp_path):
    tokenizer = _tokenizer_with_template(tmp_path)
    messages = [ChatMessage.model_validate(message) for message in [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
                                              "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Snow"},
    ]]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    ids = tokenizer.encode_chat([_conversation_turn(message) for message in messages], tools=tools)
    text = tokenizer.decode(ids)
    assert '<tools>{"type": "function", "function": {"name": "get_weather"' in text
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>' in text
    assert "<tool_response id=call_1>Snow</tool_response>" in text
    assert "user: Weather?" in text
