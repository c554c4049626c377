"""A router killed with -9 mid-batch and started again on the same state directory: the lines it
had claimed are claimed again once their leases run out, and the batch completes with exactly one
output line per custom_id, none missing, none doubled."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from tests.router.conftest import start_router
from tests.router.edge_fakes import FakeTransformer, running_transformers

from .batch_helpers import CHAT, all_lines, batch_config, chat_line, client_of, upload, wait_for_end, wait_for_status

LINES = 80
LEASE_SECONDS = "2"


@pytest.fixture
def fakes() -> Iterator[dict[str, FakeTransformer]]:
    with running_transformers("llm-small-a", "llm-large-a") as running:
        yield running


def test_a_router_killed_mid_batch_completes_it_after_a_restart(fakes, tmp_path):
    fakes["llm-small-a"].delay = 0.1
    config = batch_config(tmp_path / "router.yaml", fakes["llm-small-a"], fakes["llm-large-a"])
    arguments = ("--batch_lease_seconds", LEASE_SECONDS, "--batch_concurrency", "4")
    first = start_router(config, tmp_path, *arguments)
    try:
        client = client_of(first.url)
        lines = [chat_line(f"k-{index}") for index in range(LINES)]
        batch = client.batches.create(input_file_id=upload(client, lines), endpoint=CHAT, completion_window="24h")
        wait_for_status(client, batch.id, lambda current: current.request_counts.completed >= 20)
    finally:
        first.process.send_signal(signal.SIGKILL)
        first.process.wait()

    second = start_router(config, tmp_path, *arguments)
    try:
        client = client_of(second.url)
        batch = wait_for_end(client, batch.id, timeout=60)
        assert batch.status == "completed", batch
        assert (batch.request_counts.completed, batch.request_counts.failed) == (LINES, 0)
        output, errors = all_lines(client, batch)
        assert errors == []
        assert [line["custom_id"] for line in output] == [line["custom_id"] for line in lines]
        # Some lines ran twice (answered to the killed router, or claimed again): kept once.
        assert len(fakes["llm-small-a"].received) >= LINES
    finally:
        assert second.stop() == 0, second.log()[-3000:]
