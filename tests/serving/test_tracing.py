"""serving/tracing.py: what turns tracing on (and that nothing is installed when it is off), the
request span of TracingMiddleware (a caller's traceparent honoured, a malformed one ignored,
the span current for what the handler calls onward), and the predictor's request spans built
from an engine request's timestamps (runtime/request_spans.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI, Request
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from runtime.engine import RequestMetrics, RequestOutput, SamplingParams
from runtime.engine.outputs import GeneratedLists
from runtime.request_spans import phases, record_request_spans
from serving import tracing
from serving.tracing import TracingConfigError, TracingMiddleware, exporter_names
from tests.servers import REPO_ROOT

CLIENT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"
CLIENT_TRACEPARENT = f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"
MALFORMED_TRACEPARENTS = ["garbage", "00-xyz-abc-01", f"00-{'0' * 32}-{CLIENT_SPAN_ID}-01", "", "00-" + "f" * 200]
OTEL_VARIABLES = [name for name in os.environ if name.startswith("OTEL_")]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process, into an in-memory exporter; off again afterwards."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_tracer_provider(provider)
    yield exporter
    tracing.disable_tracing()


# What turns it on --------------------------------------------------------------------------

@pytest.mark.parametrize("environ, expected", [
    ({}, []),
    ({"OTEL_TRACES_EXPORTER": "none"}, []),
    ({"OTEL_TRACES_EXPORTER": " "}, []),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
    ({"OTEL_TRACES_EXPORTER": "OTLP, console"}, ["otlp", "console"]),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, []),
    ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "false"}, ["console"]),
])
def test_the_exporter_variable_turns_tracing_on_and_the_sdk_disabled_variable_off(environ, expected):
    assert exporter_names(environ) == expected


def test_an_unknown_exporter_or_otlp_over_grpc_is_refused_with_a_clear_message():
    with pytest.raises(TracingConfigError, match="unknown exporter zipkin"):
        exporter_names({"OTEL_TRACES_EXPORTER": "otlp,zipkin"})
    with pytest.raises(TracingConfigError, match="http/protobuf only"):
        tracing.configure_tracing("test", {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert not tracing.ENABLED


def run_configured(environ: dict[str, str], code: str) -> subprocess.CompletedProcess:
    """`code` run in a fresh interpreter after configure_tracing("test-service"), under `environ`
    alone among the OTEL_* variables."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    script = f"from serving import tracing\nconfigured = tracing.configure_tracing('test-service')\n{code}"
    return subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                          env={**env, **environ}, timeout=60, check=True)


PROVIDER_STATE = """
import json
import sys
from opentelemetry import trace
print(json.dumps({"configured": configured, "enabled": tracing.ENABLED,
                  "provider": type(trace.get_tracer_provider()).__name__,
                  "sdk_imported": "opentelemetry.sdk.trace" in sys.modules}))
"""


@pytest.mark.parametrize("environ", [{}, {"OTEL_TRACES_EXPORTER": "none"},
                                     {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}])
def test_off_by_default_no_sdk_tracer_provider_is_installed(environ):
    state = json.loads(run_configured(environ, PROVIDER_STATE).stdout)
    assert state == {"configured": False, "enabled": False, "provider": "ProxyTracerProvider", "sdk_imported": False}


