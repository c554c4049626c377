"""The OpenAI-compatible surface, one for every component that serves it (the transformer answers
it, the router's edge routes it on): its paths, the interface a component implements to answer
them (OpenAIHandler), and `mount_openai_routes`, which serves them on an app with every failure
answered in OpenAI's error shape. KServe's own OpenAI layer needs vLLM, so these routes are ours.
A completion's response names the request fields that were accepted and ignored
(openai_protocol.BENIGN_FIELDS) in its `x-ignored-fields` header."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Mapping
from typing import Protocol, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from serving.direct_routes import DirectRoute, add_direct_routes
from serving.errors import check_model_name, openai_error_response
from serving.openai_protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    DetokenizeResponse,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
)
from serving.request_bodies import json_api_router

OPENAI_PREFIX = "/openai/v1"
MODELS_PATH = f"{OPENAI_PREFIX}/models"
MODEL_PATH = f"{OPENAI_PREFIX}/models/{{model_name}}"
COMPLETIONS_PATH = f"{OPENAI_PREFIX}/completions"
CHAT_COMPLETIONS_PATH = f"{OPENAI_PREFIX}/chat/completions"
# OpenAI's Files and Batch APIs (the router serves them: router/batch/).
FILES_PATH = f"{OPENAI_PREFIX}/files"
BATCHES_PATH = f"{OPENAI_PREFIX}/batches"
# Background requests (a completion submitted with `"background": true`), served by the router.
BACKGROUND_PATH = f"{OPENAI_PREFIX}/background"
# vLLM's token routes, at its paths: what a prompt costs, ids for logit_bias or stop_token_ids.
TOKENIZE_PATH = "/tokenize"
DETOKENIZE_PATH = "/detokenize"
# Who owns every model card served here.
MODEL_OWNER = "kserve-llm-runtime"
IGNORED_FIELDS_HEADER = "x-ignored-fields"

Answer = TypeVar("Answer")


class OpenAIHandler(Protocol):
    """What a component answers the OpenAI routes with. `headers` are the request's (for
    authorization and tracing headers to pass on); a failure may be raised as our or KServe's
    error types, and is answered in OpenAI's shape. The model routes answer from `model_cards`."""

    def model_cards(self) -> list[ModelCard]: ...

    async def completions(self, body: CompletionRequest, headers: Mapping[str, str]) -> Response: ...

    async def chat_completions(self, body: ChatCompletionRequest, headers: Mapping[str, str]) -> Response: ...

    async def tokenize(self, body: TokenizeRequest, headers: Mapping[str, str]) -> TokenizeResponse | Response: ...

    async def detokenize(self, body: DetokenizeRequest,
                         headers: Mapping[str, str]) -> DetokenizeResponse | Response: ...


def mount_openai_routes(app: FastAPI, handler: OpenAIHandler) -> None:
    """The OpenAI routes on `app`, answered by `handler`. The completion routes, on every
    streamed token's path, are also served ahead of FastAPI's router (serving/direct_routes.py);
    every route decodes a large body off the event loop (serving/request_bodies.py)."""
    router = json_api_router(tags=["OpenAI"])
    # The handler's module logger: a child of its component's, which is the one configured.
    logger = logging.getLogger(type(handler).__module__)

    @router.get(MODELS_PATH, response_model=ModelList)
    async def list_models() -> ModelList | JSONResponse:
        return await _answered(_model_list(handler))

    @router.get(MODEL_PATH, response_model=ModelCard)
    async def get_model(model_name: str) -> ModelCard | JSONResponse:
        return await _answered(_model_card(handler, model_name))

    async def answer_completions(body: CompletionRequest, headers: Mapping[str, str]) -> Response:
        return _naming_ignored_fields(await _answered(handler.completions(body, headers)), body, logger)

    async def answer_chat_completions(body: ChatCompletionRequest, headers: Mapping[str, str]) -> Response:
        return _naming_ignored_fields(await _answered(handler.chat_completions(body, headers)), body, logger)

    @router.post(COMPLETIONS_PATH)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await answer_completions(body, request.headers)

    @router.post(CHAT_COMPLETIONS_PATH)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await answer_chat_completions(body, request.headers)

    @router.post(TOKENIZE_PATH, response_model=TokenizeResponse)
    async def tokenize(body: TokenizeRequest, request: Request) -> TokenizeResponse | Response:
        return await _answered(handler.tokenize(body, request.headers))

    @router.post(DETOKENIZE_PATH, response_model=DetokenizeResponse)
    async def detokenize(body: DetokenizeRequest, request: Request) -> DetokenizeResponse | Response:
        return await _answered(handler.detokenize(body, request.headers))

    app.include_router(router)
    add_direct_routes(app, {COMPLETIONS_PATH: DirectRoute(CompletionRequest, answer_completions),
                            CHAT_COMPLETIONS_PATH: DirectRoute(ChatCompletionRequest, answer_chat_completions)})


async def _model_list(handler: OpenAIHandler) -> ModelList:
    return ModelList(data=handler.model_cards())


async def _model_card(handler: OpenAIHandler, name: str) -> ModelCard:
    cards = {card.id: card for card in handler.model_cards()}
    check_model_name(name, cards)
    return cards[name]


# The sets of ignored fields already logged (subsets of BENIGN_FIELDS, so few): each is logged once,
# since an SDK may send the same ones with every request.
_logged_ignored_fields: set[tuple[str, ...]] = set()


def _naming_ignored_fields(response: Response, body: CompletionRequest | ChatCompletionRequest,
                           logger: logging.Logger) -> Response:
    ignored = body.ignored_fields
    if ignored:
        response.headers[IGNORED_FIELDS_HEADER] = ", ".join(ignored)
        if tuple(ignored) not in _logged_ignored_fields:
            _logged_ignored_fields.add(tuple(ignored))
            logger.info("accepted and ignored OpenAI request fields that do not change generation: %s "
                        "(named in the %s response header; logged once per set of fields)",
                        ", ".join(ignored), IGNORED_FIELDS_HEADER)
    return response


async def _answered(answer: Awaitable[Answer]) -> Answer | JSONResponse:
    """The handler's answer, or its failure in OpenAI's error shape, whatever it raised (the app's
    exception handlers answer only the error types they know)."""
    try:
        return await answer
    except Exception as exc:
        return openai_error_response(exc)
