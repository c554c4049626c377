"""Readiness follows the engine: not ready before it can serve, nor after it stops or dies,
nor while draining. KServe's /v2/models/{name}/ready and /v1/models/{name} answer from
LLMModel.healthy(), so these states are what those routes report."""

from __future__ import annotations

import asyncio

from runtime.engine import EngineConfig
from runtime.model import LLMModel

from .conftest import NUM_KV_BLOCKS


def make_model(demo_model_dir) -> LLMModel:
    config = EngineConfig(
        model=str(demo_model_dir), dtype="float32", device="cpu", num_kv_blocks=NUM_KV_BLOCKS,
        attention_backend="torch", num_threads=1,
    )
    return LLMModel("readiness", config)


async def test_not_ready_until_the_engine_loop_runs(demo_model_dir):
    model = make_model(demo_model_dir)
    assert not await model.healthy()
    model.load()
    assert not await model.healthy(), "loaded but the loop has not started"
    await model.start_engine()
    try:
        assert await model.healthy()
    finally:
        model.stop_engine()
    assert not await model.healthy()


async def test_not_ready_after_the_engine_dies_or_while_draining(demo_model_dir):
    model = make_model(demo_model_dir)
    model.load()
    await model.start_engine()
    try:
        model.start_draining()
        assert not await model.healthy()
        model.draining = False
        assert await model.healthy()
        model.llm.shutdown()  # the loop ends as if it had died
        await asyncio.sleep(0)
        assert not await model.healthy()
    finally:
        model.stop_engine()
