"""serving/sse.py: what the encoder writes the parser reads back, however the bytes are cut into
chunks; and the parser reads what other servers write (comments, multi-line data, CRLF or CR
line ends, other fields, a last event without its blank line)."""

from __future__ import annotations

import asyncio
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from serving.sse import DONE_EVENT, EventParser, encode_event, json_events, parse_events

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=12,
)


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    return [data[start:end] for start, end in zip([0, *points], [*points, len(data)])]


async def _chunks(chunks: list[bytes]):
    for chunk in chunks:
        yield chunk


def _collect(iterator) -> list:
    async def collect() -> list:
        return [item async for item in iterator]

    return asyncio.run(collect())


def _parse(stream: bytes, cuts: list[int] = ()) -> list[bytes]:
    parser = EventParser()
    events = [event for chunk in _cut(stream, list(cuts)) for event in parser.feed(chunk)]
    return [event.data for event in events + parser.finish()]


@settings(max_examples=200, deadline=None)
@given(st.lists(json_values, max_size=5), st.lists(st.integers(min_value=0), max_size=8))
def test_what_is_encoded_is_parsed_back_wherever_the_stream_is_cut(values: list, cuts: list[int]) -> None:
    stream = b"".join(encode_event(value) for value in values) + DONE_EVENT
    assert _collect(json_events(_chunks(_cut(stream, cuts)))) == values


@settings(max_examples=200, deadline=None)
# An SSE stream is UTF-8: lone surrogates (category Cs) cannot be in it.
@given(st.lists(st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)),
                        max_size=8), min_size=1, max_size=4),
       st.sampled_from([b"\n", b"\r\n", b"\r"]), st.lists(st.integers(min_value=0), max_size=8))
def test_multi_line_data_with_any_line_end_and_cut(lines: list[str], line_end: bytes, cuts: list[int]) -> None:
    stream = b"".join(b"data: " + line.encode() + line_end for line in lines) + line_end
    assert _parse(stream, cuts) == ["\n".join(lines).encode()]


def test_event_ends_are_offsets_in_the_stream() -> None:
    stream = encode_event({"a": 1}) + b": keep-alive\r\n\r\n" + encode_event([2])
    parser = EventParser()
    ends = [event.end for chunk in _cut(stream, [3, 17, 30]) for event in parser.feed(chunk)]
    assert ends == [len(encode_event({"a": 1})), len(stream)]


def test_comments_and_other_fields_are_skipped() -> None:
    stream = b": a comment\nevent: message\nid: 7\nretry: 10\ndata:{\"x\": 1}\n\n:\n\n"
    assert _parse(stream) == [b'{"x": 1}']


def test_a_last_event_without_its_blank_line_is_read_at_the_end() -> None:
    assert _parse(b"data: 1\n\ndata: 2") == [b"1", b"2"]
    assert _parse(b"data: 1\n\ndata: 2\r") == [b"1", b"2"]
    assert _parse(b"data: 1\n\ndata: 2\n") == [b"1", b"2"]


def test_a_cr_cut_from_its_lf_is_one_line_end() -> None:
    assert _parse(b"data: 1\r\n\r\ndata: 2\r\n\r\n", [8, 9, 10]) == [b"1", b"2"]


def test_json_events_stop_at_done() -> None:
    stream = encode_event({"n": 1}) + DONE_EVENT + encode_event({"n": 2})
    assert _collect(json_events(_chunks([stream]))) == [{"n": 1}]


def test_encoded_events_are_compact_json_on_one_line() -> None:
    assert encode_event({"text": "a\nb", "n": [1, 2]}) == b'data: {"text":"a\\nb","n":[1,2]}\n\n'
    assert json.loads(encode_event("\u2028")[6:]) == "\u2028"


def test_parse_events_closes_its_stream() -> None:
    closed = []

    async def chunks():
        try:
            yield encode_event(1)
            yield encode_event(2)
        finally:
            closed.append(True)

    async def first() -> bytes:
        events = parse_events(chunks())
        event = await anext(events)
        await events.aclose()
        return event.data

    assert asyncio.run(first()) == b"1" and closed == [True]
