"""A router killed with -9 mid-batch: started again on the same state directory (SQLite), or with
a second router on the same Redis, the lines it had claimed are claimed again once their leases
run out, and the batch completes with exactly one output line per custom_id, none missing, none
doubled."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
from openai import OpenAI

from tests.router.conftest import start_router
from tests.router.edge_fakes import FakeTransformer, running_transformers
from tests.servers import Server

from .batch_helpers import (
    CHAT,
    all_lines,
    batch_config,
    chat_line,
    client_of,
    upload,
    wait_for_end,
    wait_for_status,
)

LINES = 80
LEASE_SECONDS = "2"


@pytest.fixture
def fakes() -> Iterator[dict[str, FakeTransformer]]:
    with running_transformers("llm-small-a", "llm-large-a") as running:
        yield running


def kill(server: Server) -> None:
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()


def assert_complete_once(client: OpenAI, batch_id: str, lines: list[dict]) -> None:
    batch = wait_for_end(client, batch_id, timeout=60)
    assert batch.status == "completed", batch
    assert (batch.request_counts.completed, batch.request_counts.failed) == (len(lines), 0)
    output, errors = all_lines(client, batch)
    assert errors == []
    assert [line["custom_id"] for line in output] == [line["custom_id"] for line in lines]


def test_a_router_killed_mid_batch_completes_it_after_a_restart(fakes, tmp_path):
    fakes["llm-small-a"].delay = 0.2
    config = batch_config(tmp_path / "router.yaml", fakes["llm-small-a"], fakes["llm-large-a"])
    arguments = ("--batch_lease_seconds", LEASE_SECONDS, "--batch_concurrency", "4")
    first = start_router(config, tmp_path, *arguments)
    try:
        client = client_of(first.url)
        lines = [chat_line(f"k-{index}") for index in range(LINES)]
        batch = client.batches.create(input_file_id=upload(client, lines), endpoint=CHAT, completion_window="24h")
        wait_for_status(client, batch.id, lambda current: current.request_counts.completed >= 20)
    finally:
        kill(first)

    second = start_router(config, tmp_path, *arguments)
    try:
        assert_complete_once(client_of(second.url), batch.id, lines)
        # Some lines ran twice (answered to the killed router, or claimed again): kept once.
        assert len(fakes["llm-small-a"].received) >= LINES
    finally:
        assert second.stop() == 0, second.log()[-3000:]


def test_two_routers_on_one_redis_finish_a_batch_when_one_is_killed(fakes, tmp_path, redis_server):
    fakes["llm-small-a"].delay = 0.2
    config = batch_config(tmp_path / "router.yaml", fakes["llm-small-a"], fakes["llm-large-a"])
    # A database of this test's own on the session's redis-server.
    arguments = ("--batch_lease_seconds", LEASE_SECONDS, "--batch_concurrency", "4", "--redis_url",
                 f"redis://127.0.0.1:{redis_server.port}/7")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    doomed = start_router(config, tmp_path / "a", *arguments)
    survivor = start_router(config, tmp_path / "b", *arguments)
    try:
        lines = [chat_line(f"r-{index}") for index in range(LINES)]
        # Created on one router, visible on the other: the store is shared.
        client = client_of(doomed.url)
        batch = client.batches.create(input_file_id=upload(client, lines), endpoint=CHAT, completion_window="24h")
        wait_for_status(client_of(survivor.url), batch.id, lambda current: current.request_counts.completed >= 20)
        kill(doomed)
        assert_complete_once(client_of(survivor.url), batch.id, lines)
    finally:
        kill(doomed)
        assert survivor.stop() == 0, survivor.log()[-3000:]
