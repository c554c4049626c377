"""serving/errors.py's reading of an upstream server's error answer: its message in either error
shape, and the exception (so the status code) our client gets for its status; a client's error
is logged without its stack trace, a failure of ours with it."""

from __future__ import annotations

import logging
import sys

import pytest
from kserve.errors import InferenceError, InvalidInput, ModelNotFound

from serving.errors import (
    BadGateway,
    ExpectedErrorsWithoutTraceback,
    RequestTimeout,
    ServiceUnavailable,
    error_message,
    status_of,
    upstream_error,
)


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


def logged(exc: BaseException) -> logging.LogRecord:
    """The record KServe's gRPC interceptor writes for `exc`, after the filter."""
    try:
        raise exc
    except type(exc):
        record = logging.LogRecord("kserve", logging.ERROR, "interceptors.py", 1, "Error: %s", (exc,), sys.exc_info())
    assert ExpectedErrorsWithoutTraceback().filter(record)
    return record


@pytest.mark.parametrize("exc", [InvalidInput("no prompt"), ModelNotFound("m"), ServiceUnavailable("m", "queue full")])
def test_a_client_error_or_an_overload_is_a_warning_without_a_trace(exc: BaseException) -> None:
    record = logged(exc)
    assert record.exc_info is None and record.levelname == "WARNING"
    assert "Traceback" not in logging.Formatter().format(record)


@pytest.mark.parametrize("exc", [InferenceError("model failed"), RuntimeError("bug")])
def test_a_failure_of_the_server_keeps_its_trace(exc: BaseException) -> None:
    record = logged(exc)
    assert record.levelname == "ERROR"
    assert "Traceback" in logging.Formatter().format(record)
