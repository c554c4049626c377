"""The transformer's answers on the OpenAI routes (serving/openai_routes.py): the model list,
completions and chat completions (streamed as server-sent events ending in `data: [DONE]`, or
whole), and vLLM's /tokenize and /detokenize. What both completion endpoints share comes first,
then each endpoint's own requests, responses, logprobs and stream chunks."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from serving.errors import openai_error_response, status_of
from serving.openai_protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    ModelCard,
    TokenizeRequest,
    TokenizeResponse,
    TokenLogprob,
    ToolCallDelta,
    TopLogprob,
    Usage,
    new_id,
    now,
    openai_error_body,
)
from serving.openai_routes import MODEL_OWNER, mount_openai_routes
from serving.sse import DONE_EVENT, encode_event
from serving.streaming import CLIENT_ERRORS, EventStreamResponse
from serving.tool_calling import template_tools
from transformer.generation import TextChunk, TextRequest, TextResult
from transformer.model import TextModel
from transformer.schemas import TextSamplingFields
from transformer.stream_merge import merge_streams
from transformer.tokenizer import TextTokenizer
from transformer.tool_parsers import StreamedAnswer, ToolParser, parser_for_template, read_calls


def add_openai_routes(app: FastAPI, model: TextModel) -> None:
    mount_openai_routes(app, TextModelOpenAI(model))


class TextModelOpenAI:
    """The OpenAI routes answered by the transformer's model (an OpenAIHandler)."""

    def __init__(self, model: TextModel) -> None:
        self.model = model
        self.created = now()
        # The format of the model's own tool calls, read when tool_choice is "auto".
        self.tool_parser = parser_for_template(model.tokenizer.chat_template)

    def model_cards(self) -> list[ModelCard]:
        return [ModelCard(id=self.model.name, created=self.created, owned_by=MODEL_OWNER,
                          max_model_len=self.model.tokenizer.max_model_len)]

    async def completions(self, body: CompletionRequest, headers: Mapping[str, str]) -> Response:
        model = self.model
        model.check_admitting()
        self._check_model(body.model)
        prompts = [await model.prompt_ids(prompt) for prompt in body.prompts]
        return await _answer(model, body, prompts, _completion_fields(body), headers,
                             functools.partial(CompletionStream, model, body, prompts),
                             functools.partial(_completion_response, model, body, prompts=prompts))

    async def chat_completions(self, body: ChatCompletionRequest, headers: Mapping[str, str]) -> Response:
        model = self.model
        model.check_admitting()
        self._check_model(body.model)
        prompt_ids = await model.prompt_ids(messages=body.messages, add_generation_prompt=body.add_generation_prompt,
                                            tools=template_tools(body.tools))
        return await _answer(model, body, [prompt_ids], _chat_fields(body), headers,
                             functools.partial(ChatStream, model, body, len(prompt_ids), self.tool_parser),
                             functools.partial(_chat_response, model, body, self.tool_parser))

    async def tokenize(self, body: TokenizeRequest, headers: Mapping[str, str]) -> TokenizeResponse:
        self._check_model(body.model)
        tokens = await self.model.prompt_ids(body.prompt, body.messages,
                                             add_generation_prompt=body.add_generation_prompt,
                                             tools=template_tools(body.tools))
        return TokenizeResponse(count=len(tokens), max_model_len=self.model.tokenizer.max_model_len, tokens=tokens)

    async def detokenize(self, body: DetokenizeRequest, headers: Mapping[str, str]) -> DetokenizeResponse:
        self._check_model(body.model)
        prompt_ids = await self.model.prompt_ids(body.tokens)
        return DetokenizeResponse(prompt=await self.model.tokenizer.decode_async(prompt_ids))

    def _check_model(self, name: str | None) -> None:
        """404 for a request that names another model (the token routes may name none)."""
        if name is not None:
            self.model.check_model_name(name)


# Shared by both endpoints --------------------------------------------------------------


@dataclass(slots=True)
class Choice:
    """One generation of a request: its index among the response's choices and its prompt."""

    index: int
    prompt_index: int
    request: TextRequest


async def _choices(model: TextModel, prompts: list[list[int]], body, fields: TextSamplingFields) -> list[Choice]:
    """`n` choices per prompt, in OpenAI's order. With a seed, choice i samples with seed + i, so
    the choices differ and each is reproducible."""
    choices = []
    for prompt_index, prompt_ids in enumerate(prompts):
        for sample in range(body.n):
            sample_fields = fields if body.seed is None else fields.model_copy(update={"seed": body.seed + sample})
            request = await model.text_request(prompt_ids, sample_fields, logprobs=bool(fields.logprobs))
            choices.append(Choice(len(choices), prompt_index, request))
    return choices


