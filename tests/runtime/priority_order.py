"""Whether a request's `priority` reaches the engine, seen from outside: with the predictor's one
batch slot (--max_num_seqs 1) held by a long stream, a request queued later at a lower priority
value is answered before one queued earlier at a higher value. Shared by the predictor's tests
and the transformer's (whose requests must carry the field through to the predictor)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from tests.servers import Server

# Queued first at 5, then at 0 (vLLM's default): the engine must start the second first.
QUEUED_PRIORITIES = (5, 0)


@dataclass(frozen=True, slots=True)
class PriorityProbe:
    url: str  # where the requests go (the predictor, or a transformer in front of it)
    hold_path: str  # a streamed route, whose long request holds the one batch slot
    hold_body: dict
    path: str  # a short request's route, and its body at a priority
    body: Callable[[int], dict]


async def answer_order(predictor: Server, probe: PriorityProbe) -> list[int]:
    """The priorities of QUEUED_PRIORITIES in the order their requests were answered."""
    answered: list[int] = []
    async with httpx.AsyncClient(base_url=probe.url, timeout=60) as client:

        async def send(priority: int) -> None:
            response = await client.post(probe.path, json=probe.body(priority))
            assert response.status_code == 200, response.text
            answered.append(priority)

        async with client.stream("POST", probe.hold_path, json=probe.hold_body) as holding:
            lines = holding.aiter_lines()
            while not (await anext(lines)).startswith("data: "):
                pass  # its first token: it holds the slot
            queued = []
            for count, priority in enumerate(QUEUED_PRIORITIES, 1):
                queued.append(asyncio.create_task(send(priority)))
                waiting = await asyncio.to_thread(predictor.wait_for_metric, "vllm:num_requests_waiting",
                                                  lambda value, count=count: value == count)
                assert waiting == count
        # Leaving the stream aborted its request: the slot is free for the queued ones.
        await asyncio.gather(*queued)
    return answered
