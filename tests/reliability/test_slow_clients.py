"""Slow and idle clients against real servers, on raw sockets: a request head or body trickled
(408 and closed after --header_timeout / --body_timeout, on every server), thousands of idle
connections (past --max_connections a new one gets 503 at once, idle ones are closed after the
keep-alive timeout), clients that stop reading (dropped after --send_timeout), and WebSocket
clients that flood messages (refused past --ws_max_in_flight, read no faster than they are
answered, their generations aborted when they are dropped). Each time a normal client is served
promptly meanwhile."""

from __future__ import annotations

import asyncio
import errno
import json
import resource
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.client import ClientProtocol
from websockets.protocol import State
from websockets.uri import parse_uri

from tests.router.conftest import start_router, write_config
from tests.runtime.conftest import start_server
from tests.servers import MODEL_NAME, REPO_ROOT, Server, free_port, wait_until_ready
from tests.transformer.conftest import start_transformer

from .conftest import rss_bytes, settled_gauges

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
SEND_TIMEOUT = 1.0
KEEP_ALIVE = 3
MAX_CONNECTIONS = 400
IDLE_CONNECTIONS = 1500
MAX_IN_FLIGHT = 4
SLOW_CLIENT_LIMITS = ["--header_timeout", str(HEADER_TIMEOUT), "--body_timeout", str(BODY_TIMEOUT),
                      "--send_timeout", str(SEND_TIMEOUT)]
# What "promptly" means for a normal client's request while a slow one is connected: generous,
# on a 2-core machine shared with the servers.
PROMPT_SECONDS = 1.0
# A slow client must be cut off well within this.
CUT_OFF_SECONDS = 10.0
READY = "/v2/health/ready"
LONG_GENERATION = {"max_tokens": 1500, "ignore_eos": True, "temperature": 0}
# Refused requests' ids at the protocol's longest, so that each refusal is a few hundred bytes.
FLOOD_ID = "f" * 128
# A flood that is never held back would send this much before giving up.
FLOOD_BYTES = 64 << 20


@dataclass
class Servers:
    predictor: Server
    transformer: Server
    router: Server
    graph_runner: Server


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[Servers]:
    """Each kind of server, with short timeouts; the predictor also with a small connection cap
    and keep-alive, the transformer with a small --ws_max_in_flight."""
    directory = tmp_path_factory.mktemp("slow-clients")
    started: list[Server] = []
    try:
        started.append(start_server(directory, *SLOW_CLIENT_LIMITS, "--max_connections", str(MAX_CONNECTIONS),
                                    "--timeout-keep-alive", str(KEEP_ALIVE)))
        predictor_host = f"127.0.0.1:{started[0].http_port}"
        started.append(start_transformer(directory, predictor_host, *SLOW_CLIENT_LIMITS,
                                         "--ws_max_in_flight", str(MAX_IN_FLIGHT)))
        # The large model is never called here.
        config = write_config(directory / "router.yaml", cascade={"enabled": False}, targets={
            "small": {"model": MODEL_NAME, "urls": [started[1].url]},
            "large": {"model": "llm-large", "urls": [f"http://127.0.0.1:{free_port()}"]}})
        started.append(start_router(config, directory, *SLOW_CLIENT_LIMITS))
        started.append(start_graph_runner(directory, started[0].url, *SLOW_CLIENT_LIMITS))
        yield Servers(*started)
    finally:
        for server in started:
            server.stop()


GRAPH = """\
apiVersion: serving.kserve.io/v1alpha1
kind: InferenceGraph
metadata:
  name: slow-clients
spec:
  nodes:
    root:
      routerType: Sequence
      steps:
        - serviceName: llm
"""


def start_graph_runner(directory: Path, service_url: str, *extra_args: str) -> Server:
    """`python -m router.graph` on a one-step graph, once /readyz answers."""
    graph_file = directory / "graph.yaml"
    graph_file.write_text(GRAPH)
    port = free_port()
    log_path = directory / f"graph-{port}.log"
    command = [sys.executable, "-m", "router.graph", str(graph_file), "--port", str(port),
               "--service", f"llm={service_url}", *extra_args]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    server = Server(process, port, 0, log_path)
    try:
        wait_until_ready(server, "/readyz")
    except BaseException:
        server.stop()
        raise
    return server


