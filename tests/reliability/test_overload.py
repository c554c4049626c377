"""Overload: a burst of four times what the predictor can hold (running plus waiting), sent to the
predictor and through the transformer. Every request either completes with the tokens it would
get alone or is refused with 503 and Retry-After; none hangs; afterwards the server serves again
and its gauges read zero."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from tests.runtime.conftest import start_server
from tests.servers import MODEL_NAME, Server
from tests.transformer.conftest import start_transformer

from .clients import Outcome, complete, generate
from .conftest import settled_gauges

MAX_NUM_SEQS = 2
MAX_QUEUE = 2
CAPACITY = MAX_NUM_SEQS + MAX_QUEUE
BURST = 4 * CAPACITY
MAX_TOKENS = 24
# A request that takes longer than this has hung.
CLIENT_TIMEOUT = 60.0
PROMPT_IDS = [[5 + index, 17, 29 + 3 * index] for index in range(4)]
PROMPTS = ["The quick brown fox", "Once upon a time", "def main():", "Lorem ipsum dolor"]


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Iterator[Server]:
    started = start_server(tmp_path_factory.mktemp("overload"), "--max_num_seqs", str(MAX_NUM_SEQS),
                           "--max_queue", str(MAX_QUEUE))
    yield started
    started.stop()


@pytest.fixture(scope="module")
def transformer(predictor, tmp_path_factory) -> Iterator[Server]:
    started = start_transformer(tmp_path_factory.mktemp("overload"), f"127.0.0.1:{predictor.http_port}")
    yield started
    started.stop()


async def references(send, prompts: list) -> list[Outcome]:
    """Each prompt's answer alone, one request at a time."""
    return [await send(prompt) for prompt in prompts]


async def burst(send, prompts: list) -> list[Outcome]:
    return await asyncio.gather(*(send(prompts[index % len(prompts)]) for index in range(BURST)))


def check_burst(outcomes: list[Outcome], expected: list[Outcome]) -> Counter:
    """Every outcome is the reference answer or a 503 with Retry-After; some are each."""
    statuses = Counter(outcome.status for outcome in outcomes)
    for index, outcome in enumerate(outcomes):
        if outcome.status == 200:
            assert outcome.text == expected[index % len(expected)].text, index
        else:
            assert outcome.status == 503 and outcome.retry_after == "1", outcome
    assert statuses[200] >= 1 and statuses[503] >= 1, statuses
    print(f"\nburst of {BURST} against capacity {CAPACITY}: {dict(statuses)}")
    return statuses


def check_recovered(predictor: Server, front: Server) -> None:
    gauges = settled_gauges(predictor)
    assert set(gauges.values()) == {0.0}, gauges
    assert httpx.get(f"{front.url}/v2/models/{MODEL_NAME}/ready", timeout=10).status_code == 200


async def test_a_burst_on_the_predictor_completes_or_is_refused(predictor):
    async with httpx.AsyncClient(base_url=predictor.url, timeout=CLIENT_TIMEOUT) as client:
        async def send(prompt_ids: list[int]) -> Outcome:
            return await generate(client, prompt_ids, MAX_TOKENS)

        expected = await references(send, PROMPT_IDS)
        check_burst(await burst(send, PROMPT_IDS), expected)
        check_recovered(predictor, predictor)
        assert (await send(PROMPT_IDS[0])).text == expected[0].text


async def test_a_burst_through_the_transformer_completes_or_is_refused(predictor, transformer):
    async with httpx.AsyncClient(base_url=transformer.url, timeout=CLIENT_TIMEOUT) as client:
        async def send(prompt: str) -> Outcome:
            return await complete(client, prompt, MAX_TOKENS)

        expected = await references(send, PROMPTS)
        check_burst(await burst(send, PROMPTS), expected)
        check_recovered(predictor, transformer)
        assert (await send(PROMPTS[0])).text == expected[0].text
