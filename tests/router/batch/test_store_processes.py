"""The batch store shared by processes (two router processes on one file, or replicas on one
Redis): two processes draining one queue each take their own lines, and lines claimed by a process
killed with -9 are claimed again once their lease runs out, none lost."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from router.batch.store import BatchStore
from tests.router.batch.conftest import StoreLocation
from tests.router.batch.test_store import add_batch_of

REPOSITORY = Path(__file__).resolve().parents[3]
LINES = 200
# Longer than the whole drain: no lease runs out, so no line may go to both processes.
DRAIN_LEASE_SECONDS = 30.0
HOLD_LEASE_SECONDS = 0.5
WORKER_TIMEOUT_SECONDS = 60.0


def start_worker(*arguments: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.router.batch.queue_worker", *arguments],
                            cwd=REPOSITORY, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPOSITORY)})


def start_together(workers: list[subprocess.Popen]) -> None:
    """Once every worker says it is ready, tell them all to start: a worker that took longer to
    start (a busy machine) would otherwise find the queue drained by the other."""
    for worker in workers:
        line = worker.stdout.readline()
        assert line == "ready\n", (line, worker.stderr.read() if worker.poll() is not None else "")
    for worker in workers:
        worker.stdin.write("go\n")
        worker.stdin.flush()


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.communicate(timeout=WORKER_TIMEOUT_SECONDS)


async def test_two_processes_draining_one_queue_each_take_their_own_lines(batch_store: BatchStore,
                                                                           store_location: StoreLocation):
    await add_batch_of(batch_store, "batch-1", LINES)
    workers = [start_worker("drain", f"worker-{number}", str(DRAIN_LEASE_SECONDS), "0",
                            *store_location.arguments()) for number in (1, 2)]
    try:
        await asyncio.to_thread(start_together, workers)
        outputs = await asyncio.gather(*(asyncio.to_thread(worker.communicate, timeout=WORKER_TIMEOUT_SECONDS)
                                         for worker in workers))
    finally:
        for worker in workers:
            stop(worker)
    for worker, (_, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr

    claimed = [stdout.split() for stdout, _ in outputs]
    assert all(claimed), "both processes claimed lines"
    assert not set(claimed[0]) & set(claimed[1])
    assert sorted(claimed[0] + claimed[1]) == sorted(f"request-{index}" for index in range(LINES))
    results = await batch_store.results("batch-1")
    assert [result.custom_id for result in results] == [f"request-{index}" for index in range(LINES)]
    assert {result.custom_id: result.line.decode() for result in results} == {
        custom_id: f"worker-{number}" for number, custom_ids in enumerate(claimed, 1) for custom_id in custom_ids}
    assert await batch_store.counts("batch-1") == (LINES, 0)
    assert await batch_store.claim("worker-3", 10, DRAIN_LEASE_SECONDS) == []


async def test_lines_of_a_process_killed_before_its_ack_are_claimed_again(batch_store: BatchStore,
                                                                          store_location: StoreLocation):
    await add_batch_of(batch_store, "batch-1", 10)
    worker = start_worker("hold", "worker-killed", str(HOLD_LEASE_SECONDS), "4", *store_location.arguments())
    try:
        held = await asyncio.to_thread(read_until_claimed, worker)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=WORKER_TIMEOUT_SECONDS)
    finally:
        stop(worker)
    assert [custom_id for custom_id, _ in held] == [f"request-{index}" for index in range(4)]

    await asyncio.sleep(HOLD_LEASE_SECONDS + 0.2)
    reclaimed = await batch_store.claim("worker-parent", 10, HOLD_LEASE_SECONDS)
    assert [(item.custom_id, item.deliveries) for item in reclaimed] == (
        [(f"request-{index}", 2) for index in range(4)] + [(f"request-{index}", 1) for index in range(4, 10)])
    assert [item.receipt for item in reclaimed[:4]] == [receipt for _, receipt in held]
    assert reclaimed[0].body == b'{"body": 0}'


def read_until_claimed(worker: subprocess.Popen) -> list[tuple[str, str]]:
    """The (custom_id, receipt) lines the worker printed before `claimed`."""
    held = []
    for line in worker.stdout:
        if line.strip() == "claimed":
            return held
        custom_id, receipt = line.split()
        held.append((custom_id, receipt))
    raise AssertionError(f"the worker ended before claiming: {worker.stderr.read()}")
