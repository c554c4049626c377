"""What a request reserves against its tenant's token limits when it is admitted: its prompt's
tokens (counted as the router counts them for routing: router.features.TokenCounter) plus the
most it may generate, max_tokens for every choice. The reservation is settled to the real usage
when the request ends, so an estimate off by some tokens costs the limit only that request's error.
Read from the raw JSON body: the route validates the body itself, after admission."""

from __future__ import annotations

from router.features import TokenCounter

# The completion routes' own default max_tokens (serving/openai_protocol.py, as OpenAI's).
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


def reserved_tokens(chat: bool, body: dict, counter: TokenCounter, unbounded_max_tokens: int) -> int:
    """Prompt tokens + max_tokens x choices. A chat without max_tokens may generate up to the
    model's context, which the router does not know: it reserves `unbounded_max_tokens`."""
    if chat:
        prompt_tokens = counter.count(chat_text(body.get("messages")))
        limit = _positive_int(body.get("max_completion_tokens")) or _positive_int(body.get("max_tokens"))
        max_tokens = limit or unbounded_max_tokens
    else:
        prompt_tokens = _prompt_tokens(body.get("prompt"), counter)
        max_tokens = _positive_int(body.get("max_tokens"), COMPLETIONS_DEFAULT_MAX_TOKENS) or unbounded_max_tokens
    choices = max(_positive_int(body.get("n"), 1) or 1, _positive_int(body.get("best_of"), 1) or 1)
    return prompt_tokens + max_tokens * choices


def chat_text(messages: object) -> str:
    """The text of a chat's messages (string contents and text parts), one message per line."""
    if not isinstance(messages, list):
        return ""
    lines = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            lines.append(content)
        elif isinstance(content, list):
            lines.extend(part["text"] for part in content
                         if isinstance(part, dict) and isinstance(part.get("text"), str))
    return "\n".join(lines)


def prompt_text(chat: bool, body: dict) -> str | None:
    """The prompt as one text (a chat's messages one per line, each after its role); None for a
    prompt of token ids or of several texts."""
    if not chat:
        prompt = body.get("prompt")
        return prompt if isinstance(prompt, str) else None
    messages = body.get("messages")
    if not isinstance(messages, list) or not all(isinstance(message, dict) for message in messages):
        return None
    return "\n".join(f"{message.get('role')}: {chat_text([message])}" for message in messages)


def _prompt_tokens(prompt: object, counter: TokenCounter) -> int:
    """A completion's prompt: a text, a list of texts, token ids, or a list of token-id lists."""
    if isinstance(prompt, str):
        return counter.count(prompt)
    if not isinstance(prompt, list):
        return 0
    if all(isinstance(item, int) for item in prompt):
        return len(prompt)
    return sum(_prompt_tokens(item, counter) for item in prompt if isinstance(item, (str, list)))


def _positive_int(value: object, default: int | None = None) -> int | None:
    if value is None:
        return default
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