def _sampling_fields(body, max_tokens: int | None, logprobs: bool, top_logprobs: int) -> TextSamplingFields:
    # Constructed without validation: each value was validated by the OpenAI request model,
    # whose ranges are the same or narrower.
    return TextSamplingFields.model_construct(
        max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, top_k=body.top_k, min_p=body.min_p,
        seed=body.seed, stop_token_ids=body.stop_token_ids, min_tokens=body.min_tokens, ignore_eos=body.ignore_eos,
        stop=body.stop_strings or None, logprobs=logprobs or None, top_logprobs=top_logprobs or None,
        presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
        repetition_penalty=body.repetition_penalty, logit_bias=body.logit_bias,
        structured_outputs=body.structured_output, priority=body.priority,
    )


def _usage(prompts: list[list[int]], results: list[TextResult]) -> Usage:
    # As OpenAI counts: each prompt once, however many choices it has.
    return Usage.of(sum(map(len, prompts)), sum(len(result.token_ids) for result in results))


async def _answer(model: TextModel, body: CompletionRequest | ChatCompletionRequest, prompts: list[list[int]],
                  fields: TextSamplingFields, headers: Mapping[str, str],
                  make_stream: Callable[[], ChunkStream],
                  make_response: Callable[[list[Choice], list[TextResult]], BaseModel]) -> Response:
    """The request's choices generated: streamed, or whole in one response."""
    choices = await _choices(model, prompts, body, fields)
    if body.stream:
        return await _stream_response(model, choices, dict(headers), make_stream)
    results = await model.generate_all([choice.request for choice in choices], dict(headers))
    return _json(make_response(choices, results))


def _json(response: BaseModel) -> JSONResponse:
    # As FastAPI would serialize a returned model.
    return JSONResponse(response.model_dump(mode="json", by_alias=True))


class ChunkStream:
    """The chunks of a streamed response. They are plain dicts, in the field order of the
    endpoint's response and choice models: a chunk per token is on every token's path, and
    building and dumping a pydantic model for each costs more than the rest of the chunk. Each
    endpoint's subclass names its chunks' `object` and content field, and makes a choice's first
    chunks, its content and its logprobs."""

    id_prefix: str
    object_name: str
    content_field: str
    usage_type: type[CompletionResponse | ChatCompletionChunk]

    def __init__(self, model: TextModel, body: CompletionRequest | ChatCompletionRequest, num_prompt_tokens: int,
                 wants_logprobs: bool) -> None:
        self.tokenizer = model.tokenizer
        self.body = body
        self.id = new_id(self.id_prefix)
        self.created = now()
        self.model_name = model.name
        self.num_prompt_tokens = num_prompt_tokens
        self.wants_logprobs = wants_logprobs
        self._head = {"id": self.id, "object": self.object_name, "created": self.created, "model": self.model_name}

    def start(self, choices: list[Choice]) -> list[dict]:
        raise NotImplementedError

    def delta(self, index: int, chunk: TextChunk) -> dict | None:
        """The chunk of a choice's new tokens; None when there is nothing to send."""
        if not (chunk.text or chunk.finish_reason or (self.wants_logprobs and chunk.token_ids)):
            return None
        logprobs = self._logprobs(index, chunk) if self.wants_logprobs else None
        return self._chunk(index, self._content(chunk), logprobs, chunk.finish_reason)

    def usage(self, completion_tokens: int) -> dict:
        return self.usage_type(id=self.id, created=self.created, model=self.model_name, choices=[],
                               usage=Usage.of(self.num_prompt_tokens, completion_tokens)).model_dump()

    def _content(self, chunk: TextChunk) -> str | dict:
        raise NotImplementedError

    def _logprobs(self, index: int, chunk: TextChunk) -> dict:
        raise NotImplementedError

    def _chunk(self, index: int, content: str | dict, logprobs: dict | None = None,
               finish_reason: str | None = None) -> dict:
        return {**self._head, "choices": [{"index": index, self.content_field: content, "logprobs": logprobs,
                                           "finish_reason": finish_reason}]}


