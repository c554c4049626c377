"""LLMModel.open_stream admits a request without waiting for its first token, so that a streamed
response starts while the prompt is prefilled: a refused request still fails there (with its
status code), and a failure after admission ends the stream instead. In process, with the
engine's model steps held back."""

from __future__ import annotations

import asyncio
import threading

import pytest
from kserve.errors import InvalidInput

from runtime.engine import SamplingParams
from runtime.model import LLMModel
from serving.errors import RequestTimeout, ServiceUnavailable

from tests.engine.test_async_engine import hold_steps

from .test_readiness import make_model

PARAMS = SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)


async def started_model(demo_model_dir, monkeypatch, request_timeout: float | None = None) -> tuple[LLMModel, threading.Event]:
    """A started model whose model steps wait until the returned event is set."""
    model = make_model(demo_model_dir)
    model.request_timeout = request_timeout
    model.load()
    await model.start_engine()
    return model, hold_steps(monkeypatch, model.llm)


async def test_a_stream_is_admitted_before_its_first_token(demo_model_dir, monkeypatch):
    model, release = await started_model(demo_model_dir, monkeypatch)
    try:
        outputs = await asyncio.wait_for(model.open_stream([1, 2, 3], PARAMS), 5.0)
        release.set()
        received = [output async for output in outputs]
    finally:
        release.set()
        model.stop_engine()
    assert received[-1].finish_reason == "length"
    assert [token for output in received for token in output.new_token_ids] == received[-1].output_token_ids
    assert len(received[-1].output_token_ids) == PARAMS.max_tokens
    assert model.num_in_flight == 0


async def test_a_refused_stream_fails_at_once(demo_model_dir, monkeypatch):
    model, release = await started_model(demo_model_dir, monkeypatch)
    try:
        with pytest.raises(InvalidInput, match="vocabulary"):
            await asyncio.wait_for(model.open_stream([1, 10**9], PARAMS), 5.0)
        model.start_draining()
        with pytest.raises(ServiceUnavailable, match="shutting down"):
            await asyncio.wait_for(model.open_stream([1, 2, 3], PARAMS), 5.0)
    finally:
        release.set()
        model.stop_engine()


async def test_a_failure_after_admission_ends_the_stream(demo_model_dir, monkeypatch):
    model, release = await started_model(demo_model_dir, monkeypatch, request_timeout=0.2)
    try:
        outputs = await asyncio.wait_for(model.open_stream([1, 2, 3], PARAMS), 5.0)
        with pytest.raises(RequestTimeout):
            await asyncio.wait_for(anext(outputs), 5.0)
    finally:
        release.set()
        model.stop_engine()
    assert model.num_in_flight == 0
