"""Triton's generate extension, which KServe dropped: `POST /v2/models/{name}/generate` and
`/generate_stream` (server-sent events, one per engine step). A stream's response starts once
its request is admitted, before the first token. A client that leaves a stream aborts its
request: ClientConnectionMiddleware cancels the response on disconnect, and leaving the
engine's stream aborts it."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from runtime.engine import RequestOutput
from runtime.errors import translate_errors
from runtime.model import LLMModel
from runtime.schemas import GenerateRequest, GenerateResponse
from serving.direct_routes import DirectRoute, add_direct_routes
from serving.request_bodies import json_api_router
from serving.streaming import EventStreamResponse, server_sent_events, stream_messages


def add_generate_routes(app: FastAPI, model: LLMModel) -> None:
    router = json_api_router(prefix="/v2/models/{model_name}", tags=["generate extension"])

    @router.post("/generate", response_model=GenerateResponse, response_model_exclude_unset=True)
    async def generate(model_name: str, body: GenerateRequest) -> GenerateResponse:
        model.check_model_name(model_name)
        return await generate_response(model, body)

    @router.post("/generate_stream", response_class=EventStreamResponse)
    async def generate_stream(model_name: str, body: GenerateRequest) -> EventStreamResponse:
        model.check_model_name(model_name)
        return await generate_stream_response(model, body)

    app.include_router(router)
    # The transformer's every request comes here, and its time to first token waits on it:
    # served ahead of FastAPI's router (whose route table KServe's routes fill) for this model.
    prefix = f"/v2/models/{model.name}"
    add_direct_routes(app, {
        f"{prefix}/generate": DirectRoute(GenerateRequest, lambda body, _: generate_json_response(model, body)),
        f"{prefix}/generate_stream": DirectRoute(GenerateRequest, lambda body, _: generate_stream_response(model, body)),
    })


async def generate_response(model: LLMModel, body: GenerateRequest) -> GenerateResponse:
    with translate_errors(model.name):
        params = body.parameters.to_sampling_params()
    output = await model.generate(body.input_ids, params, body.parameters.engine_priority)
    response = GenerateResponse(
        model_name=model.name, output_ids=output.output_token_ids, finish_reason=output.finish_reason
    )
    if params.logprobs:
        response.logprobs = output.logprobs
    if params.top_logprobs:
        response.top_logprobs = output.top_logprobs
    return response


async def generate_stream_response(model: LLMModel, body: GenerateRequest) -> EventStreamResponse:
    with translate_errors(model.name):
        params = body.parameters.to_sampling_params()
    outputs = await model.open_stream(body.input_ids, params, body.parameters.engine_priority)

    def to_event(output: RequestOutput) -> dict:
        # GenerateStreamEvent's fields as a plain dict (an event per step is on every token's
        # path); logprobs only when asked for, as its dump without unset fields would be.
        event = {"model_name": model.name, "output_ids": output.new_token_ids, "finish_reason": output.finish_reason}
        if params.logprobs:
            event["logprobs"] = output.new_logprobs
        if params.top_logprobs:
            event["top_logprobs"] = output.top_logprobs[len(output.top_logprobs) - len(output.new_token_ids):]
        return event

    events = server_sent_events(stream_messages(outputs, to_event))
    return EventStreamResponse(events)


async def generate_json_response(model: LLMModel, body: GenerateRequest) -> JSONResponse:
    """generate_response as FastAPI serializes it (response_model_exclude_unset)."""
    response = await generate_response(model, body)
    return JSONResponse(response.model_dump(mode="json", exclude_unset=True))

