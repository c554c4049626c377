"""Server-sent events (text/event-stream), written and read in one place: every stream this
project serves writes its events with `encode_event`, and every client of one (the transformer of
its predictor's generate_stream, the router of a transformer's OpenAI stream) reads them with
`EventParser` or `json_events`."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

# The data of the event that ends an OpenAI stream, and that event.
DONE_DATA = b"[DONE]"
DONE_EVENT = b"data: [DONE]\n\n"
_LINE_END = re.compile(rb"\r\n|\r|\n")


def encode_event(data: object) -> bytes:
    """One event whose data is `data` as compact JSON (a chunk per token is on every token's
    path: no byte more than needed). JSON text holds no line break, so it fits one data line."""
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


@dataclass(frozen=True, slots=True)
class Event:
    """An event's data (its data lines joined by a line feed), and the offset in the stream just
    past the blank line that ended it."""

    data: bytes
    end: int


class EventParser:
    """Events from a stream's bytes fed in chunks cut anywhere, as the standard reads them: lines
    end in CRLF, LF or CR; a line that starts with a colon is a comment; `data:` lines (one space
    after the colon dropped) are joined by line feeds; a blank line ends the event. Other fields
    (event, id, retry) are not used by any stream here and are skipped."""

    def __init__(self) -> None:
        self._pending = b""
        self._pending_offset = 0
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[Event]:
        """The events that `chunk` completes."""
        buffer = self._pending + chunk
        events = []
        start = 0
        for line_end in _LINE_END.finditer(buffer):
            if line_end.group() == b"\r" and line_end.end() == len(buffer):
                break  # maybe the first half of a CRLF cut by the chunk boundary
            event = self._line(buffer[start:line_end.start()], self._pending_offset + line_end.end())
            if event is not None:
                events.append(event)
            start = line_end.end()
        self._pending = buffer[start:]
        self._pending_offset += start
        return events

    def finish(self) -> list[Event]:
        """At the stream's end: its last event, if no blank line followed it."""
        end = self._pending_offset + len(self._pending)
        last = self._line(self._pending.removesuffix(b"\r"), end) if self._pending else None
        self._pending, self._pending_offset = b"", end
        last = last or self._dispatch(end)
        return [] if last is None else [last]

    def _line(self, line: bytes, end: int) -> Event | None:
        if not line:
            return self._dispatch(end)
        if line.startswith(b":"):
            return None
        name, _, value = line.partition(b":")
        if name == b"data":
            self._data.append(value.removeprefix(b" "))
        return None

    def _dispatch(self, end: int) -> Event | None:
        if not self._data:
            return None
        event = Event(b"\n".join(self._data), end)
        self._data = []
        return event


async def parse_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[Event]:
    """The events of a stream's bytes as each completes; closing this closes `chunks`."""
    parser = EventParser()
    async with aclosing(chunks):
        async for chunk in chunks:
            for event in parser.feed(chunk):
                yield event
        for event in parser.finish():
            yield event


async def json_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[object]:
    """The JSON data of each event, up to an OpenAI stream's `[DONE]` if it has one."""
    async with aclosing(parse_events(chunks)) as events:
        async for event in events:
            if event.data.strip() == DONE_DATA:
                return
            yield json.loads(event.data)
