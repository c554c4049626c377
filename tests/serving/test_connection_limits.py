"""serving/connection_limits.py on uvicorn in this process, for the cases a slow or odd client
cannot be told apart from a normal one by timing alone: a blank line between requests starts the
head deadline, a body the app is slow to take is not a stalled body, no legitimate head is
refused as too large, and a head that stalls behind a streamed response closes the connection
after that response instead of cutting into it. Also the flags' checks. (Against real servers:
tests/reliability/test_slow_clients.py.)"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import time
from collections.abc import Iterator

import pytest
from kserve import model_server

from router.graph import main as graph_main
from serving.connection_limits import BoundedHttpProtocol, ConnectionLimits
from serving.server import add_server_limit_arguments, check_server_limits
from tests.router.graph_fakes import serve_in_thread

LIMITS = ConnectionLimits(header_timeout=0.5, max_header_bytes=4096, body_timeout=0.5, send_timeout=1.0,
                          max_connections=100, max_message_bytes=1 << 20)
STREAM_SECONDS = 2 * LIMITS.header_timeout
WAIT_SECONDS = 10.0


async def app(scope, receive, send) -> None:
    """Answers with the request body's size: /slow-reader reads the body only after longer than
    the body timeout, /stream sends the answer's head at once and its body after longer than the
    header timeout, anything else answers at once."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow-reader":
        await asyncio.sleep(2 * LIMITS.body_timeout)
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = b"%d" % size
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    if scope["path"] == "/stream":
        await asyncio.sleep(STREAM_SECONDS)
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(BoundedHttpProtocol, "limits", LIMITS, raising=False)
        with serve_in_thread(app, http=BoundedHttpProtocol, ws="none", lifespan="off") as url:
            yield int(url.rsplit(":", 1)[1])


def exchange(port: int, *writes: bytes, pause: float = 0.0) -> bytes:
    """Send `writes` (`pause` seconds apart), then read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_SECONDS) as client:
        for data in writes:
            client.sendall(data)
            time.sleep(pause)
        received = b""
        while chunk := client.recv(65536):
            received += chunk
        return received


def statuses(response: bytes) -> list[int]:
    """The status of each response in `response` (the app's bodies hold no status line)."""
    return [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", response)]


def test_a_blank_line_then_silence_gets_408_instead_of_holding_the_connection(port):
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_SECONDS) as client:
        client.sendall(b"\r\n")
        response = client.recv(65536)
    assert statuses(response) == [408]
    assert time.monotonic() - started < WAIT_SECONDS


def test_a_body_the_app_is_slow_to_take_is_not_a_stalled_body(port):
    body = b"x" * (256 << 10)  # more than uvicorn buffers before it stops reading
    head = b"POST /slow-reader HTTP/1.1\r\nhost: test\r\nconnection: close\r\ncontent-length: %d\r\n\r\n" % len(body)
    response = exchange(port, head + body)
    assert statuses(response) == [200] and response.endswith(b"%d" % len(body))


def test_heads_over_the_limit_get_431_and_none_under_it_does(port):
    big_header = b"x-big: " + b"a" * LIMITS.max_header_bytes + b"\r\n"
    refused = exchange(port, b"GET / HTTP/1.1\r\nhost: test\r\n", big_header[:2000], big_header[2000:], pause=0.05)
    assert statuses(refused) == [431]
    # A body larger than the limit, then the start of a request pipelined behind it in the same write.
    body = b"y" * (4 * LIMITS.max_header_bytes)
    post = b"POST / HTTP/1.1\r\nhost: test\r\ncontent-length: %d\r\n\r\n" % len(body) + body
    pipelined = exchange(port, post + b"GET / HTTP/1.1\r\nhost: test\r\n", b"connection: close\r\n\r\n", pause=0.05)
    assert statuses(pipelined) == [200, 200]


def test_a_head_stalled_behind_a_stream_closes_the_connection_after_it(port):
    response = exchange(port, b"GET /stream HTTP/1.1\r\nhost: test\r\n\r\nGET / HTTP/1.1\r\nhost:", pause=0.01)
    assert statuses(response) == [200] and response.endswith(b"0")


# Flags ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("arguments", "message"), [
    (["--header_timeout", "0"], "--header_timeout must be a finite number of seconds > 0, not 0"),
    (["--body_timeout", "nan"], "--body_timeout must be a finite number of seconds > 0, not nan"),
    (["--send_timeout", "inf"], "--send_timeout must be a finite number of seconds > 0, not inf"),
    (["--max_header_bytes", "0"], "--max_header_bytes must be >= 1"),
    (["--max_connections", "-5"], "--max_connections must be >= 1"),
    (["--timeout-keep-alive", "0"], "--timeout-keep-alive must be >= 1"),
])
def test_bad_limits_are_refused_with_what_is_wrong(capsys, tmp_path, arguments, message):
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    add_server_limit_arguments(parser)
    with pytest.raises(SystemExit) as exit_info:
        check_server_limits(parser, parser.parse_args(arguments))
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    if arguments[0] != "--timeout-keep-alive":  # KServe's flag; the graph runner's keep-alive is serverIdle
        graph = tmp_path / "graph.yaml"
        graph.write_text("apiVersion: serving.kserve.io/v1alpha1\nkind: InferenceGraph\nmetadata: {name: g}\n"
                         "spec: {nodes: {root: {routerType: Sequence, steps: [{serviceUrl: 'http://h/'}]}}}\n")
        with pytest.raises(SystemExit) as exit_info:
            graph_main([str(graph), *arguments])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
