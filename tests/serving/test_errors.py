"""serving/errors.py's reading of an upstream server's error answer: its message in either error
shape, and the exception (so the status code) our client gets for its status."""

from __future__ import annotations

import pytest
from kserve.errors import InvalidInput

from serving.errors import BadGateway, RequestTimeout, ServiceUnavailable, error_message, status_of, upstream_error


@pytest.mark.parametrize(("body", "message"), [
    (b'{"error": "queue full"}', "queue full"),
    (b'{"error": {"message": "bad prompt", "type": "invalid_request_error"}}', "bad prompt"),
    ({"error": {"message": "failed"}}, "failed"),
    (b'{"error": {"type": "server_error"}}', None),
    (b"<html>502</html>", None),
    (b"[1, 2]", None),
])
def test_error_message_in_either_shape(body: object, message: str | None) -> None:
    assert error_message(body) == message


@pytest.mark.parametrize(("status", "error_type", "answered", "text"), [
    (400, InvalidInput, 400, "no prompt"),
    (429, ServiceUnavailable, 503, "the predictor is overloaded or not ready: no prompt"),
    (503, ServiceUnavailable, 503, "the predictor is overloaded or not ready: no prompt"),
    (504, RequestTimeout, 504, "the predictor timed out: no prompt"),
    (500, BadGateway, 502, "the predictor answered 500: no prompt"),
    (404, BadGateway, 502, "the predictor answered 404: no prompt"),
])
def test_upstream_status_becomes_our_error(status: int, error_type: type, answered: int, text: str) -> None:
    error = upstream_error("predictor", status, "no prompt")
    assert type(error) is error_type and status_of(error) == answered and text in str(error)
