"""Request bodies over --max_body_bytes get 413, whether declared by Content-Length or streamed
without one, and the server stays healthy; a v2 infer body without Content-Type is read as JSON."""

from __future__ import annotations

import json

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
