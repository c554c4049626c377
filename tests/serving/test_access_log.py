"""The access log is written a moment after the response starts (off the path of the prefill that
follows a stream's admission), from the event loop, and at once where no loop runs; lines still
waiting when the loop stops are written at flush (logging flushes every handler at exit)."""

from __future__ import annotations

import asyncio
import logging

from serving.server import ACCESS_LOG_DELAY_SECONDS, _WrittenAMomentLater


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _logger(collect: Collect) -> logging.Logger:
    logger = logging.getLogger(f"test-access-{id(collect)}")
    logger.handlers = [_WrittenAMomentLater([collect])]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def test_records_wait_a_moment():
    collect = Collect()
    logger = _logger(collect)

    async def respond() -> tuple[list[str], list[str]]:
        logger.info("GET / 200")
        await asyncio.sleep(0)
        seen_on_the_next_turn = list(collect.messages)
        await asyncio.sleep(20 * ACCESS_LOG_DELAY_SECONDS)
        return seen_on_the_next_turn, list(collect.messages)

    assert asyncio.run(respond()) == ([], ["GET / 200"])


def test_without_a_loop_records_are_written_at_once():
    collect = Collect()
    _logger(collect).info("started")
    assert collect.messages == ["started"]


def test_records_still_waiting_when_the_loop_stops_are_written_at_flush_in_order():
    collect = Collect()
    logger = _logger(collect)

    async def respond_and_stop() -> None:
        logger.info("GET /a 200")
        logger.info("GET /b 200")

    asyncio.run(respond_and_stop())
    assert collect.messages == []
    logger.handlers[0].flush()
    assert collect.messages == ["GET /a 200", "GET /b 200"]
    logger.handlers[0].flush()
    assert collect.messages == ["GET /a 200", "GET /b 200"]
