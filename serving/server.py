"""What every component's `__main__` does the same way: KServe's logging format for our loggers,
the HTTP layers (bounded bodies, disconnect cancellation, Retry-After, JSON by default, our error
statuses) on KServe's app, bounds on slow and idle connections, and no per-request timing work
when latency logging is off."""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import logging
import warnings

from fastapi import FastAPI
from fastapi.exceptions import FastAPIDeprecationWarning
from kserve import logging as kserve_logging
from kserve.protocol.rest import server as kserve_rest_server
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from serving import tracing
from serving.connection_limits import (
    add_connection_limit_arguments,
    check_connection_limits,
    connection_limits,
    use_connection_limits,
)
from serving.errors import add_exception_handlers, log_expected_errors_without_traceback
from serving.lifespan import chain_lifespan
from serving.middleware import (
    ClientConnectionMiddleware,
    DefaultJSONContentTypeMiddleware,
    RetryAfterMiddleware,
)
from serving.request_bodies import ThreadedJSONRoute
from serving.tracing import TracingMiddleware

# The default --max_body_bytes of a component (predictor, transformer, router): one request is one
# prompt or a small batch of them, and a body is decoded in memory (and checked) before it is served.
COMPONENT_MAX_BODY_BYTES = 1 << 20
DEFAULT_GRACE_PERIOD = 30
# The package shared by every component (errors, limits, middleware).
SERVING_LOGGER_NAME = "serving"


def add_server_limit_arguments(group: argparse._ActionsContainer) -> None:
    """--max_body_bytes, --grace_period and the connection limits, which every component takes
    (with KServe's --timeout-keep-alive)."""
    group.add_argument("--max_body_bytes", type=int, default=COMPONENT_MAX_BODY_BYTES,
                       help="largest request body (and WebSocket message); larger ones get 413")
    group.add_argument("--grace_period", type=int, default=DEFAULT_GRACE_PERIOD,
                       help="seconds in-flight requests get to finish after SIGTERM")
    add_connection_limit_arguments(group)


def check_server_limits(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.max_body_bytes < 1:
        parser.error("--max_body_bytes must be >= 1")
    if args.grace_period < 0:
        parser.error("--grace_period must be >= 0")
    # The keep-alive timer also runs from a connection's start: at 0 no request would get in.
    if args.timeout_keep_alive < 1:
        parser.error("--timeout-keep-alive must be >= 1")
    check_connection_limits(parser, args)


def describe_server_limits(args: argparse.Namespace) -> str:
    """The limits above, for a component's startup line."""
    return (f"max_body_bytes={args.max_body_bytes} grace_period={args.grace_period}s "
            f"keep_alive={args.timeout_keep_alive}s {connection_limits(args).describe()}")


def configure_logging(args: argparse.Namespace, logger_name: str) -> None:
    """KServe's logging setup, and its format for the component's own logger and the shared
    serving layer's (whose error lines went out bare, through logging's last-resort handler);
    a client's error or an overload is one line, never a stack trace, whoever logs it."""
    log_expected_errors_without_traceback(kserve_logging.KSERVE_LOGGER_NAME)
    ignore_deprecations_users_cannot_act_on()
    if not args.configure_logging:
        return
    kserve_logging.configure_logging(args.log_config_file)
    kserve_logger = logging.getLogger(kserve_logging.KSERVE_LOGGER_NAME)
    for name in (logger_name, SERVING_LOGGER_NAME):
        logger = logging.getLogger(name)
        logger.handlers = list(kserve_logger.handlers)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    defer_access_log()


def ignore_deprecations_users_cannot_act_on() -> None:
    """Ignore the deprecation warnings that KServe's own code triggers in its libraries, which every
    component printed at its first request: nothing a user of ours can change. Each filter names
    the module, category and message, so that any other warning still shows."""
    # KServe answers with FastAPI's ORJSONResponse (its apps' default response class, and its v1
    # routes'), which FastAPI deprecates (0.165 here); the warning points at whoever instantiates it.
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated", category=FastAPIDeprecationWarning,
                            module=r"(fastapi\.routing|kserve\.)")


# How long an access line waits before it is formatted and written.
ACCESS_LOG_DELAY_SECONDS = 0.001


