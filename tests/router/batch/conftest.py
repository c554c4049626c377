"""Fixtures of the batch store's tests: `batch_store`, which runs a test once on the SQLite store
and once on the Redis store (the session's redis-server, under the test's own key prefix), and
`store_arguments`, the command-line arguments that open the same store in another process
(tests/router/batch/queue_worker.py), and `fakes`, the fake transformers the API tests' routers
send to."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from router.batch.store import BatchStore
from tests.router.batch.queue_worker import opened_store
from tests.router.edge_fakes import FakeTransformer, running_transformers

BACKENDS = ["sqlite", "redis"]


@dataclass(frozen=True)
class StoreLocation:
    """Where a test's store lives: a SQLite file, or a key prefix in the session's redis-server."""

    sqlite_path: Path
    redis_url: str | None = None
    redis_prefix: str | None = None

    def arguments(self) -> list[str]:
        """queue_worker.py's first arguments, which open this store."""
        if self.redis_url is None:
            return [str(self.sqlite_path)]
        return [str(self.sqlite_path), self.redis_url, str(self.redis_prefix)]


@pytest.fixture(params=BACKENDS)
def store_location(request, tmp_path) -> StoreLocation:
    if request.param == "sqlite":
        return StoreLocation(tmp_path / "batches.db")
    redis_url = request.getfixturevalue("redis_server").url
    return StoreLocation(tmp_path / "unused.db", redis_url, request.getfixturevalue("redis_prefix"))


@pytest.fixture
async def batch_store(store_location: StoreLocation) -> AsyncIterator[BatchStore]:
    async with opened_store(*store_location.arguments()) as store:
        yield store


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeTransformer]]:
    """The two targets of a module's routers: fake transformers for the small and the large model."""
    with running_transformers("llm-small-a", "llm-large-a") as running:
        yield running
