"""AsyncLLMEngine: the engine's step loop in one dedicated thread, results streamed to asyncio.

The event loop never runs a model step: requests and aborts travel to the engine
thread as commands, and each step's outputs come back with one
`loop.call_soon_threadsafe` per event loop per step. A request's structured output is compiled
before it travels, in the grammar compiler's pool: neither the event loop nor the engine thread
waits for a compile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import AsyncIterator

from .config import EngineConfig
from .engine import EngineStats, LLMEngine
from .errors import EngineDead, QueueFull, RequestRejected
from .grammar import Grammar
from .outputs import RequestOutput
from .sampling_params import SamplingParams
from .sequence import FinishReason

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue


@dataclass(slots=True)
class _AddCommand:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    priority: int
    grammar: Grammar | None


@dataclass(slots=True)
class _AbortCommand:
    request_id: str


class AsyncLLMEngine:
    def __init__(self, config: EngineConfig | None = None, *, engine: LLMEngine | None = None) -> None:
        if (config is None) == (engine is None):
            raise ValueError("pass exactly one of config or engine")
        self.engine = engine or LLMEngine(config)
        self._streams: dict[str, _Stream] = {}
        self._commands: list[_AddCommand | _AbortCommand] = []
        # Requests admitted and not yet in the engine's waiting queue (under _wakeup).
        self._num_arriving = 0
        self._wakeup = threading.Condition()
        self._stopping = False
        self._dead_reason: str | None = None
        self._thread: threading.Thread | None = None
        self.num_failed_steps = 0

    # Lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        self._thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the loop; requests still in flight end with finish_reason "abort"."""
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    @property
    def dead_reason(self) -> str | None:
        return self._dead_reason

    def stats(self) -> EngineStats:
        """The engine's counters; waiting includes requests still on their way to the engine thread."""
        return dataclasses.replace(self.engine.stats(), num_requests_waiting=self.num_waiting)

    # Requests -----------------------------------------------------------------------

    async def stream(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams | None = None,
        priority: int = 0,
    ) -> AsyncIterator[RequestOutput]:
        """Yield an output per engine step that produced tokens, the last one finished.

        The request is admitted at the first iteration. Leaving the iteration early (break,
        cancellation, client gone) aborts the request and frees its KV blocks.
        """
        async with await self.open(request_id, prompt_token_ids, params, priority) as outputs:
            async for output in outputs:
                yield output

    async def open(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams | None = None,
        priority: int = 0,
    ) -> RequestStream:
        """Admit a request now, without waiting for its first token: a refused one (bad input,
        full queue, engine stopped, a structured output that does not compile) raises here. Its
        outputs come from the returned stream, which must be read to the end or closed; closing
        it early aborts the request."""
        params = params or SamplingParams()
        prompt_token_ids = list(prompt_token_ids)
        grammar = None
        if params.structured_output is not None:
            self._check_admissible(request_id, prompt_token_ids, params)
            grammar = await self.engine.grammar_compiler.compile_async(params.structured_output)
        return RequestStream(self, request_id, self._register(request_id, prompt_token_ids, params, priority, grammar))

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams | None = None, priority: int = 0
    ) -> RequestOutput:
        """Run one request to completion and return its final output."""
        final = None
        async for output in self.stream(request_id, prompt_token_ids, params, priority):
            final = output
        return final

    def abort(self, request_id: str) -> None:
        self._submit(_AbortCommand(request_id))

    def _release(self, request_id: str, abort: bool) -> None:
        self._streams.pop(request_id, None)
        if abort:
            self.abort(request_id)

    def _register(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, priority: int,
                  grammar: Grammar | None) -> _Stream:
        self._check_admissible(request_id, prompt_token_ids, params)
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        self._streams[request_id] = stream
        try:
            self._submit(_AddCommand(request_id, prompt_token_ids, params, priority, grammar))
        except (QueueFull, EngineDead):
            del self._streams[request_id]
            raise
        return stream

    def _check_admissible(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        if self._dead_reason is not None:
            raise EngineDead(f"the engine has stopped: {self._dead_reason}")
        if not self.is_running:
            raise EngineDead("the engine loop is not running; call start() first")
        if request_id in self._streams:
            raise RequestRejected(f"request id {request_id!r} is already in use")
        self.engine.validate_request(prompt_token_ids, params)

    @property
    def num_waiting(self) -> int:
        """Requests not yet running: in the engine's waiting queue, or on their way to it
        (the waiting of LLMEngine.check_queue_space)."""
        return self.engine.num_waiting + self._num_arriving

    def _submit(self, command: _AddCommand | _AbortCommand) -> None:
        with self._wakeup:
            if isinstance(command, _AddCommand):
                # Checked and counted under the lock that the engine thread holds while it moves
                # a request from arriving to waiting: the count never misses or repeats one.
                self.engine.check_queue_space(self._num_arriving)
                if self._stopping:
                    raise EngineDead("the engine is shutting down")
                self._num_arriving += 1
            self._commands.append(command)
            self._wakeup.notify()

    # The engine thread --------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                commands = self._wait_for_work()
                if commands is None:
                    break
                outputs = self._apply(commands)
                if self.engine.has_unfinished_requests():
                    outputs += self._step()
                self._deliver(outputs)
        except BaseException as exc:  # the loop must never die silently
            logger.exception("engine loop died")
            self._dead_reason = f"{type(exc).__name__}: {exc}"
            self._deliver_error_to_all(EngineDead(f"the engine has stopped: {self._dead_reason}"))
            return
        # Requests still on their way to the engine are added, then aborted with the rest,
        # so every open stream ends.
        with self._wakeup:
            leftover, self._commands = self._commands, []
        outputs = self._apply(leftover)
        outputs += [(output.request_id, output) for output in self.engine.abort_all()]
        self._deliver(outputs)

    def _wait_for_work(self) -> list | None:
        with self._wakeup:
            while not self._commands and not self.engine.has_unfinished_requests() and not self._stopping:
                self._wakeup.wait()
            if self._stopping:
                return None
            commands, self._commands = self._commands, []
            return commands

    def _apply(self, commands: list) -> list[tuple[str, RequestOutput | BaseException]]:
        outputs: list[tuple[str, RequestOutput | BaseException]] = []
        for command in commands:
            if isinstance(command, _AbortCommand):
                final = self.engine.abort(command.request_id)
                if final is not None:
                    outputs.append((command.request_id, final))
                continue
            try:
                with self._wakeup:
                    self._num_arriving -= 1
                    self.engine.add_admitted_request(
                        command.request_id, command.prompt_token_ids, command.params, command.priority, command.grammar
                    )
            except RequestRejected as exc:
                outputs.append((command.request_id, exc))
        return outputs

    def _step(self) -> list[tuple[str, RequestOutput | BaseException]]:
        try:
            return [(output.request_id, output) for output in self.engine.step()]
        except Exception as exc:
            # A failed step must not take the server down: fail the requests it held, go on.
            self.num_failed_steps += 1
            logger.exception("engine step failed; failing the requests in flight")
            message = f"engine step failed: {type(exc).__name__}"
            return [(output.request_id, output) for output in self.engine.abort_all(FinishReason.ERROR, message)]

    def _deliver(self, outputs: list[tuple[str, RequestOutput | BaseException]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list] = defaultdict(list)
        for request_id, item in outputs:
            stream = self._streams.get(request_id)
            if stream is not None:
                by_loop[stream.loop].append((stream.queue, item))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:
                pass  # that event loop is closed; its streams are gone

    def _deliver_error_to_all(self, error: BaseException) -> None:
        self._deliver([(request_id, error) for request_id in list(self._streams)])


class RequestStream:
    """The outputs of one admitted request, an async iterator. Ending it before its last output
    (aclose, `async with` left, or the stream dropped unread) aborts the request in the engine."""

    def __init__(self, engine: AsyncLLMEngine, request_id: str, stream: _Stream) -> None:
        self.request_id = request_id
        self._engine = engine
        self._queue = stream.queue
        self._finished = False
        self._closed = False

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self._closed:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self._end()
            raise item
        if item.finished:
            self._finished = True
            self._end()
        return item

    async def __aenter__(self) -> RequestStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._end()

    async def aclose(self) -> None:
        self._end()

    def _end(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._engine._release(self.request_id, abort=not self._finished)

    def __del__(self) -> None:
        # A stream admitted but never read nor closed (its caller was cancelled in between)
        # must not leave its request running in the engine.
        self._end()


def _put_all(items: list[tuple[asyncio.Queue, object]]) -> None:
    for queue, item in items:
        queue.put_nowait(item)
