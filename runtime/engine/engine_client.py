"""EngineClient: what the KServe layer (runtime/model.py) calls on an engine, as a Protocol.

AsyncLLMEngine (in this process) and RayEngineClient (runtime/ray_serving.py, replicas on Ray
Serve) both provide it, so the KServe layer's admission, deadlines, metrics and error mapping
are the same over either."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from .engine import EngineStats
from .outputs import RequestOutput
from .sampling_params import SamplingParams


class OutputStream(Protocol):
    """One admitted request's outputs, an output per step that produced tokens, the last one
    finished. Closing it (aclose) before the last aborts the request in the engine."""

    def __aiter__(self) -> AsyncIterator[RequestOutput]: ...

    async def __anext__(self) -> RequestOutput: ...

    async def aclose(self) -> None: ...


class EngineClient(Protocol):
    def start(self) -> None:
        """Start serving requests (called on the server's event loop)."""

    def shutdown(self) -> None:
        """Stop; requests still in flight end with finish_reason "abort"."""

    @property
    def is_running(self) -> bool:
        """Whether requests are admitted."""

    @property
    def dead_reason(self) -> str | None:
        """Why the engine stopped, when it did on its own."""

    def stats(self) -> EngineStats:
        """The counters behind /metrics and readiness."""

    async def open(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                   priority: int = 0) -> OutputStream:
        """Admit a request without waiting for its first token: a refused one raises the
        engine's own error here (RequestRejected, QueueFull, EngineDead). `priority` orders it
        among the requests waiting for the engine, lower first (vLLM's)."""
