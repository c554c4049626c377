"""Error types and shapes every component shares: each of our exception types gets its HTTP
status in one place (KServe's handlers cover its own types), and bodies never carry a stack
trace."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Collection
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from grpc_interceptor.exceptions import DeadlineExceeded
from kserve.errors import (
    InferenceError,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    ServerNotLive,
    ServerNotReady,
    UnsupportedProtocol,
)
from pydantic import ValidationError

from serving.openai_protocol import openai_error_body
from serving.text import without_lone_surrogates

logger = logging.getLogger(__name__)

# Seconds a client should wait before retrying a 503 (full queue, draining, not ready).
RETRY_AFTER_SECONDS = 1


class ServiceUnavailable(ModelNotReady):
    """The model cannot take this request now (full queue, draining, engine stopped, upstream
    overloaded or down): 503 with Retry-After over REST, UNAVAILABLE over gRPC (KServe's
    interceptor maps ModelNotReady). Retry-After is `retry_after_seconds` rounded up when it is
    known, else RETRY_AFTER_SECONDS."""

    def __init__(self, model_name: str, reason: str, retry_after_seconds: float | None = None) -> None:
        super().__init__(model_name, reason)
        # KServe's gRPC interceptor reads `reason`, which ModelNotReady lacks.
        self.reason = reason
        self.retry_after_seconds = retry_after_seconds

    def __str__(self) -> str:
        return self.reason


class RequestTimeout(DeadlineExceeded):
    """The request ran past its time limit and was aborted: 504 over REST, DEADLINE_EXCEEDED
    over gRPC."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.reason = message

    @classmethod
    def after(cls, timeout: float, what: str = "the server's request timeout") -> RequestTimeout:
        return cls(f"the request exceeded {what} of {timeout:g} s and was aborted")

    def __str__(self) -> str:
        return self.reason


