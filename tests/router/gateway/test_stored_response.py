"""A stored answer survives its encoding byte for byte, and the body digest tells requests apart
by what they ask, not by how their JSON is spelled."""

from __future__ import annotations

import pytest

from router.gateway.stored_response import StoredResponse, UnreadableStoredResponse, body_digest

STREAM = b'data: {"choices":[{"text":"a\\nb"}]}\n\ndata: [DONE]\n\n'


def test_a_stream_survives_its_encoding():
    response = StoredResponse(200, "text/event-stream", STREAM, {"x-route": "small"}, 12, 3)
    assert StoredResponse.from_bytes(response.to_bytes()) == response


def test_bytes_of_another_version_are_refused_with_the_version():
    with pytest.raises(UnreadableStoredResponse, match="stored-response/9"):
        StoredResponse.from_bytes(b"stored-response/9\n{}\nbody")


def test_the_digest_ignores_key_order_and_spacing():
    assert body_digest(b'{"prompt": "hi", "max_tokens": 5}') == body_digest({"max_tokens": 5, "prompt": "hi"})
    assert body_digest({"prompt": "hi"}) != body_digest({"prompt": "ho"})


def test_bytes_that_are_not_json_are_digested_as_they_are():
    assert body_digest(b"\xff not json") == body_digest(b"\xff not json")
    assert body_digest(b"\xff not json") != body_digest(b"\xff not json!")
