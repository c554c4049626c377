"""Group commit, the ledgers' way to write fast: the writes that queue while one batch is written go
together in the next, and every caller of a batch is woken with its outcome."""

from __future__ import annotations

import asyncio


def settle(waiting: list[asyncio.Future], error: Exception | None) -> None:
    """Wakes the callers of a batch: all done, or all failed with `error`. A caller that has
    gone (its future cancelled) is skipped."""
    for future in waiting:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
