"""A stream's usage read as its bytes pass, however they are cut: the meter gets the running
totals, the client gets the stream without the usage it did not ask for, and a stream cut short
has reported what it delivered."""

from __future__ import annotations

import json

import pytest

from router.gateway.metering import Meter
from router.gateway.stream_usage import StreamOptions, StreamUsage, ask_for_usage
from serving.sse import DONE_EVENT, encode_event

NOT_ASKED = StreamOptions(include_usage=False, continuous_usage=False)
FINAL_ONLY = StreamOptions(include_usage=True, continuous_usage=False)
CONTINUOUS = StreamOptions(include_usage=True, continuous_usage=True)


def chunk(content: str, usage: dict | None, model: str = "small-7b") -> bytes:
    event = {"id": "cmpl-1", "object": "chat.completion.chunk", "model": model,
             "choices": [{"index": 0, "delta": {"content": content}}]}
    return encode_event(event if usage is None else {**event, "usage": usage})


def usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


CLOSING = encode_event({"id": "cmpl-1", "model": "small-7b", "choices": [], "usage": usage(12, 3)})
# A stream with continuous usage (running totals), then its closing usage chunk and [DONE].
STREAM = b"".join([chunk("Hel", usage(12, 1)), chunk("lo", usage(12, 2)), chunk("!", usage(12, 3)), CLOSING,
                   DONE_EVENT])


def passed_on(options: StreamOptions, stream: bytes, cut: int) -> tuple[bytes, Meter, StreamUsage]:
    meter = Meter(ledger=None, request_id="r1", tenant="acme", endpoint="chat.completions", model="auto")
    reader = StreamUsage(options, meter.observe)
    out = b"".join(reader.feed(stream[offset:offset + cut]) for offset in range(0, len(stream), cut))
    return out, meter, reader


@pytest.mark.parametrize("cut", [1, 3, 7, 64, len(STREAM)])
def test_usage_is_read_from_a_stream_cut_anywhere(cut):
    out, meter, reader = passed_on(CONTINUOUS, STREAM, cut)
    assert out == STREAM
    assert (meter.prompt_tokens, meter.completion_tokens, meter.model) == (12, 3, "small-7b")
    assert reader.final and not reader.failed


def test_the_client_gets_only_the_usage_it_asked_for():
    out, meter, _ = passed_on(NOT_ASKED, STREAM, 5)
    assert out == b"".join([chunk("Hel", None), chunk("lo", None), chunk("!", None), DONE_EVENT])
    assert meter.completion_tokens == 3
    out, _, _ = passed_on(FINAL_ONLY, STREAM, 5)
    assert out == b"".join([chunk("Hel", None), chunk("lo", None), chunk("!", None), CLOSING, DONE_EVENT])


def test_a_stream_cut_short_reports_what_it_delivered():
    delivered = len(chunk("Hel", usage(12, 1)))
    out, meter, reader = passed_on(NOT_ASKED, STREAM[:delivered + 20], 4)
    assert out == chunk("Hel", None)  # the half event waits for its end, which never comes
    assert (meter.prompt_tokens, meter.completion_tokens) == (12, 1) and not reader.final


def test_an_error_event_marks_the_stream_failed():
    error = encode_event({"error": {"message": "the small model failed mid-stream", "type": "server_error"}})
    out, _, reader = passed_on(NOT_ASKED, chunk("Hel", usage(12, 1)) + error + DONE_EVENT, 16)
    assert reader.failed and reader.final and out.endswith(error + DONE_EVENT)


def test_odd_events_pass_and_count_nothing():
    not_json = b'data: {not json, "usage"\n\n'
    odd = not_json + encode_event({"usage": {"prompt_tokens": "many"}, "choices": [1]})
    out, meter, _ = passed_on(NOT_ASKED, odd, 8)
    assert out == not_json + encode_event({"choices": [1]})
    assert (meter.prompt_tokens, meter.completion_tokens) == (0, 0)


def test_the_target_is_asked_for_usage_on_every_chunk():
    body = {"model": "auto", "stream": True, "stream_options": {"include_usage": False}}
    asked = ask_for_usage(body)
    assert asked["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert StreamOptions.of(body) == NOT_ASKED and body["stream_options"] == {"include_usage": False}
    assert StreamOptions.of(json.loads('{"stream_options": {"include_usage": true, "continuous_usage_stats": true}}')) \
        == CONTINUOUS