async def _stream_response(model: TextModel, choices: list[Choice], headers: dict[str, str],
                           make_stream: Callable[[], ChunkStream]) -> EventStreamResponse:
    """Open every choice's stream first (so that a refused request gets its status code), then
    answer with their chunks as server-sent events. The chunk maker is made after the requests
    have gone to the predictor, whose prefill it can wait for."""
    opened = []
    try:
        for choice in choices:
            opened.append(await model.open_stream(choice.request, headers))
    except BaseException:
        for chunks in opened:
            await chunks.aclose()
        raise
    events = _events(merge_streams(opened), choices, make_stream())
    return EventStreamResponse(events)


async def _events(merged: AsyncIterator[tuple[int, TextChunk]], choices: list[Choice],
                  stream: ChunkStream) -> AsyncIterator[bytes]:
    completion_tokens = 0
    continuous_usage = stream.body.include_continuous_usage

    def event(message: dict) -> bytes:
        if continuous_usage:
            message["usage"] = Usage.of(stream.num_prompt_tokens, completion_tokens).model_dump()
        return encode_event(message)

    async with aclosing(merged):
        try:
            for message in stream.start(choices):
                yield event(message)
            async for index, chunk in merged:
                completion_tokens += len(chunk.token_ids)
                message = stream.delta(choices[index].index, chunk)
                if message is not None:
                    yield event(message)
            if stream.body.include_usage:
                yield encode_event(stream.usage(completion_tokens))
        except CLIENT_ERRORS as exc:
            yield encode_event(openai_error_body(status_of(exc), str(exc)))
        except Exception as exc:
            openai_error_response(exc)  # logs it
            yield encode_event(openai_error_body(500, f"internal error ({type(exc).__name__})"))
    yield DONE_EVENT


# Completions ---------------------------------------------------------------------------


def _completion_fields(body: CompletionRequest) -> TextSamplingFields:
    return _sampling_fields(body, body.max_tokens, body.logprobs is not None, body.logprobs or 0)


def _completion_response(model: TextModel, body: CompletionRequest, choices: list[Choice], results: list[TextResult],
                         prompts: list[list[int]]) -> CompletionResponse:
    echo = body.prompt if body.echo else ""
    return CompletionResponse(
        id=new_id("cmpl"),
        created=now(),
        model=model.name,
        choices=[
            CompletionChoice(
                index=choice.index,
                text=echo + result.text,
                logprobs=_completion_logprobs(model.tokenizer, result.token_ids, result.logprobs, result.top_logprobs,
                                              0) if body.logprobs is not None else None,
                finish_reason=result.finish_reason,
            )
            for choice, result in zip(choices, results)
        ],
        usage=_usage(prompts, results),
    )


def _completion_logprobs(tokenizer: TextTokenizer, token_ids: list[int], logprobs: list[float] | None,
                         top_logprobs: list[dict[int, float]] | None, text_offset: int) -> CompletionLogprobs:
    tokens = [tokenizer.token_text(token) for token in token_ids]
    offsets = []
    for token in tokens:
        offsets.append(text_offset)
        text_offset += len(token)
    return CompletionLogprobs(
        tokens=tokens,
        token_logprobs=list(logprobs or []),
        top_logprobs=[{tokenizer.token_text(token): value for token, value in row.items()} for row in top_logprobs]
        if top_logprobs else None,
        text_offset=offsets,
    )


class CompletionStream(ChunkStream):
    """The chunks of a streamed completion: the echoed prompt first (when asked for), then text."""

    id_prefix, object_name, content_field, usage_type = "cmpl", "text_completion", "text", CompletionResponse

    def __init__(self, model: TextModel, body: CompletionRequest, prompts: list[list[int]]) -> None:
        super().__init__(model, body, sum(map(len, prompts)), wants_logprobs=body.logprobs is not None)
        self.echo = body.prompt if body.echo else ""
        self._text_offsets: dict[int, int] = {}

    def start(self, choices: list[Choice]) -> list[dict]:
        if not self.echo:
            return []
        return [self._chunk(choice.index, self.echo) for choice in choices]

    def _content(self, chunk: TextChunk) -> str:
        return chunk.text

    def _logprobs(self, index: int, chunk: TextChunk) -> dict:
        offset = self._text_offsets.get(index, 0)
        logprobs = _completion_logprobs(self.tokenizer, chunk.token_ids, chunk.logprobs, chunk.top_logprobs, offset)
        self._text_offsets[index] = offset + sum(len(token) for token in logprobs.tokens)
        return logprobs.model_dump()


# Chat completions ----------------------------------------------------------------------


def _chat_fields(body: ChatCompletionRequest) -> TextSamplingFields:
    return _sampling_fields(body, body.requested_max_tokens, body.logprobs, body.top_logprobs or 0)


