"""Token usage read from an OpenAI stream as it passes through the gateway. The gateway asks the
target for usage in every chunk (vLLM's `stream_options.continuous_usage_stats`, which our
transformer serves), so a stream cut short - the client left, the target failed - still bills
exactly the tokens it delivered. What the client did not ask for is taken back out: the usage on
each chunk unless it asked for continuous usage, and the closing usage chunk unless it asked for
`include_usage`. Only events that carry usage are decoded; the others pass as they came."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from serving.sse import DONE_DATA, DONE_EVENT, EventParser, encode_event

USAGE_MARK = b'"usage"'
ERROR_MARK = b'"error"'


@dataclass(frozen=True, slots=True)
class StreamOptions:
    """What the client asked of the stream's usage."""

    include_usage: bool
    continuous_usage: bool

    @classmethod
    def of(cls, body: dict) -> StreamOptions:
        options = body.get("stream_options")
        options = options if isinstance(options, dict) else {}
        include = options.get("include_usage") is True
        return cls(include, include and options.get("continuous_usage_stats") is True)


def ask_for_usage(body: dict) -> dict:
    """The request body with usage on every chunk of its stream."""
    return {**body, "stream_options": {"include_usage": True, "continuous_usage_stats": True}}


class StreamUsage:
    """Feeds a stream's bytes through; `observe(prompt, completion, model)` gets each usage seen,
    `final` turns true once the closing usage chunk (or the end of the stream) has been fed, and
    `failed` once an error event has."""

    def __init__(self, asked: StreamOptions, observe: Callable[[int, int, str | None], None]) -> None:
        self.asked = asked
        self.observe = observe
        self.parser = EventParser()
        self.final = False
        self.failed = False

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to pass on for `chunk`: the events it completes, each as it came or with the
        usage the client did not ask for taken out. The part of an event cut by the chunk's end
        waits for the rest (a client cannot use half an event)."""
        return b"".join(self._passed_on(event.data) for event in self.parser.feed(chunk))

    def _passed_on(self, data: bytes) -> bytes:
        if data == DONE_DATA:
            self.final = True
            return DONE_EVENT
        if ERROR_MARK in data:
            self.failed = self.failed or _is_error(data)
        if USAGE_MARK in data:
            rewritten = self._read_usage(data)
            if rewritten is not None:
                return rewritten
        # Every stream here is written by serving.sse.encode_event: one data line per event.
        return b"data: " + data + b"\n\n"

    def _read_usage(self, data: bytes) -> bytes | None:
        """The event rewritten for the client (b"" to drop it), or None to pass it unchanged."""
        try:
            event = json.loads(data)
        except ValueError:
            return None
        usage = event.get("usage") if isinstance(event, dict) else None
        if not isinstance(usage, dict):
            return None
        self.observe(_int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens")), event.get("model"))
        closing = event.get("choices") == []
        if closing:
            self.final = True
            return None if self.asked.include_usage else b""
        if self.asked.continuous_usage:
            return None
        del event["usage"]
        return encode_event(event)


def _is_error(data: bytes) -> bool:
    """An OpenAI error event (a stream that failed part-way ends with one)."""
    try:
        event = json.loads(data)
    except ValueError:
        return False
    return isinstance(event, dict) and "error" in event


def _int(value: object) -> int:
    return value if isinstance(value, int) and value >= 0 else 0
