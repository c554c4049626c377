"""A stream through the transformer opens once the predictor has admitted its request, not at its
first token: the predictor answers a stream's head at admission, so the transformer's own
response starts while the prompt is prefilled. A predictor that refuses still gets its status
code through. Against a scripted predictor on 127.0.0.1 that holds the first token back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from serving.errors import ServiceUnavailable
from transformer.model import TextModel
from transformer.predictor_client import PredictorSettings
from transformer.schemas import TextSamplingFields
from transformer.tokenizer import TextTokenizer
from tests.serving.test_http_client import Handler, ScriptedServer
from tests.servers import MODEL_NAME

STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
EVENTS = (b'data: {"model_name":"llm","output_ids":[5]}\n\n',
          b'data: {"model_name":"llm","output_ids":[6],"finish_reason":"length"}\n\n')


@asynccontextmanager
async def text_model(tokenizer_dir, handler: Handler) -> AsyncIterator[TextModel]:
    scripted = ScriptedServer(handler)
    server = await asyncio.start_server(scripted.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    model = TextModel(MODEL_NAME, TextTokenizer(tokenizer_dir), PredictorSettings(host=f"127.0.0.1:{port}"))
    model.load()
    try:
        yield model
    finally:
        await model.generator.predictor.close()
        server.close()


async def test_a_stream_opens_when_the_predictor_admits_it(demo_dir):
    first_token = asyncio.Event()

    async def admit_then_hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(STREAM_HEAD)
        await writer.drain()
        await first_token.wait()
        for event in EVENTS:
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with text_model(demo_dir, admit_then_hold) as model:
        request = await model.text_request([1, 2, 3], TextSamplingFields(max_tokens=2), logprobs=False)
        # Returns while the predictor still holds every token back.
        chunks = await asyncio.wait_for(model.open_stream(request, {}), 5.0)
        first_token.set()
        received = [chunk async for chunk in chunks]
    assert [chunk.token_ids for chunk in received] == [[], [5], [6]]
    assert received[0].is_empty and not any(chunk.is_empty for chunk in received[1:])
    assert received[-1].finish_reason == "length"


async def test_a_refused_stream_still_fails_with_its_status(demo_dir):
    async def overloaded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = b'{"error":"the waiting queue is full"}'
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()

    async with text_model(demo_dir, overloaded) as model:
        request = await model.text_request([1, 2, 3], TextSamplingFields(max_tokens=2), logprobs=False)
        with pytest.raises(ServiceUnavailable, match="queue is full"):
            await model.open_stream(request, {})
