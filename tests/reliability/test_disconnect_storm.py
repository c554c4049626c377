"""Disconnect storm: rounds of streamed completions through the transformer in which a fifth of the
clients leave mid-stream. The others get exactly the text they get alone, the predictor's KV cache
empties after every round (no block leaks), and neither process grows in memory across rounds."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from tests.runtime.conftest import start_server
from tests.servers import Server
from tests.transformer.conftest import start_transformer

from .clients import Outcome, stream_completion
from .conftest import rss_bytes, settled_gauges

CLIENTS_PER_ROUND = 10
LEAVERS_PER_ROUND = CLIENTS_PER_ROUND // 5
WARM_UP_ROUNDS = 3
MEASURED_ROUNDS = 8
MAX_TOKENS = 16
# A leaver asks for far more than it reads, so it is still generating when it leaves.
LEAVER_MAX_TOKENS = 400
LEAVE_AFTER_EVENTS = 2
PROMPTS = ["The quick brown fox", "Once upon a time", "def main():", "Lorem ipsum dolor", "In the beginning"]
# A warmed-up process stays within a MiB here; 8 MiB over the 80 measured streams catches a leak
# of about 100 KiB per stream (an abandoned stream's buffers, frames and connection).
RSS_TOLERANCE_BYTES = 8 << 20


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[tuple[Server, Server]]:
    directory = tmp_path_factory.mktemp("storm")
    predictor = start_server(directory, "--max_num_seqs", str(CLIENTS_PER_ROUND))
    try:
        transformer = start_transformer(directory, f"127.0.0.1:{predictor.http_port}")
        yield predictor, transformer
        transformer.stop()
    finally:
        predictor.stop()


async def storm_round(client: httpx.AsyncClient, round_number: int) -> list[Outcome]:
    """One round: the clients start together; every fifth one leaves after two events."""
    requests = []
    for index in range(CLIENTS_PER_ROUND):
        prompt = PROMPTS[(round_number + index) % len(PROMPTS)]
        if index % 5 == 4:
            requests.append(stream_completion(client, prompt, LEAVER_MAX_TOKENS, LEAVE_AFTER_EVENTS, ignore_eos=True))
        else:
            requests.append(stream_completion(client, prompt, MAX_TOKENS))
    return await asyncio.gather(*requests)


def check_round(outcomes: list[Outcome], round_number: int, expected: dict[str, str]) -> None:
    for index, outcome in enumerate(outcomes):
        assert outcome.status == 200 and outcome.error is None, (round_number, index, outcome)
        if index % 5 != 4:
            assert outcome.text == expected[PROMPTS[(round_number + index) % len(PROMPTS)]], (round_number, index)


async def test_clients_leaving_mid_stream_harm_no_one_and_leak_nothing(stack):
    predictor, transformer = stack
    servers = {"predictor": predictor, "transformer": transformer}
    async with httpx.AsyncClient(base_url=transformer.url, timeout=60) as client:
        expected = {prompt: (await stream_completion(client, prompt, MAX_TOKENS)).text for prompt in PROMPTS}
        rss_before = {}
        for round_number in range(WARM_UP_ROUNDS + MEASURED_ROUNDS):
            if round_number == WARM_UP_ROUNDS:
                rss_before = {name: rss_bytes(server) for name, server in servers.items()}
            check_round(await storm_round(client, round_number), round_number, expected)
            gauges = await asyncio.to_thread(settled_gauges, predictor)
            assert set(gauges.values()) == {0.0}, (round_number, gauges)
    rss_after = {name: rss_bytes(server) for name, server in servers.items()}
    requests = (WARM_UP_ROUNDS + MEASURED_ROUNDS) * CLIENTS_PER_ROUND
    print(f"\n{requests} streams, {requests // 5} left mid-stream; KV usage back to 0 after every round")
    for name in servers:
        growth = rss_after[name] - rss_before[name]
        print(f"{name} RSS over {MEASURED_ROUNDS} rounds: {rss_before[name] >> 20} -> {rss_after[name] >> 20} MiB")
        assert growth < RSS_TOLERANCE_BYTES, f"{name} grew by {growth >> 20} MiB"
