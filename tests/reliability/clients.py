"""Async clients of the reliability tests: OpenAI completions on the transformer, whole or streamed,
and generate on the predictor, each reporting what a user would see."""

from __future__ import annotations

import json
from dataclasses import dataclass

import httpx

from tests.servers import MODEL_NAME

COMPLETIONS = "/openai/v1/completions"
GENERATE = f"/v2/models/{MODEL_NAME}/generate"


@dataclass
class Outcome:
    status: int
    text: str = ""
    retry_after: str | None = None
    error: str | None = None  # the error event that ended a stream, if one did


def completion_body(prompt: str, max_tokens: int, stream: bool = False, **fields) -> dict:
    return {"model": MODEL_NAME, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": stream,
            **fields}


async def complete(client: httpx.AsyncClient, prompt: str, max_tokens: int) -> Outcome:
    response = await client.post(COMPLETIONS, json=completion_body(prompt, max_tokens))
    if response.status_code != 200:
        return Outcome(response.status_code, retry_after=response.headers.get("retry-after"))
    return Outcome(200, response.json()["choices"][0]["text"])


async def stream_completion(client: httpx.AsyncClient, prompt: str, max_tokens: int,
                            leave_after_events: int | None = None, **fields) -> Outcome:
    """A streamed completion read to its end, or left (the connection closed) after
    `leave_after_events` events."""
    body = completion_body(prompt, max_tokens, stream=True, **fields)
    async with client.stream("POST", COMPLETIONS, json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return Outcome(response.status_code, retry_after=response.headers.get("retry-after"))
        outcome = Outcome(200)
        events = 0
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line.removeprefix("data: "))
            if "error" in event:
                outcome.error = event["error"]["message"]
                break
            outcome.text += "".join(choice["text"] for choice in event["choices"])
            events += 1
            if events == leave_after_events:
                break
        return outcome


async def generate(client: httpx.AsyncClient, prompt_ids: list[int], max_tokens: int) -> Outcome:
    body = {"input_ids": prompt_ids, "parameters": {"max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}}
    response = await client.post(GENERATE, json=body)
    if response.status_code != 200:
        return Outcome(response.status_code, retry_after=response.headers.get("retry-after"))
    return Outcome(200, json.dumps(response.json()["output_ids"]))
