"""A real redis-server for the tests, on 127.0.0.1 and a free port (Debian's `redis-server`
package; without it, the tests that need it skip and say so)."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import free_port

REDIS_MISSING = "needs redis-server (Debian package `redis-server`: apt-get install -y redis-server)"


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
