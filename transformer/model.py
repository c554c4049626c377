"""TextModel: the kserve.Model of the transformer. It holds a tokenizer, not a model: prompts are
tokenized and checked against the context limit here, generation happens in the predictor, and
text comes back detokenized. KServe's v1 and v2 routes call `predict`; the OpenAI routes and the
text generate extension call `prompt_ids` and `generator`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferRequest, InferResponse

from serving import tracing
from serving.base_model import ServingModel
from serving.openai_protocol import ChatMessage
from serving.streaming import gather_or_cancel, json_lines, open_stream, stream_messages
from serving.v2_parameters import sampling_parameters
from transformer.generation import TextChunk, TextGenerator, TextRequest, TextResult, without_empty
from transformer.predictor_client import PredictorClient, PredictorSettings
from transformer.schemas import Prediction, PredictInstance, PredictRequest, TextSamplingFields
from transformer.tensors import INPUT_METADATA, OUTPUT_METADATA, decode_prompts, encode_results
from transformer.tokenizer import ChatTemplateError, ConversationTurn, TextTokenizer, UnencodableTextError

logger = logging.getLogger(__name__)

class TextModel(ServingModel):
    def __init__(self, name: str, tokenizer: TextTokenizer, predictor: PredictorSettings) -> None:
        super().__init__(name)
        self.tokenizer = tokenizer
        self.predictor_settings = predictor
        self.generator: TextGenerator | None = None

    # Lifecycle ----------------------------------------------------------------------

    def load(self) -> bool:
        if self.generator is None:
            client = PredictorClient(self.name, self.predictor_settings)
            self.generator = TextGenerator(self.tokenizer, client)
            logger.info("model %r: generation by the predictor over %s", self.name, client.describe())
        self.ready = True
        return self.ready

    async def healthy(self) -> bool:
        if not await super().healthy():
            return False
        return not self.predictor_settings.check_ready or await self.generator.predictor.ready()

    def get_input_types(self) -> list[dict]:
        return INPUT_METADATA

    def get_output_types(self) -> list[dict]:
        return OUTPUT_METADATA

    # Prompts ------------------------------------------------------------------------

    async def prompt_ids(self, prompt: str | list[int] | None = None, messages: list[ChatMessage] | None = None,
                         add_generation_prompt: bool = True, tools: list[dict] | None = None) -> list[int]:
        """Token ids of a text prompt, pre-tokenized ids, or chat messages (with the tools offered)."""
        if isinstance(prompt, list):
            self._check_token_ids(prompt)
            return prompt
        if not tracing.ENABLED:
            return await self._tokenize(prompt, messages, add_generation_prompt, tools)
        with tracing.tracer().start_as_current_span("tokenize") as span:
            prompt_ids = await self._tokenize(prompt, messages, add_generation_prompt, tools)
            span.set_attributes({"gen_ai.request.model": self.name, "transformer.chat_template": messages is not None,
                                 "gen_ai.usage.input_tokens": len(prompt_ids)})
            return prompt_ids

    async def _tokenize(self, prompt: str | None, messages: list[ChatMessage] | None, add_generation_prompt: bool,
                        tools: list[dict] | None) -> list[int]:
        """A text prompt, or chat messages rendered by the chat template, as token ids."""
        try:
            if messages is not None:
                conversation = [_conversation_turn(message) for message in messages]
                return await self.tokenizer.encode_chat_async(conversation, add_generation_prompt, tools)
            return await self.tokenizer.encode_async(prompt)
        except (ChatTemplateError, UnencodableTextError) as exc:
            raise InvalidInput(str(exc)) from None

    def check_context(self, prompt_ids: list[int], max_tokens: int | None) -> int:
        """Refuse a prompt that does not leave room for its output; returns max_tokens, or the
        room left when the request set none."""
        limit = self.tokenizer.max_model_len
        num_prompt = len(prompt_ids)
        if num_prompt == 0:
            raise InvalidInput("the prompt is empty (0 tokens)")
        if num_prompt >= limit:
            raise InvalidInput(
                f"the prompt has {num_prompt} tokens, but this model's context is {limit} tokens "
                "(prompt and output together); shorten the prompt"
            )
        if max_tokens is not None and num_prompt + max_tokens > limit:
            raise InvalidInput(
                f"the prompt has {num_prompt} tokens and max_tokens asks for {max_tokens} more, "
                f"over this model's context of {limit} tokens; lower max_tokens to at most {limit - num_prompt}"
            )
        return max_tokens if max_tokens is not None else limit - num_prompt

    def _check_token_ids(self, token_ids: list[int]) -> None:
        vocabulary = self.tokenizer.vocab_size
        bad = [token for token in token_ids if not 0 <= token < vocabulary]
        if bad:
            raise InvalidInput(f"token ids must be in [0, {vocabulary}); got {bad[:5]}")

    async def text_request(self, prompt_ids: list[int], fields: TextSamplingFields, *, logprobs: bool) -> TextRequest:
        max_tokens = self.check_context(prompt_ids, fields.max_tokens)
        parameters = fields.predictor_parameters(logprobs=logprobs)
        parameters["max_tokens"] = max_tokens
        return TextRequest(prompt_ids, parameters, fields.stop_strings)

    # KServe's handlers -----------------------------------------------------------------

    async def predict(
        self, payload: dict | InferRequest, headers: dict[str, str] | None = None
    ) -> dict | InferResponse | AsyncIterator[bytes]:
        self.check_admitting()
        headers = headers or {}
        if tracing.ENABLED:
            # Over gRPC no HTTP span is current: the caller's traceparent comes in the metadata.
            with tracing.continued_from(headers):
                return await self._predict(payload, headers)
        return await self._predict(payload, headers)

    async def _predict(self, payload: dict | InferRequest, headers: dict[str, str]) -> dict | AsyncIterator[bytes] | InferResponse:
        if isinstance(payload, InferRequest):
            return await self._infer_v2(payload, headers)
        return await self._predict_v1(payload, headers)

    async def _predict_v1(self, payload: dict, headers: dict[str, str]) -> dict | AsyncIterator[bytes]:
        request = self.validated(PredictRequest, payload)
        texts = [await self._instance_request(instance) for instance in request.instances]
        if request.stream:
            if len(texts) != 1:
                raise InvalidInput(f"a streamed predict takes exactly one instance, got {len(texts)}")
            return await self._predict_v1_stream(texts[0], headers)
        results = await self.generate_all(texts, headers)
        predictions = [
            _prediction(result, bool(instance.logprobs)) for result, instance in zip(results, request.instances)
        ]
        return {"predictions": predictions}

    async def _predict_v1_stream(self, request: TextRequest, headers: dict[str, str]) -> AsyncIterator[bytes]:
        """JSON lines of text deltas (KServe streams an iterator returned by predict). The first
        chunk is awaited here, so a refused request fails with its own status code."""
        chunks = await self.open_stream(request, headers)
        return json_lines(stream_messages(without_empty(chunks),
                                          lambda chunk: {"text": chunk.text, "finish_reason": chunk.finish_reason}))

    async def open_stream(self, request: TextRequest, headers: dict[str, str]) -> AsyncIterator[TextChunk]:
        """Start a stream and wait until the predictor has admitted it (its first, empty chunk),
        so that a refused request (bad input, overload) fails while the response status can
        still say so, and the response starts while the predictor prefills the prompt."""
        return await open_stream(self.generator.stream(request, headers))

    async def _instance_request(self, instance: PredictInstance) -> TextRequest:
        prompt_ids = await self.prompt_ids(instance.prompt, instance.messages)
        return await self.text_request(prompt_ids, instance, logprobs=True)

    async def _infer_v2(self, request: InferRequest, headers: dict[str, str]) -> InferResponse:
        prompts = decode_prompts(request)
        fields = self.validated(TextSamplingFields, sampling_parameters(request.parameters))
        texts = [await self.text_request(await self.prompt_ids(prompt), fields, logprobs=True) for prompt in prompts]
        results = await self.generate_all(texts, headers)
        return InferResponse(
            response_id=request.id or "",
            model_name=self.name,
            infer_outputs=encode_results(results),
            use_binary_outputs=request.use_binary_outputs,
            requested_outputs=request.request_outputs,
        )

    async def generate_all(self, requests: list[TextRequest], headers: dict[str, str]) -> list[TextResult]:
        """Run generations concurrently (the predictor batches them); if one fails, the rest are
        cancelled, which aborts them in the predictor."""
        return await gather_or_cancel([self.generator.generate(request, headers) for request in requests])


def _prediction(result: TextResult, with_logprobs: bool) -> dict:
    prediction = Prediction(
        text=result.text,
        finish_reason=result.finish_reason,
        confidence=result.confidence,
        prompt_tokens=result.num_prompt_tokens,
        completion_tokens=len(result.token_ids),
    )
    if with_logprobs:
        prediction.logprobs = result.logprobs or []
    return prediction.model_dump(exclude_unset=True)


def _conversation_turn(message: ChatMessage) -> ConversationTurn:
    tool_calls = None if message.tool_calls is None else tuple(call.template_form() for call in message.tool_calls)
    return ConversationTurn(message.role, message.text, tool_calls, message.tool_call_id, message.name)