class BadGateway(Exception):
    """An upstream server answered something this server cannot pass on: 502."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class PayloadTooLarge(Exception):
    """The request body is over --max_body_bytes: 413."""

    def __init__(self, limit: int) -> None:
        self.reason = f"the request body is larger than the server's limit of {limit} bytes"

    def __str__(self) -> str:
        return self.reason


def error_body(exc: BaseException) -> dict:
    """The JSON body of an error response (KServe's shape); never a stack trace. The message may
    quote the client's input, which must be writable."""
    return {"error": without_lone_surrogates(str(exc))}


def check_model_name(name: str, served: Collection[str]) -> None:
    """ModelNotFound (404) unless `name` is a model served here."""
    if name not in served:
        raise ModelNotFound(name)


class InternalError(Exception):
    """Something failed that the client cannot fix: 500, reported by the failure's type only."""

    def __init__(self, cause: BaseException) -> None:
        self.reason = f"internal error ({type(cause).__name__})"

    def __str__(self) -> str:
        return self.reason


# Status codes of our own exception types; KServe's handlers cover its types (InvalidInput 400,
# ModelNotFound 404, ModelNotReady 503, ...).
STATUS_CODES: dict[type[Exception], HTTPStatus] = {
    ServiceUnavailable: HTTPStatus.SERVICE_UNAVAILABLE,
    RequestTimeout: HTTPStatus.GATEWAY_TIMEOUT,
    PayloadTooLarge: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    BadGateway: HTTPStatus.BAD_GATEWAY,
    InternalError: HTTPStatus.INTERNAL_SERVER_ERROR,
}


# KServe's own types, as its handlers answer them.
KSERVE_STATUS_CODES: dict[type[Exception], HTTPStatus] = {
    InvalidInput: HTTPStatus.BAD_REQUEST,
    ModelNotFound: HTTPStatus.NOT_FOUND,
    ModelNotReady: HTTPStatus.SERVICE_UNAVAILABLE,
    NotImplementedError: HTTPStatus.NOT_IMPLEMENTED,
    InferenceError: HTTPStatus.INTERNAL_SERVER_ERROR,
}
# Every type the app's exception handlers answer with its own status code.
ANSWERED_ERRORS = (*STATUS_CODES, *KSERVE_STATUS_CODES)
# Routes under this prefix answer errors in OpenAI's shape.
OPENAI_PATH_PREFIX = "/openai/"
# vLLM's token routes, which answer errors in OpenAI's shape too.
OPENAI_ROOT_PATHS = frozenset({"/tokenize", "/detokenize"})


def is_openai_path(path: str) -> bool:
    return path.startswith(OPENAI_PATH_PREFIX) or path in OPENAI_ROOT_PATHS


def status_of(exc: BaseException) -> HTTPStatus:
    if type(exc) in STATUS_CODES:
        return STATUS_CODES[type(exc)]
    for exception_type, status in KSERVE_STATUS_CODES.items():
        if isinstance(exc, exception_type):
            return status
    return HTTPStatus.INTERNAL_SERVER_ERROR


def error_message(body: bytes | object) -> str | None:
    """The message of an error body (its JSON text, or the value decoded) in either shape,
    KServe's `{"error": "..."}` or OpenAI's `{"error": {"message": "..."}}`; None if it is neither."""
    if isinstance(body, bytes):
        try:
            body = json.loads(body)
        except ValueError:
            return None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    return None if error is None else str(error)


def upstream_error(upstream: str, status: int, message: str) -> Exception:
    """Our exception for an upstream server's error answer (`upstream` names it, `message` is its
    own): the client's error stays 400, an overloaded or unready upstream (429, 503) is 503, its
    timeout 504, anything else 502."""
    if status == HTTPStatus.BAD_REQUEST:
        return InvalidInput(message)
    if status in (HTTPStatus.TOO_MANY_REQUESTS, HTTPStatus.SERVICE_UNAVAILABLE):
        return ServiceUnavailable(upstream, f"the {upstream} is overloaded or not ready: {message}")
    if status == HTTPStatus.GATEWAY_TIMEOUT:
        return RequestTimeout(f"the {upstream} timed out: {message}")
    return BadGateway(f"the {upstream} answered {status}: {message}")


def _retry_after_headers(exc: BaseException) -> dict[str, str] | None:
    """Retry-After for a 503 that knows when to retry, in whole seconds and at least 1 (a client
    that retries at once would only be refused again); RetryAfterMiddleware adds the default to
    the others."""
    if isinstance(exc, ServiceUnavailable) and exc.retry_after_seconds is not None:
        return {"retry-after": str(max(1, math.ceil(exc.retry_after_seconds)))}
    return None


def openai_error_response(exc: BaseException) -> JSONResponse:
    """Any exception as an OpenAI-shaped error; unexpected ones are logged and reported by type
    only (no stack trace, no internals, in the response)."""
    status = status_of(exc)
    if status == HTTPStatus.INTERNAL_SERVER_ERROR and not isinstance(exc, InternalError):
        logger.error("internal error", exc_info=exc)
        message = str(InternalError(exc))
    else:
        logger.warning("%d: %s", status, exc)
        message = str(exc)
    code = "model_not_found" if isinstance(exc, ModelNotFound) else None
    return JSONResponse(openai_error_body(status, message, code=code), status_code=status,
                        headers=_retry_after_headers(exc))


def error_response(exc: Exception, path: str = "") -> JSONResponse:
    """The REST response for one of our exception types, shaped for the route at `path`."""
    if is_openai_path(path):
        return openai_error_response(exc)
    status = status_of(exc)
    logger.warning("%d: %s", status, exc)
    return JSONResponse(error_body(exc), status_code=status, headers=_retry_after_headers(exc))


async def _handle(request: Request, exc: Exception) -> JSONResponse:
    return error_response(exc, request.url.path)


async def _request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    return validation_error_response(exc.errors(), request.url.path)


def validation_error_response(errors: list[dict] | tuple[dict, ...], path: str) -> JSONResponse:
    """400 for a body that is not valid JSON or not what the route takes, shaped for the route."""
    message = describe_validation_errors(errors)
    if is_openai_path(path):
        body = openai_error_body(HTTPStatus.BAD_REQUEST, message, param=_first_field(errors))
        return JSONResponse(body, status_code=HTTPStatus.BAD_REQUEST)
    return JSONResponse({"error": message}, status_code=HTTPStatus.BAD_REQUEST)


def _first_field(errors: list[dict] | tuple[dict, ...]) -> str | None:
    for error in errors:
        location = [str(part) for part in error.get("loc", ()) if part != "body"]
        if location:
            return ".".join(location)
    return None


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
    # A location names the client's own keys, which may hold half a surrogate pair.
    return without_lone_surrogates("; ".join(messages)) or "invalid request"


def invalid_input(exc: ValidationError) -> InvalidInput:
    """A request that does not fit its schema, as KServe's 400."""
    return InvalidInput(describe_validation_errors(exc.errors()))


# Errors that say what the client sent or that the server is busy: the request, not the code, is
# at fault, so their stack trace tells an operator nothing. InferenceError stays out: KServe raises
# it for failures inside the model, whose trace is what an operator needs.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    InvalidInput, ModelNotFound, ModelNotReady, NotImplementedError, UnsupportedProtocol, ServerNotReady,
    ServerNotLive, PayloadTooLarge,
)


class ExpectedErrorsWithoutTraceback(logging.Filter):
    """Turns a record that carries an EXPECTED_ERRORS exception into one warning line, without the
    trace. KServe's gRPC interceptor (kserve.protocol.grpc.interceptors, whose interceptors
    KServe's GRPCServer fixes) logs every error it maps, a 400 or a 503 alike, as an ERROR with
    its stack trace: twenty lines per refused request under load."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, EXPECTED_ERRORS) and not isinstance(exc, InferenceError):
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        return True


def log_expected_errors_without_traceback(logger_name: str) -> None:
    """Install ExpectedErrorsWithoutTraceback on `logger_name` (once)."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(each, ExpectedErrorsWithoutTraceback) for each in logger.filters):
        logger.addFilter(ExpectedErrorsWithoutTraceback())


def add_exception_handlers(app: FastAPI) -> None:
    """Register our status codes on the app; malformed or invalid bodies get 400, not 422.

    KServe's own types are answered here too, with the status and shape KServe gives them: its
    handlers write the message as it is, and a message that quotes half a surrogate pair from the
    client (a v2 datatype, say) has no UTF-8 form, so the 400 became a 500. KServe registers its
    handlers in `ModelServer.start()`, after this runs, so ours are registered again when the app
    builds its middleware stack (on its first ASGI call), which is when handlers take effect."""

    def register() -> None:
        for exception_type in ANSWERED_ERRORS:
            app.add_exception_handler(exception_type, _handle)
        app.add_exception_handler(RequestValidationError, _request_validation)

    build_middleware_stack = app.build_middleware_stack

    def build_with_our_handlers():
        register()
        return build_middleware_stack()

    register()
    app.build_middleware_stack = build_with_our_handlers
