"""Triton's generate extension, which KServe dropped: `POST /v2/models/{name}/generate` and
`/generate_stream` (server-sent events, one per engine step). A client that leaves a stream
aborts its request: Starlette cancels the response's iteration on disconnect, and leaving the
engine's stream aborts it."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from kserve.errors import ModelNotFound

from runtime.engine import RequestOutput
from runtime.errors import translate_errors
from runtime.model import LLMModel
from runtime.schemas import GenerateRequest, GenerateResponse, GenerateStreamEvent
from serving.streaming import EventStreamResponse, server_sent_events, stream_messages


def add_generate_routes(app: FastAPI, model: LLMModel) -> None:
    router = APIRouter(prefix="/v2/models/{model_name}", tags=["generate extension"])

    @router.post("/generate", response_model=GenerateResponse, response_model_exclude_unset=True)
    async def generate(model_name: str, body: GenerateRequest) -> GenerateResponse:
        _check_model_name(model, model_name)
        with translate_errors(model.name):
            params = body.parameters.to_sampling_params()
        output = await model.generate(body.input_ids, params)
        response = GenerateResponse(
            model_name=model.name, output_ids=output.output_token_ids, finish_reason=output.finish_reason
        )
        if params.logprobs:
            response.logprobs = output.logprobs
        if params.top_logprobs:
            response.top_logprobs = output.top_logprobs
        return response

    @router.post("/generate_stream", response_class=EventStreamResponse)
    async def generate_stream(model_name: str, body: GenerateRequest) -> EventStreamResponse:
        _check_model_name(model, model_name)
        with translate_errors(model.name):
            params = body.parameters.to_sampling_params()
        outputs = await model.open_stream(body.input_ids, params)

        def to_event(output: RequestOutput) -> dict:
            event = GenerateStreamEvent(
                model_name=model.name, output_ids=output.new_token_ids, finish_reason=output.finish_reason
            )
            if params.logprobs:
                event.logprobs = output.new_logprobs
            if params.top_logprobs:
                event.top_logprobs = output.top_logprobs[len(output.top_logprobs) - len(output.new_token_ids):]
            return event.model_dump(exclude_unset=True)

        events = server_sent_events(stream_messages(outputs, to_event))
        return EventStreamResponse(events)

    app.include_router(router)


def _check_model_name(model: LLMModel, model_name: str) -> None:
    if model_name != model.name:
        raise ModelNotFound(model_name)

