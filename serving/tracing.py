"""OpenTelemetry traces for every component: set up once per process from the standard OTEL_*
variables, W3C `traceparent` read from incoming and written into outgoing requests, and spans.

Off unless OTEL_TRACES_EXPORTER names an exporter (`otlp`, `console`, or both comma-separated;
unset or `none`: off) and OTEL_SDK_DISABLED is not `true`. Off, no SDK tracer provider is
installed and `ENABLED` stays False: every caller checks it first, so a request pays one
attribute read and builds no span, no attribute and no header. On, the SDK reads the rest of the
standard variables itself: OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES (the component's name
when neither names the service), OTEL_TRACES_SAMPLER(_ARG), OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT,
_HEADERS and _TIMEOUT, OTEL_BSP_* (the batch span processor) and OTEL_PROPAGATORS."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING

from opentelemetry import context, propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

logger = logging.getLogger(__name__)

# Whether this process traces; read by every caller before it does any tracing work.
ENABLED = False
EXPORTERS = ("otlp", "console")
# The only OTLP transport installed (opentelemetry-exporter-otlp-proto-http).
OTLP_PROTOCOL = "http/protobuf"
INSTRUMENTATION_NAME = "kserve-llm-runtime"
# The names each component's spans are reported under unless OTEL_SERVICE_NAME says otherwise.
ROUTER_SERVICE = "kserve-llm-router"
TRANSFORMER_SERVICE = "kserve-llm-transformer"
PREDICTOR_SERVICE = "kserve-llm-predictor"

# Requests that only read (health, readiness, metrics, listings) get no span of their own.
UNTRACED_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

_tracer: trace.Tracer | None = None
_provider: TracerProvider | None = None


class TracingConfigError(ValueError):
    """The OTEL_* variables ask for something this runtime cannot do."""


def exporter_names(environ: Mapping[str, str]) -> list[str]:
    """The exporters OTEL_TRACES_EXPORTER names (none when tracing is off); unknown ones refused."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [name.strip().lower() for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if name.strip()]
    names = [name for name in names if name != "none"]
    unknown = [name for name in names if name not in EXPORTERS]
    if unknown:
        raise TracingConfigError(f"OTEL_TRACES_EXPORTER: unknown exporter {', '.join(unknown)} "
                                 f"(this runtime has {', '.join(EXPORTERS)}, or none)")
    return names


def configure_tracing(default_service_name: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Install the SDK's tracer provider when the environment turns tracing on (see the module's
    docstring); whether it did. Called once, by each component's `__main__`."""
    global ENABLED, _tracer, _provider
    names = exporter_names(environ)
    if not names:
        return False
    # Imported only when tracing is on: the SDK is no part of a request's work otherwise.
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()
    if resource.attributes.get(SERVICE_NAME, "").startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: default_service_name}))
    provider = TracerProvider(resource=resource)
    for name in names:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name, environ)))
    trace.set_tracer_provider(provider)
    _provider = provider
    _tracer = provider.get_tracer(INSTRUMENTATION_NAME)
    ENABLED = True
    logger.info("tracing on: service %s, exporters %s, sampler %s", resource.attributes[SERVICE_NAME],
                ", ".join(names), provider.sampler.get_description())
    return True


def _exporter(name: str, environ: Mapping[str, str]) -> SpanExporter:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol not in (None, "", OTLP_PROTOCOL):
        raise TracingConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL {protocol!r}: this runtime exports OTLP over "
                                 f"{OTLP_PROTOCOL} only")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def disable_tracing() -> None:
    """Flush and stop this process's tracing (tests that configure it in-process)."""
    global ENABLED, _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    ENABLED, _tracer, _provider = False, None, None


def use_tracer_provider(provider: TracerProvider) -> None:
    """Trace through `provider` (a test's, with an in-memory exporter) rather than the global one."""
    global ENABLED, _tracer, _provider
    _provider = provider
    _tracer = provider.get_tracer(INSTRUMENTATION_NAME)
    ENABLED = True


def tracer() -> trace.Tracer:
    """The component's tracer; only to be called when ENABLED."""
    return _tracer


def extract(headers: Mapping[str, str]) -> Context:
    """The trace context an incoming request's headers carry (`traceparent`, `tracestate`,
    baggage); an empty context when they carry none, or a malformed one (which is ignored)."""
    return propagate.extract(headers)


def inject(headers: dict[str, str]) -> dict[str, str]:
    """`headers` with the current span's context written in (`traceparent`, ...); returned."""
    propagate.inject(headers)
    return headers


def server_span(name: str, headers: Mapping[str, str], attributes: dict | None = None) -> AbstractContextManager[Span]:
    """A current SERVER span for a request served here, the child of the caller's traceparent."""
    return _tracer.start_as_current_span(name, context=extract(headers), kind=SpanKind.SERVER, attributes=attributes)


@contextmanager
def continued_from(headers: Mapping[str, str]) -> Iterator[None]:
    """The caller's trace context (from `headers`) current inside, unless a span already is
    (an HTTP request's, which TracingMiddleware made from the same headers)."""
    if trace.get_current_span().get_span_context().is_valid:
        yield
        return
    token = context.attach(extract(headers))
    try:
        yield
    finally:
        context.detach(token)


def annotate(attributes: dict) -> None:
    """Attributes on the current span (the request's)."""
    trace.get_current_span().set_attributes(attributes)


def epoch_ns(monotonic_seconds: float, now_monotonic: float, now_epoch_ns: int) -> int:
    """A time.monotonic() reading as nanoseconds since the epoch (what span times are), given a
    pair of both clocks read at one moment."""
    return now_epoch_ns - int((now_monotonic - monotonic_seconds) * 1e9)


def clock_pair() -> tuple[float, int]:
    """time.monotonic() and time.time_ns(), read together (for epoch_ns)."""
    return time.monotonic(), time.time_ns()


def fail(span: Span, exc: BaseException) -> None:
    """Mark `span` as ended by `exc`."""
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))


def _request_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in raw}


class TracingMiddleware:
    """A SERVER span around each HTTP request (to the end of its body, a stream's included), the
    child of the caller's `traceparent` if it sent one, and current while the request is served,
    so that the spans its handler starts are its children and its calls onward carry it.
    Reads are not traced (UNTRACED_METHODS): probes, /metrics scrapes (the router's load poller
    reads each predictor's every second) and listings would bury the requests. Installed only
    when tracing is on (install_http_layers)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in UNTRACED_METHODS:
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        attributes = {"http.request.method": method, "url.path": path}
        with server_span(f"{method} {path}", _request_headers(scope["headers"]), attributes) as span:
            async def send_with_status(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = message["status"]
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                await send(message)

            await self.app(scope, receive, send_with_status)
