"""The continuous-batching engine: paged KV cache, iteration-level scheduling, chunked
prefill, prefix caching, preemption and streaming. Knows nothing of HTTP or KServe."""

from .async_engine import AsyncLLMEngine
from .config import ConfigError, EngineConfig
from .engine import EngineStats, LLMEngine
from .engine_client import EngineClient, OutputStream
from .errors import EngineDead, QueueFull, RequestRejected
from .grammar_compiler import import_tokenizer_support_in_background
from .model_loader import ModelLoadError
from .outputs import RequestMetrics, RequestOutput
from .sampling_params import SamplingParams
from .startup import STARTUP, describe_startup, seconds_since_process_start
from .structured_output import StructuredOutput

__all__ = [
    "STARTUP",
    "AsyncLLMEngine",
    "ConfigError",
    "EngineClient",
    "EngineConfig",
    "EngineDead",
    "EngineStats",
    "LLMEngine",
    "ModelLoadError",
    "OutputStream",
    "QueueFull",
    "RequestMetrics",
    "RequestOutput",
    "RequestRejected",
    "SamplingParams",
    "StructuredOutput",
    "describe_startup",
    "import_tokenizer_support_in_background",
    "seconds_since_process_start",
]
