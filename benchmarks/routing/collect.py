"""Sending the skill suite through the real stack: each item as an OpenAI chat completion to the
router's edge, greedy, either naming a model (its answer, for the outcomes) or `auto` (the router
decides, and its headers say what it did)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from benchmarks.routing.strategies import Answered
from task_models.skills import Item, is_correct

CHAT_PATH = "/openai/v1/chat/completions"
# The longest answer of the suite is under 40 tokens: every answer fits, none is cut by the limit.
MAX_TOKENS = 48
CONCURRENCY = 32


@dataclass(frozen=True, slots=True)
class Routed:
    """An `auto` request's answer and what the router did with it."""

    answer: Answered
    route: str
    escalated: str | None
    score: float | None


def chat_body(item: Item, model: str, logprobs: bool) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": item.prompt}], "max_tokens": MAX_TOKENS,
            "temperature": 0.0}
    if logprobs:
        body["logprobs"] = True
    return body


def answered(item: Item, response: dict) -> Answered:
    choice = response["choices"][0]
    text = choice["message"].get("content") or ""
    tokens = (choice.get("logprobs") or {}).get("content") or []
    confidence = min((token["logprob"] for token in tokens), default=None)
    usage = response["usage"]
    return Answered(text, is_correct(item, text), usage["prompt_tokens"], usage["completion_tokens"],
                    choice.get("finish_reason"), confidence)


async def _post(client: httpx.AsyncClient, url: str, body: dict) -> httpx.Response:
    response = await client.post(url + CHAT_PATH, json=body)
    if response.status_code != 200:
        raise RuntimeError(f"{url}{CHAT_PATH} answered {response.status_code}: {response.text[:300]}")
    return response


async def _each(items: Sequence[Item], call) -> list:
    limit = asyncio.Semaphore(CONCURRENCY)

    async def bounded(item: Item):
        async with limit:
            return await call(item)

    return await asyncio.gather(*(bounded(item) for item in items))


async def ask_model(url: str, model: str, items: Sequence[Item], logprobs: bool) -> list[Answered]:
    """Each item answered by `model` (named, so the router sends it there and nowhere else)."""
    async with httpx.AsyncClient(timeout=120, trust_env=False) as client:
        async def call(item: Item) -> Answered:
            response = await _post(client, url, chat_body(item, model, logprobs))
            return answered(item, response.json())

        return await _each(items, call)


async def ask_router(url: str, items: Sequence[Item]) -> list[Routed]:
    """Each item sent as `model: auto`: the router's policy and cascade decide."""
    async with httpx.AsyncClient(timeout=120, trust_env=False) as client:
        async def call(item: Item) -> Routed:
            response = await _post(client, url, chat_body(item, "auto", logprobs=False))
            score = response.headers.get("x-route-score")
            return Routed(answered(item, response.json()), response.headers["x-route"],
                          response.headers.get("x-route-escalated"), float(score) if score is not None else None)

        return await _each(items, call)
