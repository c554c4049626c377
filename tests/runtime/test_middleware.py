"""Request bodies over --max_body_bytes get 413, whether declared by Content-Length or streamed
without one, and the server stays healthy; the client gets that 413 even while it is still sending
(the server reads the rest of the body first, if it comes within seconds); a v2 infer body without
Content-Type is read as JSON."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import time

import httpx

from serving.middleware import DRAIN_SECONDS

from .conftest import MODEL_NAME

LIMIT = 1 << 20  # the server's default --max_body_bytes


def oversized_body() -> bytes:
    return json.dumps({"input_ids": [1] * (LIMIT // 2)}).encode()


def test_declared_oversized_body_is_413(http):
    response = http.post(f"/v2/models/{MODEL_NAME}/generate", content=oversized_body(),
                         headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert str(LIMIT) in response.json()["error"]
    assert http.get(f"/v2/models/{MODEL_NAME}/ready").status_code == 200


def test_streamed_oversized_body_is_413(http):
    body = oversized_body()

    def chunks():
        for start in range(0, len(body), 64 * 1024):
            yield body[start:start + 64 * 1024]

    # A generator body goes out chunked, with no Content-Length to check up front.
    response = http.post(f"/v1/models/{MODEL_NAME}:predict", content=chunks(),
                         headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert http.get(f"/v2/models/{MODEL_NAME}/ready").status_code == 200


async def test_an_asyncio_client_gets_the_413_of_a_body_just_over_the_limit(server):
    # httpx's asyncio client sends the whole body, then reads: a server that closed the connection
    # on the unread rest of the body reset it, and the client saw a read error instead.
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        for _ in range(10):
            response = await client.post(f"/v2/models/{MODEL_NAME}/generate", content=b"x" * (LIMIT + 300))
            assert response.status_code == 413
            await asyncio.sleep(0)


def test_a_body_over_the_limit_is_read_to_its_end_and_the_connection_kept(server):
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        connection.request("POST", f"/v2/models/{MODEL_NAME}/generate", body=b"x" * (2 * LIMIT))
        response = connection.getresponse()
        response.read()
        assert response.status == 413 and response.getheader("connection") != "close"
        first_socket = connection.sock
        connection.request("GET", f"/v2/models/{MODEL_NAME}/ready")
        assert connection.getresponse().status == 200
        assert connection.sock is first_socket
    finally:
        connection.close()


def test_a_client_that_stops_sending_its_body_gets_the_413_and_a_close(server):
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=30) as connection:
        # The head, and only a part of the body it declares.
        connection.sendall(f"POST /v2/models/{MODEL_NAME}/generate HTTP/1.1\r\nHost: x\r\n"
                           f"Content-Length: {2 * LIMIT}\r\n\r\n".encode() + b"x" * 1000)
        started = time.monotonic()
        head = connection.recv(65536).lower()
        waited = time.monotonic() - started
    assert head.startswith(b"http/1.1 413") and b"connection: close" in head
    assert DRAIN_SECONDS - 0.5 < waited < DRAIN_SECONDS + 5


def test_body_under_the_limit_is_served(http):
    response = http.post(f"/v2/models/{MODEL_NAME}/generate", json={"input_ids": [1] * 1000,
                                                                   "parameters": {"max_tokens": 1}})
    assert response.status_code == 200


def test_v2_infer_without_content_type_is_read_as_json(http):
    # As tritonclient sends it: a JSON body and no Content-Type header.
    body = {"inputs": [{"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]}],
            "parameters": {"max_tokens": 2}}
    response = http.post(f"/v2/models/{MODEL_NAME}/infer", content=json.dumps(body).encode())
    assert "content-type" not in response.request.headers
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["shape"] == [1, 2]
