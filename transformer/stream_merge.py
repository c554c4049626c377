"""Several generations for one request (OpenAI's `n`, or a list of prompts): their streams run
concurrently and are merged in arrival order, each item tagged with its choice index."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import TypeVar

Item = TypeVar("Item")
_END = object()


async def merge_streams(streams: list[AsyncIterator[Item]]) -> AsyncIterator[tuple[int, Item]]:
    """(index, item) pairs from all streams as they come. The first failure is raised here and
    the other streams are closed; closing the merge closes them all."""
    if len(streams) == 1:
        async with aclosing(streams[0]) as only:
            async for item in only:
                yield 0, item
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[Item]) -> None:
        try:
            async with aclosing(stream):
                async for item in stream:
                    await queue.put((index, item))
            await queue.put((index, _END))
        except Exception as exc:
            await queue.put((index, exc))

    tasks = [asyncio.create_task(pump(index, stream)) for index, stream in enumerate(streams)]
    remaining = len(tasks)
    try:
        while remaining:
            index, item = await queue.get()
            if item is _END:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
