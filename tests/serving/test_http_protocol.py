"""serving/http_protocol.py: a response's head goes out in the same write as its first body bytes,
and still goes out on its own when the body takes its time: on the next turn, a stream's a
millisecond later (checked on the transport's writes, and end to end on uvicorn)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from serving.http_protocol import STREAM_HEAD_DELAY_SECONDS, HeadCoalescingProtocol, _HeadHoldingTransport
from tests.serving.ports import free_port_block

SLOW_BODY_SECONDS = 0.5


async def app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    if scope["path"] == "/slow":
        await asyncio.sleep(SLOW_BODY_SECONDS)
    await send({"type": "http.response.body", "body": b"data: first\n\n", "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    port = free_port_block(1)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=HeadCoalescingProtocol, log_level="warning",
                            lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    yield port
    server.should_exit = True
    thread.join(10)


def _first_read(port: int, path: str) -> tuple[bytes, float]:
    """The first bytes the client can read after sending its request, and how long they took."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(f"GET {path} HTTP/1.1\r\nhost: test\r\n\r\n".encode())
        started = time.monotonic()
        # Let everything written in the same turn arrive before reading.
        time.sleep(0.05)
        return client.recv(65536), time.monotonic() - started


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n"


def _writes(actions, then_seconds: float = 0.0) -> list[bytes]:
    """What reaches the real transport when `actions(transport)` runs in one turn of a loop,
    after which the loop turns a few more times (and then waits `then_seconds`)."""
    async def run() -> list[bytes]:
        real = RecordingTransport()
        actions(_HeadHoldingTransport(real, asyncio.get_running_loop()))
        for _ in range(3):
            await asyncio.sleep(0)
        writes = list(real.writes)
        await asyncio.sleep(then_seconds)
        return writes if not then_seconds else [writes, real.writes]

    return asyncio.run(run())


def test_a_head_goes_out_with_the_first_body_write():
    assert _writes(lambda transport: (transport.write(HEAD), transport.write(b"d\r\ndata: first\n\n\r\n"))) == [
        HEAD + b"d\r\ndata: first\n\n\r\n"]


def test_a_head_alone_goes_out_on_the_next_turn_and_before_a_close():
    assert _writes(lambda transport: transport.write(HEAD)) == [HEAD]
    assert _writes(lambda transport: (transport.write(HEAD), transport.close())) == [HEAD]


def test_a_streams_head_alone_waits_a_moment_then_goes_out():
    chunked = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    soon, later = _writes(lambda transport: transport.write(chunked), then_seconds=20 * STREAM_HEAD_DELAY_SECONDS)
    assert soon == [] and later == [chunked]


def test_interim_responses_and_bodies_are_not_held():
    switching = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n"
    assert _writes(lambda transport: (transport.write(switching), transport.write(b"frame"))) == [switching, b"frame"]


def test_a_head_is_not_held_back_waiting_for_a_slow_body(port):
    data, elapsed = _first_read(port, "/slow")
    assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"\r\n\r\n")
    assert elapsed < SLOW_BODY_SECONDS
