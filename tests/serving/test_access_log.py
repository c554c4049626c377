"""The access log is written on the event loop's next turn, after the response's first bytes,
and at once where no loop runs."""

from __future__ import annotations

import asyncio
import logging

from serving.server import _OnTheNextTurn


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _logger(collect: Collect) -> logging.Logger:
    logger = logging.getLogger(f"test-access-{id(collect)}")
    logger.handlers = [_OnTheNextTurn([collect])]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def test_records_wait_for_the_next_turn_of_the_loop():
    collect = Collect()
    logger = _logger(collect)

    async def respond() -> list[str]:
        logger.info("GET / 200")
        seen_before_yielding = list(collect.messages)
        await asyncio.sleep(0)
        return seen_before_yielding

    assert asyncio.run(respond()) == []
    assert collect.messages == ["GET / 200"]


def test_without_a_loop_records_are_written_at_once():
    collect = Collect()
    _logger(collect).info("started")
    assert collect.messages == ["started"]
