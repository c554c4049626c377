"""Error types and shapes every component shares: each of our exception types gets its HTTP
status in one place (KServe's handlers cover its own types), and bodies never carry a stack
trace."""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from grpc_interceptor.exceptions import DeadlineExceeded
from kserve.errors import ModelNotReady

logger = logging.getLogger(__name__)

# Seconds a client should wait before retrying a 503 (full queue, draining, not ready).
RETRY_AFTER_SECONDS = 1


class ServiceUnavailable(ModelNotReady):
    """The model cannot take this request now (full queue, draining, engine stopped, upstream
    overloaded or down): 503 with Retry-After over REST, UNAVAILABLE over gRPC (KServe's
    interceptor maps ModelNotReady)."""

    def __init__(self, model_name: str, reason: str) -> None:
        super().__init__(model_name, reason)
        # KServe's gRPC interceptor reads `reason`, which ModelNotReady lacks.
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class RequestTimeout(DeadlineExceeded):
    """The request ran past its time limit and was aborted: 504 over REST, DEADLINE_EXCEEDED
    over gRPC."""

    def __init__(self, timeout: float, what: str = "the server's request timeout") -> None:
        super().__init__(f"the request exceeded {what} of {timeout:g} s and was aborted")
        self.reason = self.details

    def __str__(self) -> str:
        return self.reason


class PayloadTooLarge(Exception):
    """The request body is over --max_body_bytes: 413."""

    def __init__(self, limit: int) -> None:
        self.reason = f"the request body is larger than the server's limit of {limit} bytes"

    def __str__(self) -> str:
        return self.reason


def error_body(exc: BaseException) -> dict:
    """The JSON body of an error response (KServe's shape); never a stack trace."""
    return {"error": str(exc)}


# Status codes of our own exception types; KServe's handlers cover its types (InvalidInput 400,
# ModelNotFound 404, ModelNotReady 503, ...).
STATUS_CODES: dict[type[Exception], HTTPStatus] = {
    ServiceUnavailable: HTTPStatus.SERVICE_UNAVAILABLE,
    RequestTimeout: HTTPStatus.GATEWAY_TIMEOUT,
    PayloadTooLarge: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
}


def status_of(exc: Exception) -> HTTPStatus:
    return STATUS_CODES[type(exc)]


def error_response(exc: Exception) -> JSONResponse:
    """The REST response for one of our exception types."""
    status = status_of(exc)
    logger.warning("%d: %s", status, exc)
    return JSONResponse(error_body(exc), status_code=status)


async def _handle(_: Request, exc: Exception) -> JSONResponse:
    return error_response(exc)


async def _request_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"error": describe_validation_errors(exc.errors())}, status_code=HTTPStatus.BAD_REQUEST)


def describe_validation_errors(errors: list[dict] | tuple[dict, ...]) -> str:
    """One readable line per pydantic/FastAPI error: where, and what was wrong."""
    messages = []
    for error in errors:
        if error.get("type") == "json_invalid":
            detail = (error.get("ctx") or {}).get("error", error.get("msg", ""))
            messages.append(f"malformed JSON body: {detail}")
            continue
        location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        messages.append(f"{location or 'body'}: {error.get('msg', 'invalid value')}")
    return "; ".join(messages) or "invalid request"


def add_exception_handlers(app: FastAPI) -> None:
    """Register our status codes on the app; malformed or invalid bodies get 400, not 422."""
    for exception_type in STATUS_CODES:
        app.add_exception_handler(exception_type, _handle)
    app.add_exception_handler(RequestValidationError, _request_validation)