# Raw HTTP ----------------------------------------------------------------------------------


def connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.http_port), timeout=CUT_OFF_SECONDS)


def read_until_closed(sock: socket.socket) -> bytes:
    """What the server sends until it closes the connection."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def readable(sock: socket.socket, seconds: float) -> bool:
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        return bool(selector.select(seconds))


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def timed_get(url: str) -> float:
    """Seconds a normal client's GET of `url` takes, on a new connection; it must succeed."""
    started = time.monotonic()
    assert httpx.get(url, timeout=CUT_OFF_SECONDS).status_code == 200
    return time.monotonic() - started


def trickle_until_answered(sock: socket.socket, trickled: bytes, interval: float, normal_url: str) -> float:
    """Send `trickled` a byte every `interval` seconds until the server answers, once a normal
    client's GET of `normal_url` has been served promptly. Returns when the answer came, in
    seconds from the start."""
    started = time.monotonic()
    assert timed_get(normal_url) < PROMPT_SECONDS
    for byte in trickled * 100:
        if readable(sock, interval):
            return time.monotonic() - started
        sock.send(bytes([byte]))
        assert time.monotonic() - started < CUT_OFF_SECONDS, "the trickling client was never cut off"
    raise AssertionError("the trickling client was never cut off")


# Headers and bodies ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["predictor", "transformer", "router", "graph_runner"])
def test_a_client_trickling_its_headers_gets_408_and_is_closed(servers, kind):
    server = getattr(servers, kind)
    # The graph runner runs the graph on any other path.
    normal_url = server.url + ("/readyz" if kind == "graph_runner" else READY)
    with connect(server) as sock:
        sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nhost: test\r\n")
        answered_after = trickle_until_answered(sock, b"x-slowloris: never-ending\r\n", 0.2, normal_url)
        response = read_until_closed(sock)
    assert status_of(response) == 408, response
    assert b"did not arrive within 1 s" in response and b"connection: close" in response
    assert answered_after >= HEADER_TIMEOUT * 0.9


def test_a_client_trickling_its_body_gets_408_and_is_closed(servers):
    server = servers.predictor
    with connect(server) as sock:
        sock.sendall(b"POST /v2/models/demo/generate HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n"
                     b"content-length: 1000000\r\n\r\n{\"input_ids\": [")
        # A byte less often than the body timeout allows.
        answered_after = trickle_until_answered(sock, b"1, ", 2 * BODY_TIMEOUT, server.url + READY)
        response = read_until_closed(sock)
    assert status_of(response) == 408, response
    assert json.loads(response.split(b"\r\n\r\n", 1)[1]) == {
        "error": "the request body stalled: no byte came for 1 s"}
    assert BODY_TIMEOUT * 0.9 <= answered_after < 2 * BODY_TIMEOUT


# Idle connections --------------------------------------------------------------------------