class _WrittenAMomentLater(logging.Handler):
    """Hands each record to the wrapped handlers a millisecond later, from the event loop (at
    once when no loop runs). uvicorn logs a request's access line as the response starts, which
    for a stream is right after the engine has admitted the request: formatting and writing it
    then would hold the GIL that the engine thread needs to start the prompt's prefill.

    Records still waiting when the loop stops are written by flush(), which logging calls for
    every handler at interpreter exit."""

    def __init__(self, handlers: list[logging.Handler]) -> None:
        super().__init__()
        self.wrapped = handlers
        # In the order they came: every call_later has the same delay, so they fire in order.
        self._waiting: collections.deque[logging.LogRecord] = collections.deque()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._emit_now(record)
            return
        self._waiting.append(record)
        loop.call_later(ACCESS_LOG_DELAY_SECONDS, self._emit_oldest)

    def flush(self) -> None:
        while self._waiting:
            self._emit_oldest()
        for handler in self.wrapped:
            handler.flush()

    def _emit_oldest(self) -> None:
        if self._waiting:  # flush() may have written it already
            self._emit_now(self._waiting.popleft())

    def _emit_now(self, record: logging.LogRecord) -> None:
        for handler in self.wrapped:
            if record.levelno >= handler.level:
                handler.handle(record)


def defer_access_log() -> None:
    access = logging.getLogger("uvicorn.access")
    if access.handlers and not isinstance(access.handlers[0], _WrittenAMomentLater):
        access.handlers = [_WrittenAMomentLater(list(access.handlers))]


class _NoTiming:
    """Stands in for KServe's TimingMiddleware, which on every request calls getrusage() twice
    (a quarter of a millisecond each in a process with many threads) and logs two lines."""

    def __init__(self, app: ASGIApp, **_: object) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def skip_request_timing(args: argparse.Namespace) -> None:
    """With --enable_latency_logging false, drop KServe's per-request timing middleware as well
    as its latency lines (KServe adds the middleware when the server starts, from this name)."""
    if not args.enable_latency_logging:
        kserve_rest_server.TimingMiddleware = _NoTiming


def use_requested_event_loop(args: argparse.Namespace) -> None:
    """Honour KServe's --event_loop: its server runs under asyncio.run(), where uvicorn's own
    loop setting never applies, so the default ('auto': uvloop if installed) would silently be
    plain asyncio. uvloop halves the event loop's share of each request."""
    if args.event_loop == "asyncio":
        return
    try:
        import uvloop
    except ImportError:
        if args.event_loop == "uvloop":
            raise SystemExit("--event_loop uvloop: uvloop is not installed") from None
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    # KServe asks for the current loop before asyncio.run(); uvloop's policy makes none implicitly.
    asyncio.set_event_loop(asyncio.new_event_loop())


def freeze_startup_heap(app: FastAPI) -> None:
    """Once the server has started (model, tokenizer and libraries loaded), collect garbage once
    and move everything still alive out of the collector's reach (gc.freeze). Without this, a
    full collection, when one comes, walks the whole heap that transformers, torch and KServe
    built (half a million objects in the predictor): 50 to 250 ms during which no stream in the
    process moves. Full collections are rare while serving (none in a 600-request run), but a
    long-running server meets them."""

    async def freeze() -> None:
        gc.collect()
        gc.freeze()

    chain_lifespan(app, after_startup=freeze)


async def metrics_in_text_format() -> Response:
    """/metrics in Prometheus' text format, whatever the scraper asks for. KServe's own
    route negotiates OpenMetrics, which Prometheus asks for first, and prometheus_client (0.26)
    then writes each sample's name with its colons turned into underscores
    (prometheus/client_python#1177): Prometheus would store `vllm_num_requests_waiting`, and the
    KEDA queries and the dashboard, which ask for vLLM's `vllm:` names, would find nothing."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def install_http_layers(app: FastAPI, args: argparse.Namespace) -> None:
    """Our middleware and error handlers on KServe's app, and the server settings above; call it
    before `kserve.ModelServer(...).start()`."""
    # Declared before KServe declares its own /metrics when the server starts: the first one wins.
    app.add_api_route("/metrics", metrics_in_text_format, methods=["GET"], include_in_schema=False)
    app.add_middleware(ClientConnectionMiddleware, max_body_bytes=args.max_body_bytes)
    # Routes declared on the app from here on (ours) decode large JSON bodies off the event loop.
    app.router.route_class = ThreadedJSONRoute
    app.add_middleware(RetryAfterMiddleware)
    app.add_middleware(DefaultJSONContentTypeMiddleware)
    add_exception_handlers(app)
    skip_request_timing(args)
    use_requested_event_loop(args)
    use_connection_limits(connection_limits(args))
    freeze_startup_heap(app)
    if tracing.ENABLED:
        # Last, so outermost: a request's span covers what the other layers do with it.
        app.add_middleware(TracingMiddleware)
