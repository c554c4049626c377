"""Text generation on top of the predictor: token ids in, text out, streamed or whole, with stop
strings. Every route of the transformer (OpenAI, v1, v2, generate) goes through TextGenerator."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

from serving import tracing
from serving.errors import BadGateway
from transformer.detokenizer import IncrementalDetokenizer
from transformer.predictor_client import Generated, PredictorClient
from transformer.stop_strings import StopStringMatcher
from transformer.tokenizer import TextTokenizer

STOP = "stop"


@dataclass(slots=True)
class TextRequest:
    prompt_ids: list[int]
    # Sampling fields for the predictor (max_tokens, temperature, seed, logprobs, ...).
    parameters: dict
    stop: list[str] = field(default_factory=list)


@dataclass(slots=True)
class TextChunk:
    """What one step of the predictor added: text that is safe to show, the tokens behind it,
    and the finish reason on the last chunk."""

    text: str
    token_ids: list[int]
    finish_reason: str | None
    logprobs: list[float] | None = None
    top_logprobs: list[dict[int, float]] | None = None

    @property
    def is_empty(self) -> bool:
        """No token and no finish: a stream's first chunk, which says that the predictor has
        admitted the request (routes send nothing for it)."""
        return not self.token_ids and self.finish_reason is None


@dataclass(slots=True)
class TextResult:
    text: str
    token_ids: list[int]
    finish_reason: str
    num_prompt_tokens: int
    logprobs: list[float] | None = None
    top_logprobs: list[dict[int, float]] | None = None

    @property
    def confidence(self) -> float | None:
        """The least likely generated token's log-probability: low means the model was unsure."""
        return min(self.logprobs) if self.logprobs else None


class TextGenerator:
    def __init__(self, tokenizer: TextTokenizer, predictor: PredictorClient) -> None:
        self.tokenizer = tokenizer
        self.predictor = predictor

    async def stream(self, request: TextRequest, headers: dict[str, str]) -> AsyncIterator[TextChunk]:
        """Chunks as the predictor produces tokens, the first one empty once the predictor has
        admitted the request (see PredictorClient.stream). A stop string ends the stream at once,
        which closes the upstream stream and so aborts the predictor's request."""
        upstream = self.predictor.stream(request.prompt_ids, request.parameters, headers)
        text_stream = None
        async with aclosing(upstream):
            async for generated in upstream:
                if text_stream is None:
                    # Made once the request has reached the predictor (the detokenizer decodes
                    # the prompt's tail), while the predictor prefills.
                    text_stream = _text_stream(self.tokenizer, request)
                chunk = text_stream.add(generated)
                yield chunk
                if chunk.finish_reason is not None:
                    return
        raise BadGateway("the predictor's stream ended before its request finished")

    async def generate(self, request: TextRequest, headers: dict[str, str]) -> TextResult:
        """The whole text. Without stop strings it is one call over the configured protocol; with
        them it streams, so that the predictor stops as soon as one appears."""
        if request.stop:
            chunks = [chunk async for chunk in self.stream(request, headers)]
        else:
            generated = await self.predictor.generate(request.prompt_ids, request.parameters, headers)
            chunks = [_text_stream(self.tokenizer, request).add(generated)]
        return _join(chunks, len(request.prompt_ids))


class _TextStream:
    """Detokenization and stop-string matching of one request's tokens."""

    def __init__(self, tokenizer: TextTokenizer, request: TextRequest) -> None:
        self._detokenizer = IncrementalDetokenizer(tokenizer, prompt_tail=request.prompt_ids)
        self._stop = StopStringMatcher(request.stop)

    def add(self, generated: Generated) -> TextChunk:
        if generated.is_empty:
            return TextChunk("", [], None)
        text = self._stop.feed(self._detokenizer.push(generated.token_ids))
        finish_reason = generated.finish_reason
        if finish_reason is not None and not self._stop.stopped:
            text += self._stop.feed(self._detokenizer.flush())
            text += self._stop.flush()
        if self._stop.stopped:
            finish_reason = STOP
        return TextChunk(text, generated.token_ids, finish_reason, generated.logprobs, generated.top_logprobs)


class _TracedTextStream(_TextStream):
    """A _TextStream that, when its last tokens come, records one `detokenize` span from its first
    tokens to its last, saying how much of that time detokenizing took (a span per token would
    cost more than the work)."""

    def __init__(self, tokenizer: TextTokenizer, request: TextRequest) -> None:
        super().__init__(tokenizer, request)
        self._first_tokens_at: int | None = None
        self._busy_seconds = 0.0
        self._num_tokens = 0

    def add(self, generated: Generated) -> TextChunk:
        if generated.is_empty:
            return super().add(generated)
        if self._first_tokens_at is None:
            self._first_tokens_at = time.time_ns()
        started = time.perf_counter()
        chunk = super().add(generated)
        self._busy_seconds += time.perf_counter() - started
        self._num_tokens += len(generated.token_ids)
        if chunk.finish_reason is not None:
            attributes = {"gen_ai.usage.output_tokens": self._num_tokens,
                          "transformer.detokenize.busy_seconds": self._busy_seconds}
            tracing.tracer().start_span("detokenize", start_time=self._first_tokens_at, attributes=attributes).end()
        return chunk


def _text_stream(tokenizer: TextTokenizer, request: TextRequest) -> _TextStream:
    return _TracedTextStream(tokenizer, request) if tracing.ENABLED else _TextStream(tokenizer, request)


async def without_empty(chunks: AsyncIterator[TextChunk]) -> AsyncIterator[TextChunk]:
    """The chunks that carry something: a token, text or the finish."""
    async with aclosing(chunks):
        async for chunk in chunks:
            if not chunk.is_empty:
                yield chunk


def _join(chunks: list[TextChunk], num_prompt_tokens: int) -> TextResult:
    with_logprobs = any(chunk.logprobs is not None for chunk in chunks)
    with_top = any(chunk.top_logprobs is not None for chunk in chunks)
    return TextResult(
        text="".join(chunk.text for chunk in chunks),
        token_ids=[token for chunk in chunks for token in chunk.token_ids],
        finish_reason=chunks[-1].finish_reason or STOP,
        num_prompt_tokens=num_prompt_tokens,
        logprobs=[value for chunk in chunks for value in chunk.logprobs or []] if with_logprobs else None,
        top_logprobs=[row for chunk in chunks for row in chunk.top_logprobs or []] if with_top else None,
    )
