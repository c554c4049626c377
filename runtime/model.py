"""LLMModel: the kserve.Model around the engine. KServe's v1 and v2 (REST and gRPC) routes call
`predict`; the generate extension calls `generate` and `open_stream`. Every request goes through
`open_stream`, which admits it, enforces the deadline, feeds the metrics and translates errors."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing

from kserve.errors import InferenceError, InvalidInput
from kserve.protocol.infer_type import InferRequest, InferResponse

from runtime.engine import AsyncLLMEngine, EngineClient, EngineConfig, RequestOutput, SamplingParams
from runtime.errors import translate_errors
from serving import tracing
from serving.base_model import ServingModel
from serving.errors import RequestTimeout, ServiceUnavailable
from serving.streaming import gather_or_cancel, json_lines, stream_messages
from serving.v2_parameters import sampling_parameters
from runtime.metrics import RequestTracker, register_engine_stats, unregister_engine_stats
from runtime.request_spans import record_request_spans
from runtime.schemas import Prediction, PredictRequest, PredictStreamChunk, SamplingFields
from runtime.tensors import INPUT_METADATA, OUTPUT_METADATA, decode_prompts, encode_outputs

logger = logging.getLogger(__name__)


class LLMModel(ServingModel):
    def __init__(
        self,
        name: str,
        engine_config: EngineConfig,
        request_timeout: float | None = None,
        grace_period: float = 30.0,
    ) -> None:
        super().__init__(name)
        self.engine_config = engine_config
        self.request_timeout = request_timeout
        self.grace_period = grace_period
        # Our engine; KServe's `self.engine` is only the flag that makes it call start_engine().
        self.llm: EngineClient | None = None
        self.num_in_flight = 0
        self._stats_collector = None

    # Lifecycle ----------------------------------------------------------------------

    def load(self) -> bool:
        # KServe calls load() again whenever healthy() is false (e.g. while draining): build once.
        if self.llm is None:
            self.llm = self.build_engine()
            self._stats_collector = register_engine_stats(self.name, self.llm.stats)
            self.engine = True
            self.ready = True
        return self.ready

    def build_engine(self) -> EngineClient:
        return AsyncLLMEngine(self.engine_config)

    async def start_engine(self) -> None:
        self.llm.start()
        self.ready = True

    async def healthy(self) -> bool:
        return await super().healthy() and self.llm is not None and self.llm.is_running

    def describe_in_flight(self) -> str:
        return f", {self.num_in_flight} in flight"

    def stop_engine(self) -> None:
        """KServe calls this on shutdown, after uvicorn has drained HTTP. Requests still in
        flight (gRPC) get up to the grace period, then the engine loop stops."""
        self.start_draining()
        self.ready = False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or self.num_in_flight == 0:
            self._shutdown()
        else:
            loop.create_task(self._shutdown_when_idle())

    async def _shutdown_when_idle(self) -> None:
        deadline = asyncio.get_running_loop().time() + self.grace_period
        while self.num_in_flight and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        self._shutdown()

    def _shutdown(self) -> None:
        if self.llm is not None:
            self.llm.shutdown()
        if self._stats_collector is not None:
            unregister_engine_stats(self._stats_collector)
            self._stats_collector = None
        logger.info("engine stopped")

    # Metadata -----------------------------------------------------------------------

    def get_input_types(self) -> list[dict]:
        return INPUT_METADATA

    def get_output_types(self) -> list[dict]:
        return OUTPUT_METADATA

    # Requests -----------------------------------------------------------------------

    async def stream(self, prompt_token_ids: list[int], params: SamplingParams,
                     priority: int = 0) -> AsyncIterator[RequestOutput]:
        """One engine request, an output per step. Leaving the iteration early aborts it."""
        async with aclosing(await self.open_stream(prompt_token_ids, params, priority)) as outputs:
            async for output in outputs:
                yield output

    async def open_stream(self, prompt_token_ids: list[int], params: SamplingParams,
                          priority: int = 0) -> AsyncIterator[RequestOutput]:
        """Admit a request (`priority`: the engine's order among waiting requests, lower first):
        a refused one (bad input, overload, shutting down) fails here with its own status code. Nothing waits for the first token, so a streamed response starts
        (its head reaches the client) while the prompt is prefilled; a failure after this
        point ends the stream with an error message."""
        self.check_admitting()
        deadline = None if self.request_timeout is None else asyncio.get_running_loop().time() + self.request_timeout
        with translate_errors(self.name):
            request = await self.llm.open(uuid.uuid4().hex, prompt_token_ids, params, priority)
        return self._outputs(request, deadline, params)

    async def _outputs(self, request: AsyncIterator[RequestOutput], deadline: float | None,
                       params: SamplingParams) -> AsyncIterator[RequestOutput]:
        """An admitted request's outputs, observed by the metrics (and, when tracing, recorded
        as spans once it ends) and held to the deadline."""
        tracker = RequestTracker(self.name)
        self.num_in_flight += 1
        last = failure = None
        try:
            with translate_errors(self.name):
                async with aclosing(request):
                    while (output := await self._next_output(request, deadline)) is not None:
                        last = output
                        tracker.observe(output)
                        if output.error is not None:
                            raise InferenceError(output.error)
                        yield output
        except BaseException as exc:
            failure = exc
            raise
        finally:
            self.num_in_flight -= 1
            tracker.close()
            if tracing.ENABLED:
                record_request_spans(self.name, params, last, failure)

    async def _next_output(self, outputs: AsyncIterator[RequestOutput], deadline: float | None) -> RequestOutput | None:
        """The next output, or None at the end; past the deadline the engine request is aborted
        (closing its stream does that) and RequestTimeout raised."""
        try:
            async with asyncio.timeout_at(deadline):
                return await anext(outputs, None)
        except TimeoutError:
            raise RequestTimeout.after(self.request_timeout) from None

    def check_admitting(self) -> None:
        super().check_admitting()
        if self.llm is None or not self.llm.is_running:
            reason = self.llm.dead_reason if self.llm is not None else None
            raise ServiceUnavailable(self.name, f"the engine is not running{f': {reason}' if reason else ''}")

    async def generate(self, prompt_token_ids: list[int], params: SamplingParams, priority: int = 0) -> RequestOutput:
        """Run one request to completion; its final output."""
        final = None
        async for output in self.stream(prompt_token_ids, params, priority):
            final = output
        return final

    async def generate_all(self, prompts: list[list[int]], params: list[SamplingParams],
                           priorities: list[int]) -> list[RequestOutput]:
        """Run requests concurrently (the engine batches them); if one fails, the rest are aborted."""
        return await gather_or_cancel([self.generate(prompt, p, priority)
                                       for prompt, p, priority in zip(prompts, params, priorities)])

    # KServe's handlers -----------------------------------------------------------------

    async def predict(
        self, payload: dict | InferRequest, headers: dict[str, str] | None = None
    ) -> dict | InferResponse | AsyncIterator[bytes]:
        if tracing.ENABLED and headers:
            # Over gRPC no HTTP span is current: the caller's traceparent comes in the metadata.
            with tracing.continued_from(headers):
                return await self._predict(payload)
        return await self._predict(payload)

    async def _predict(self, payload: dict | InferRequest) -> dict | InferResponse | AsyncIterator[bytes]:
        if isinstance(payload, InferRequest):
            return await self._infer_v2(payload)
        return await self._predict_v1(payload)

    async def _infer_v2(self, request: InferRequest) -> InferResponse:
        with translate_errors(self.name):
            fields = SamplingFields.model_validate(sampling_parameters(request.parameters))
            params = fields.to_sampling_params()
        prompts = decode_prompts(request)
        outputs = await self.generate_all(prompts, [params] * len(prompts), [fields.engine_priority] * len(prompts))
        return InferResponse(
            response_id=request.id or uuid.uuid4().hex,
            model_name=self.name,
            infer_outputs=encode_outputs(outputs, with_logprobs=params.logprobs),
            use_binary_outputs=request.use_binary_outputs,
            requested_outputs=request.request_outputs,
        )

    async def _predict_v1(self, payload: dict) -> dict | AsyncIterator[bytes]:
        with translate_errors(self.name):
            request = PredictRequest.model_validate(payload)
            # Logprobs are always computed: `confidence` is the least likely token's.
            params = [instance.to_sampling_params(logprobs=True) for instance in request.instances]
        wants_logprobs = [bool(instance.logprobs or instance.top_logprobs) for instance in request.instances]
        prompts = [instance.input_ids for instance in request.instances]
        priorities = [instance.engine_priority for instance in request.instances]
        if request.stream:
            if len(prompts) != 1:
                raise InvalidInput(f"a streamed predict takes exactly one instance, got {len(prompts)}")
            outputs = await self.open_stream(prompts[0], params[0], priorities[0])
            return json_lines(stream_messages(outputs, lambda output: _predict_chunk(output, wants_logprobs[0])))
        outputs = await self.generate_all(prompts, params, priorities)
        return {"predictions": [_prediction(output, wants) for output, wants in zip(outputs, wants_logprobs)]}


def _prediction(output: RequestOutput, with_logprobs: bool) -> dict:
    logprobs = output.logprobs or []
    prediction = Prediction(
        output_ids=output.output_token_ids,
        finish_reason=output.finish_reason,
        confidence=min(logprobs) if logprobs else None,
    )
    if with_logprobs:
        prediction.logprobs = logprobs
    return prediction.model_dump(exclude_unset=True)


def _predict_chunk(output: RequestOutput, with_logprobs: bool) -> dict:
    chunk = PredictStreamChunk(output_ids=output.new_token_ids, finish_reason=output.finish_reason)
    if with_logprobs:
        chunk.logprobs = output.new_logprobs
    return chunk.model_dump(exclude_unset=True)