def test_on_the_sdk_provider_exports_spans_under_the_components_name_unless_otel_service_name_says():
    show_span = PROVIDER_STATE + "tracing.tracer().start_span('hello').end()\n"
    result = run_configured({"OTEL_TRACES_EXPORTER": "console"}, show_span)
    state = json.loads(result.stdout.splitlines()[0])
    assert state == {"configured": True, "enabled": True, "provider": "TracerProvider", "sdk_imported": True}
    # The console exporter writes each span as JSON when the process exits (the batch is flushed).
    exported = json.loads(result.stdout.split("\n", 1)[1])
    assert exported["name"] == "hello"
    assert exported["resource"]["attributes"]["service.name"] == "test-service"
    named = run_configured({"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "mine"}, show_span)
    assert json.loads(named.stdout.split("\n", 1)[1])["resource"]["attributes"]["service.name"] == "mine"


# The request span --------------------------------------------------------------------------

def traced_app() -> FastAPI:
    """An app whose handler answers with the headers it would send onward."""
    app = FastAPI()

    @app.post("/onward")
    async def onward(request: Request) -> dict:
        return tracing.inject({})

    @app.post("/fails")
    async def fails() -> None:
        raise RuntimeError("boom")

    @app.get("/ready")
    async def ready() -> dict:
        return tracing.inject({})

    app.add_middleware(TracingMiddleware)
    return app


async def call(path: str, headers: dict[str, str] | None = None, method: str = "POST") -> httpx.Response:
    transport = httpx.ASGITransport(traced_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.request(method, path, headers=headers)


async def test_a_callers_traceparent_is_honoured_and_the_request_span_goes_onward(spans):
    response = await call("/onward", {"traceparent": CLIENT_TRACEPARENT})
    [span] = spans.get_finished_spans()
    assert span.kind is SpanKind.SERVER and span.name == "POST /onward"
    assert f"{span.context.trace_id:032x}" == CLIENT_TRACE_ID
    assert f"{span.parent.span_id:016x}" == CLIENT_SPAN_ID and span.parent.is_remote
    assert span.attributes["http.response.status_code"] == 200
    # The hop onward carries the same trace, with the server span as its parent.
    assert response.json()["traceparent"] == f"00-{CLIENT_TRACE_ID}-{span.context.span_id:016x}-01"


@pytest.mark.parametrize("traceparent", MALFORMED_TRACEPARENTS)
async def test_a_malformed_traceparent_is_ignored_never_an_error(spans, traceparent):
    response = await call("/onward", {"traceparent": traceparent})
    assert response.status_code == 200
    [span] = spans.get_finished_spans()
    assert span.parent is None
    assert f"{span.context.trace_id:032x}" != CLIENT_TRACE_ID


async def test_a_request_without_traceparent_starts_a_trace_and_a_server_error_marks_its_span(spans):
    assert (await call("/fails")).status_code == 500
    [span] = spans.get_finished_spans()
    assert span.parent is None
    assert not span.status.is_ok


async def test_reads_such_as_probes_and_scrapes_get_no_span(spans):
    response = await call("/ready", {"traceparent": CLIENT_TRACEPARENT}, method="GET")
    assert response.json() == {}
    assert not spans.get_finished_spans()


async def test_continued_from_makes_a_callers_context_current_only_when_no_span_is(spans):
    with tracing.continued_from({"traceparent": CLIENT_TRACEPARENT}):
        assert tracing.inject({})["traceparent"] == CLIENT_TRACEPARENT
        with tracing.tracer().start_as_current_span("inner") as inner:
            with tracing.continued_from({"traceparent": f"00-{'1' * 32}-{'2' * 16}-01"}):
                assert tracing.inject({})["traceparent"].split("-")[2] == f"{inner.context.span_id:016x}"


# The predictor's request spans -------------------------------------------------------------

def last_output(metrics: RequestMetrics, finish_reason: str | None = "length") -> RequestOutput:
    """A request's last output, finished unless `finish_reason` is None."""
    generated = GeneratedLists([7, 8, 9], None, None)
    return RequestOutput("req-1", [1, 2, 3, 4], [9], finish_reason is not None, finish_reason, None, 2, metrics,
                         generated, 3)


def test_the_phases_run_from_arrival_to_first_schedule_to_first_token_to_the_end():
    metrics = RequestMetrics(10.0, 10.5, 11.0, 12.0, 12.5, 0)
    assert phases(metrics) == [("queue", 10.0, 10.5), ("prefill", 10.5, 11.0), ("decode", 11.0, 12.5)]
    # Aborted while waiting: a queue span alone, to the end.
    assert phases(RequestMetrics(10.0, None, None, None, 10.2, 0)) == [("queue", 10.0, 10.2)]


def test_a_finished_request_becomes_a_request_span_with_queue_prefill_and_decode_children(spans):
    now = tracing.clock_pair()[0]
    metrics = RequestMetrics(now - 3.0, now - 2.5, now - 2.0, now - 1.1, now - 1.0, 1)
    with tracing.tracer().start_as_current_span("server") as server:
        record_request_spans("demo", SamplingParams(max_tokens=3, temperature=0.0, seed=5),
                             last_output(metrics), None)
    by_name = {span.name: span for span in spans.get_finished_spans()}
    request = by_name["text_completion demo"]
    assert request.parent.span_id == server.context.span_id
    assert request.attributes["gen_ai.request.model"] == "demo"
    assert request.attributes["gen_ai.usage.input_tokens"] == 4
    assert request.attributes["gen_ai.usage.output_tokens"] == 3
    assert request.attributes["gen_ai.response.finish_reasons"] == ("length",)
    assert request.attributes["gen_ai.request.seed"] == 5
    assert request.attributes["engine.preemptions"] == 1
    queue, prefill, decode = by_name["queue"], by_name["prefill"], by_name["decode"]
    for child in (queue, prefill, decode):
        assert child.parent.span_id == request.context.span_id
    assert request.start_time == queue.start_time < queue.end_time == prefill.start_time
    assert prefill.end_time == decode.start_time < decode.end_time == request.end_time
    # 0.5 s queued, 0.5 s prefilling, 1 s decoding (to the microsecond: the clocks' conversion).
    assert abs((queue.end_time - queue.start_time) - 500_000_000) < 1_000
    assert abs((decode.end_time - decode.start_time) - 1_000_000_000) < 1_000


def test_a_request_that_failed_is_marked_so(spans):
    now = tracing.clock_pair()[0]
    record_request_spans("demo", SamplingParams(), last_output(RequestMetrics(now, now, None, None, None, 0),
                                                                    None), TimeoutError())
    request = next(span for span in spans.get_finished_spans() if span.name == "text_completion demo")
    assert not request.status.is_ok
    assert [span.name for span in spans.get_finished_spans() if span.name != request.name] == ["queue", "prefill"]


def test_a_stream_closed_after_its_last_output_is_no_failure(spans):
    now = tracing.clock_pair()[0]
    record_request_spans("demo", SamplingParams(), last_output(RequestMetrics(now, now, now, now, now, 0)),
                         GeneratorExit())
    assert all(span.status.is_ok for span in spans.get_finished_spans())