def allow_open_files(count: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < count:
        if hard != resource.RLIM_INFINITY and hard < count:
            pytest.skip(f"this test opens {count} sockets; the open-files limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (count, hard))


def test_thousands_of_idle_connections_are_capped_and_closed_after_the_keep_alive(servers):
    """Half the sockets send a request and then idle on keep-alive, half never send a byte."""
    server = servers.predictor
    allow_open_files(IDLE_CONNECTIONS + 256)
    with httpx.Client(base_url=server.url, timeout=CUT_OFF_SECONDS) as normal_client:
        assert normal_client.get(READY).status_code == 200  # its connection is open from now on
        sockets = [connect(server) for _ in range(IDLE_CONNECTIONS)]
        try:
            for sock in sockets[::2]:
                sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: test\r\n\r\n")
            opened = time.monotonic()
            answers = first_answers(sockets, CUT_OFF_SECONDS)
            # On the connection it already has, the normal client is served while the cap is full.
            started = time.monotonic()
            assert normal_client.get(READY).status_code == 200
            assert time.monotonic() - started < PROMPT_SECONDS
            refused = {sock for sock in sockets if (answers[sock] or b"").startswith(b"HTTP/1.1 503")}
            kept = [sock for sock in sockets if sock not in refused]
            assert all(b"retry-after: 1" in answers[sock] for sock in refused)
            # Every socket past the cap was refused at once (the normal client holds one connection).
            assert len(kept) < MAX_CONNECTIONS and len(refused) > IDLE_CONNECTIONS - MAX_CONNECTIONS
            assert all(answers[sock] is None or status_of(answers[sock]) == 200 for sock in kept)
            # The kept ones, answered or silent, are closed once the keep-alive timeout has passed.
            assert closed_within(kept, KEEP_ALIVE + CUT_OFF_SECONDS)
            assert time.monotonic() - opened >= KEEP_ALIVE * 0.9
        finally:
            for sock in sockets:
                sock.close()
    assert timed_get(server.url + READY) < PROMPT_SECONDS


def first_answers(sockets: list[socket.socket], seconds: float) -> dict[socket.socket, bytes | None]:
    """What each socket has received within `seconds` (None: nothing), waiting no longer than
    until each refused socket (503) has been answered."""
    answers: dict[socket.socket, bytes | None] = dict.fromkeys(sockets)
    deadline = time.monotonic() + seconds
    with selectors.DefaultSelector() as selector:
        for sock in sockets:
            selector.register(sock, selectors.EVENT_READ)
        # Answers come within a moment; then the rest are idle on purpose.
        while (events := selector.select(min(0.5, max(0.0, deadline - time.monotonic())))):
            for key, _ in events:
                answers[key.fileobj] = key.fileobj.recv(65536)
                selector.unregister(key.fileobj)
    return answers


def closed_within(sockets: list[socket.socket], seconds: float) -> bool:
    """Whether the server closes every one of `sockets` (EOF) within `seconds`."""
    deadline = time.monotonic() + seconds
    open_sockets = set(sockets)
    with selectors.DefaultSelector() as selector:
        for sock in sockets:
            selector.register(sock, selectors.EVENT_READ)
        while open_sockets and time.monotonic() < deadline:
            for key, _ in selector.select(max(0.0, deadline - time.monotonic())):
                if not key.fileobj.recv(65536):
                    open_sockets.discard(key.fileobj)
                    selector.unregister(key.fileobj)
    return not open_sockets


# Clients that stop reading -----------------------------------------------------------------


def dropped_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server resets the connection within `seconds` (seen in the socket's pending
    error, without reading what the server sent)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) in (errno.ECONNRESET, errno.EPIPE):
            return True
        time.sleep(0.05)
    return False


def small_window_connection(server: Server) -> socket.socket:
    """A connection whose client reads nothing: with a small receive window, what the server
    sends piles up on the server's side."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(CUT_OFF_SECONDS)
    sock.connect(("127.0.0.1", server.http_port))
    return sock


def test_an_http_client_that_stops_reading_is_dropped(servers):
    server = servers.predictor
    # Pipelined requests for more than the kernel's buffers on both sides hold (a few MiB on loopback).
    requests = -(-(16 << 20) // len(httpx.get(server.url + "/metrics").content))
    with small_window_connection(server) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nhost: test\r\n\r\n" * requests)
        assert timed_get(server.url + READY) < PROMPT_SECONDS
        assert dropped_within(sock, SEND_TIMEOUT + CUT_OFF_SECONDS)
    assert timed_get(server.url + READY) < PROMPT_SECONDS


class RawWebSocket:
    """A WebSocket client on a plain socket, its frames built by websockets' sans-I/O protocol:
    it can send without ever reading."""

    def __init__(self, server: Server) -> None:
        self.protocol = ClientProtocol(parse_uri(ws_url(server)))
        self.sock = small_window_connection(server)
        self.protocol.send_request(self.protocol.connect())
        self.sock.sendall(b"".join(self.protocol.data_to_send()))
        while self.protocol.state is State.CONNECTING:
            self.protocol.receive_data(self.sock.recv(4096))
        assert self.protocol.state is State.OPEN, self.protocol.handshake_exc

    def frames(self, *messages: str) -> bytes:
        for message in messages:
            self.protocol.send_text(message.encode())
        return b"".join(self.protocol.data_to_send())

    def send_until_held_back(self, frames: bytes, most_bytes: int, held_seconds: float = 0.5) -> int:
        """Send `frames` again and again until `most_bytes` are sent or the server has taken
        nothing for `held_seconds`. Returns the bytes sent."""
        self.sock.settimeout(held_seconds)
        view, offset, sent = memoryview(frames), 0, 0
        while sent < most_bytes:
            try:
                written = self.sock.send(view[offset:])
            except TimeoutError:
                break
            sent += written
            offset = (offset + written) % len(frames)
        return sent


def ws_url(server: Server) -> str:
    return f"ws://127.0.0.1:{server.http_port}/ws/v1/generate"


def generate(request_id: str, prompt: str = "Modules", **fields) -> str:
    return json.dumps({"type": "generate", "id": request_id, "prompt": prompt, **fields})


async def timed_websocket_generate(server: Server) -> float:
    """Seconds a normal WebSocket client's short generation takes, on a new connection."""
    started = time.monotonic()
    async with websockets.connect(ws_url(server)) as socket_:
        await socket_.send(generate("normal", max_tokens=4, ignore_eos=True))
        while (message := json.loads(await asyncio.wait_for(socket_.recv(), CUT_OFF_SECONDS)))["type"] == "delta":
            pass
    assert (message["type"], message["id"], message["finish_reason"]) == ("done", "normal", "length"), message
    return time.monotonic() - started


async def test_a_websocket_client_that_floods_and_never_reads_is_held_back_then_dropped(servers):
    transformer, predictor = servers.transformer, servers.predictor
    tokens_before = predictor.metric("vllm:generation_tokens_total")
    memory_before = rss_bytes(transformer)
    flooder = RawWebSocket(transformer)
    with flooder.sock:
        flooder.sock.sendall(flooder.frames(*(generate(f"long-{index}", **LONG_GENERATION)
                                              for index in range(MAX_IN_FLIGHT))))
        running = predictor.wait_for_metric("vllm:num_requests_running", lambda count: count == MAX_IN_FLIGHT)
        assert running == MAX_IN_FLIGHT
        # Each refused at once (too_many_requests), in a reply nobody reads.
        refused = flooder.frames(*[generate(FLOOD_ID, "x")] * 1000)
        sent = flooder.send_until_held_back(refused, FLOOD_BYTES)
        assert sent < FLOOD_BYTES, "the server read the flood as fast as it came"
        assert await timed_websocket_generate(transformer) < PROMPT_SECONDS
        assert timed_get(transformer.url + READY) < PROMPT_SECONDS
        assert dropped_within(flooder.sock, SEND_TIMEOUT + CUT_OFF_SECONDS)
    # The dropped connection's generations were aborted, long before their end; their KV blocks are free.
    assert set(settled_gauges(predictor).values()) == {0.0}
    generated = predictor.metric("vllm:generation_tokens_total") - tokens_before
    assert generated < MAX_IN_FLIGHT * LONG_GENERATION["max_tokens"] / 2
    assert rss_bytes(transformer) - memory_before < 64 << 20


async def test_a_websocket_flood_past_max_in_flight_is_refused_with_one_answer_each(servers):
    transformer = servers.transformer
    ids = [f"r{index}" for index in range(1000)]
    async with websockets.connect(ws_url(transformer)) as flooder:
        for request_id in ids:
            await flooder.send(generate(request_id, max_tokens=8, ignore_eos=True))
        normal_latency = await timed_websocket_generate(transformer)
        messages, ended = [], 0
        while ended < len(ids):
            messages.append(json.loads(await asyncio.wait_for(flooder.recv(), CUT_OFF_SECONDS)))
            ended += messages[-1]["type"] != "delta"
    assert normal_latency < PROMPT_SECONDS
    ends = [message for message in messages if message["type"] != "delta"]
    assert sorted(message["id"] for message in ends) == sorted(ids)  # one answer each
    refused = [message for message in ends if message["type"] == "error"]
    assert {message["code"] for message in refused} == {"too_many_requests"}
    assert len(ends) - len(refused) >= MAX_IN_FLIGHT
    assert most_in_flight(messages) <= MAX_IN_FLIGHT


def most_in_flight(messages: list[dict]) -> int:
    """The most requests that were streaming at once, as the client saw them."""
    streaming: set[str] = set()
    most = 0
    for message in messages:
        if message["type"] == "delta":
            streaming.add(message["id"])
        else:
            streaming.discard(message["id"])
        most = max(most, len(streaming))
    return most
