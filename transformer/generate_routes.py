"""Triton's generate extension with text: `POST /v2/models/{name}/generate` and `/generate_stream`
(server-sent events), body `{"text_input": "...", "parameters": {...}}`. A client that leaves a
stream closes the predictor's stream, which aborts its request there."""

from __future__ import annotations

from fastapi import FastAPI, Request

from serving.request_bodies import json_api_router
from serving.streaming import EventStreamResponse, server_sent_events, stream_messages
from transformer.generation import TextChunk, without_empty
from transformer.model import TextModel
from transformer.schemas import TextGenerateEvent, TextGenerateRequest, TextGenerateResponse


def add_generate_routes(app: FastAPI, model: TextModel) -> None:
    router = json_api_router(prefix="/v2/models/{model_name}", tags=["generate extension"])

    @router.post("/generate", response_model=TextGenerateResponse, response_model_exclude_unset=True)
    async def generate(model_name: str, body: TextGenerateRequest, request: Request) -> TextGenerateResponse:
        text_request = await _text_request(model, model_name, body)
        result = await model.generator.generate(text_request, dict(request.headers))
        response = TextGenerateResponse(
            model_name=model.name, text_output=result.text, finish_reason=result.finish_reason,
            prompt_tokens=result.num_prompt_tokens, completion_tokens=len(result.token_ids),
        )
        if body.parameters.logprobs:
            response.logprobs = result.logprobs
        return response

    @router.post("/generate_stream", response_class=EventStreamResponse)
    async def generate_stream(model_name: str, body: TextGenerateRequest, request: Request) -> EventStreamResponse:
        text_request = await _text_request(model, model_name, body)
        chunks = await model.open_stream(text_request, dict(request.headers))

        def to_event(chunk: TextChunk) -> dict:
            event = TextGenerateEvent(model_name=model.name, text_output=chunk.text, finish_reason=chunk.finish_reason)
            if body.parameters.logprobs:
                event.logprobs = chunk.logprobs
            return event.model_dump(exclude_unset=True)

        events = server_sent_events(stream_messages(without_empty(chunks), to_event))
        return EventStreamResponse(events)

    app.include_router(router)


async def _text_request(model: TextModel, model_name: str, body: TextGenerateRequest):
    model.check_model_name(model_name)
    model.check_admitting()
    prompt_ids = await model.prompt_ids(body.text_input)
    return await model.text_request(prompt_ids, body.parameters, logprobs=bool(body.parameters.logprobs))