def _assistant_message(body: ChatCompletionRequest, parser: ToolParser, text: str,
                       finish_reason: str) -> tuple[AssistantMessage, str]:
    """The answer as OpenAI's message and finish reason: its tool calls read out of the text
    (with "tool_calls" as the reason) where the request offered tools and the answer is complete.
    Under "auto", an answer calling a function not offered is content."""
    parsed = read_calls(body, parser, text, finish_reason)
    if parsed is None:
        return AssistantMessage(content=text), finish_reason
    return AssistantMessage(content=parsed.content, tool_calls=parsed.tool_calls), "tool_calls"


def _chat_response(model: TextModel, body: ChatCompletionRequest, tool_parser: ToolParser, choices: list[Choice],
                   results: list[TextResult]) -> ChatCompletionResponse:
    answers = [_assistant_message(body, tool_parser, result.text, result.finish_reason) for result in results]
    return ChatCompletionResponse(
        id=new_id("chatcmpl"),
        created=now(),
        model=model.name,
        choices=[
            ChatChoice(
                index=choice.index,
                message=message,
                logprobs=_chat_logprobs(model.tokenizer, result.token_ids, result.logprobs, result.top_logprobs)
                if body.logprobs else None,
                finish_reason=finish_reason,
            )
            for choice, result, (message, finish_reason) in zip(choices, results, answers)
        ],
        usage=_usage([choices[0].request.prompt_ids], results),
    )


def _chat_logprobs(tokenizer: TextTokenizer, token_ids: list[int], logprobs: list[float] | None,
                   top_logprobs: list[dict[int, float]] | None) -> ChatLogprobs:
    content = []
    for position, (token, value) in enumerate(zip(token_ids, logprobs or [])):
        top = top_logprobs[position] if top_logprobs and position < len(top_logprobs) else {}
        content.append(TokenLogprob(**_top_logprob(tokenizer, token, value).model_dump(),
                                    top_logprobs=[_top_logprob(tokenizer, alt, alt_value)
                                                  for alt, alt_value in top.items()]))
    return ChatLogprobs(content=content)


def _top_logprob(tokenizer: TextTokenizer, token: int, value: float) -> TopLogprob:
    text = tokenizer.token_text(token)
    return TopLogprob(token=text, logprob=value, bytes=list(text.encode()))


class ChatStream(ChunkStream):
    """The chunks of a streamed chat completion: the role first, then content, then the finish.
    With tools, text that may be a call is held back, and the calls go in the last delta, whole."""

    id_prefix, object_name, content_field, usage_type = "chatcmpl", "chat.completion.chunk", "delta", ChatCompletionChunk

    def __init__(self, model: TextModel, body: ChatCompletionRequest, num_prompt_tokens: int,
                 tool_parser: ToolParser) -> None:
        super().__init__(model, body, num_prompt_tokens, wants_logprobs=bool(body.logprobs))
        self.tool_parser = tool_parser
        self.reads_tool_calls = body.effective_tool_choice != "none"
        self._answers: dict[int, StreamedAnswer] = {}

    def delta(self, index: int, chunk: TextChunk) -> dict | None:
        if not self.reads_tool_calls:
            return super().delta(index, chunk)
        answer = self._answers.setdefault(index, StreamedAnswer(self.body, self.tool_parser))
        logprobs = self._logprobs(index, chunk) if self.wants_logprobs else None
        if not chunk.finish_reason:
            content = answer.add(chunk.text)
            if not content and logprobs is None:
                return None
            return self._chunk(index, {"content": content} if content else {}, logprobs)
        content, calls, finish_reason = answer.finish(chunk.text, chunk.finish_reason)
        delta = {}
        if content:
            delta["content"] = content
        if calls:
            delta["tool_calls"] = [ToolCallDelta(index=position, **call.model_dump()).model_dump()
                                   for position, call in enumerate(calls)]
        return self._chunk(index, delta, logprobs, finish_reason)

    def start(self, choices: list[Choice]) -> list[dict]:
        return [self._chunk(choice.index, {"role": "assistant", "content": ""}) for choice in choices]

    def _content(self, chunk: TextChunk) -> dict:
        # OpenAI sends only the fields a delta sets (the role on the first one only).
        return {"content": chunk.text} if chunk.text else {}

    def _logprobs(self, index: int, chunk: TextChunk) -> dict:
        return _chat_logprobs(self.tokenizer, chunk.token_ids, chunk.logprobs, chunk.top_logprobs).model_dump()
