"""Traces across the real components: a router, a transformer and a predictor, each its own
process, export their spans over OTLP/HTTP (OTEL_TRACES_EXPORTER=otlp, the way a cluster sends
them to a collector) to a collector this test runs on 127.0.0.1, which decodes them. A client's
request through all three is one trace, the child of the client's traceparent, with each hop's
server span the child of the caller's, and spans for routing, tokenization, detokenization, the
predictor's request, its queue wait, prefill and decode; a WebSocket request continues the
trace of its connection's handshake, and the hop to the predictor over gRPC carries it too."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import websockets
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from runtime.demo import build_demo_model
from serving.tracing import PREDICTOR_SERVICE, ROUTER_SERVICE, TRANSFORMER_SERVICE
from tests.router.conftest import start_router, write_config
from tests.runtime.conftest import start_server
from tests.servers import MODEL_NAME, Server, free_port
from tests.transformer.conftest import start_transformer

CLIENT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"
COMPLETIONS = "/openai/v1/completions"
SPANS_TIMEOUT = 20.0


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict
    failed: bool


class Collector:
    """An OTLP/HTTP trace receiver (protobuf bodies on /v1/traces) that keeps what it gets."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                request = ExportTraceServiceRequest.FromString(self.rfile.read(int(self.headers["content-length"])))
                collector.add(request)
                body = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/v1/traces"

    def add(self, request: ExportTraceServiceRequest) -> None:
        received = []
        for resource_spans in request.resource_spans:
            resource = {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes = {kv.key: _value(kv.value) for kv in span.attributes}
                    received.append(ReceivedSpan(resource["service.name"], span.name, span.trace_id.hex(),
                                                 span.span_id.hex(), span.parent_span_id.hex(), attributes,
                                                 span.status.code == span.status.STATUS_CODE_ERROR))
        with self.lock:
            self.spans.extend(received)

    def trace(self, trace_id: str, expected_names: set[str]) -> list[ReceivedSpan]:
        """The spans of `trace_id`, once those named arrived and no more came for half a second
        (batches come every 100 ms here; a server span ends after the work it holds, so it may
        come in a later batch than its children)."""
        deadline = time.monotonic() + SPANS_TIMEOUT
        seen, settled_since = -1, time.monotonic()
        while True:
            with self.lock:
                spans = [span for span in self.spans if span.trace_id == trace_id]
            if len(spans) != seen:
                seen, settled_since = len(spans), time.monotonic()
            complete = expected_names <= {span.name for span in spans}
            if (complete and time.monotonic() - settled_since >= 0.5) or time.monotonic() > deadline:
                return spans
            time.sleep(0.1)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _value(value) -> object:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    return getattr(value, kind) if kind else None


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    started = Collector()
    yield started
    started.close()


def tracing_to(collector: Collector, patch: pytest.MonkeyPatch) -> None:
    """Servers started from here on trace to `collector`, each batch sent within 100 ms."""
    patch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    patch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", collector.endpoint)
    patch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    patch.delenv("OTEL_SERVICE_NAME", raising=False)
    patch.delenv("OTEL_SDK_DISABLED", raising=False)


@pytest.fixture(scope="module")
def servers(collector, tmp_path_factory) -> Iterator[list[Server]]:
    """[predictor, transformer, router], tracing to the collector; the router's large target is
    down (the requests name the small one's model)."""
    build_demo_model("small")
    directory = tmp_path_factory.mktemp("traces")
    started = []
    try:
        with pytest.MonkeyPatch.context() as patch:
            tracing_to(collector, patch)
            started.append(start_server(directory))
            started.append(start_transformer(directory, f"127.0.0.1:{started[0].http_port}"))
            config = write_config(directory / "router.yaml", targets={
                "small": {"model": MODEL_NAME, "urls": [started[1].url]},
                "large": {"model": "llm-large", "urls": [f"http://127.0.0.1:{free_port()}"]},
            })
            started.append(start_router(config, directory))
        yield started
    finally:
        for server in reversed(started):
            server.stop()


@pytest.fixture(scope="module")
def router(servers) -> Server:
    return servers[-1]


def by_name(spans: list[ReceivedSpan], service: str, name: str) -> ReceivedSpan:
    [span] = [span for span in spans if span.service == service and span.name == name]
    return span


PREDICTOR_REQUEST = f"text_completion {MODEL_NAME}"
EXPECTED = {"route", "tokenize", "detokenize", PREDICTOR_REQUEST, "queue", "prefill", "decode"}


def test_a_streamed_completion_is_one_trace_from_the_client_through_router_transformer_and_predictor(
        router, collector):
    body = {"model": MODEL_NAME, "prompt": "Once upon a time", "max_tokens": 4, "temperature": 0, "stream": True}
    headers = {"traceparent": f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"}
    with httpx.stream("POST", router.url + COMPLETIONS, json=body, headers=headers, timeout=60) as response:
        assert response.status_code == 200
        assert "[DONE]" in response.read().decode()
    spans = collector.trace(CLIENT_TRACE_ID, EXPECTED)
    assert EXPECTED <= {span.name for span in spans}, spans

    edge = by_name(spans, ROUTER_SERVICE, f"POST {COMPLETIONS}")
    assert edge.parent_span_id == CLIENT_SPAN_ID
    route = by_name(spans, ROUTER_SERVICE, "route")
    assert route.parent_span_id == edge.span_id
    assert route.attributes["router.route"] == "small"
    assert route.attributes["router.target_model"] == MODEL_NAME
    assert route.attributes["router.decided_by"] == "hint"
    assert edge.attributes["gen_ai.request.model"] == MODEL_NAME
    assert edge.attributes["router.answered_route"] == "small"

    transformer = by_name(spans, TRANSFORMER_SERVICE, f"POST {COMPLETIONS}")
    assert transformer.parent_span_id == edge.span_id
    tokenize = by_name(spans, TRANSFORMER_SERVICE, "tokenize")
    detokenize = by_name(spans, TRANSFORMER_SERVICE, "detokenize")
    assert tokenize.parent_span_id == detokenize.parent_span_id == transformer.span_id
    assert detokenize.attributes["gen_ai.usage.output_tokens"] == 4

    predictor = by_name(spans, PREDICTOR_SERVICE, f"POST /v2/models/{MODEL_NAME}/generate_stream")
    assert predictor.parent_span_id == transformer.span_id
    request = by_name(spans, PREDICTOR_SERVICE, PREDICTOR_REQUEST)
    assert request.parent_span_id == predictor.span_id
    assert request.attributes["gen_ai.usage.input_tokens"] == tokenize.attributes["gen_ai.usage.input_tokens"]
    assert request.attributes["gen_ai.usage.output_tokens"] == 4
    assert request.attributes["gen_ai.response.finish_reasons"] == ["length"]
    for phase in ("queue", "prefill", "decode"):
        assert by_name(spans, PREDICTOR_SERVICE, phase).parent_span_id == request.span_id
    assert not [span for span in spans if span.failed]


def test_a_malformed_traceparent_is_ignored_and_the_request_starts_its_own_trace(router, collector):
    body = {"model": MODEL_NAME, "prompt": "Hello", "max_tokens": 2, "temperature": 0}
    response = httpx.post(router.url + COMPLETIONS, json=body, headers={"traceparent": "00-not-a-trace-01"},
                          timeout=60)
    assert response.status_code == 200
    deadline = time.monotonic() + SPANS_TIMEOUT
    while time.monotonic() < deadline:
        with collector.lock:
            roots = [span for span in collector.spans if span.service == ROUTER_SERVICE
                     and span.name == f"POST {COMPLETIONS}" and span.trace_id != CLIENT_TRACE_ID]
        if roots:
            break
        time.sleep(0.1)
    [root] = roots
    assert root.parent_span_id == ""
    spans = collector.trace(root.trace_id, {PREDICTOR_REQUEST})
    assert {span.service for span in spans} == {ROUTER_SERVICE, TRANSFORMER_SERVICE, PREDICTOR_SERVICE}


async def test_a_websocket_request_continues_the_handshakes_trace_through_all_three(router, collector):
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    handshake = {"traceparent": f"00-{trace_id}-{CLIENT_SPAN_ID}-01"}
    async with websockets.connect(f"ws://127.0.0.1:{router.http_port}/ws/v1/generate",
                                  additional_headers=handshake) as socket:
        await socket.send(json.dumps({"type": "generate", "id": "one", "model": MODEL_NAME, "prompt": "Hi",
                                      "max_tokens": 3, "temperature": 0}))
        while (message := json.loads(await asyncio.wait_for(socket.recv(), 60)))["type"] not in ("done", "error"):
            pass
    assert message["type"] == "done", message
    spans = collector.trace(trace_id, {"websocket generate", "route", PREDICTOR_REQUEST})
    request = by_name(spans, ROUTER_SERVICE, "websocket generate")
    assert request.parent_span_id == CLIENT_SPAN_ID
    assert request.attributes["websocket.request_id"] == "one"
    assert by_name(spans, ROUTER_SERVICE, "route").parent_span_id == request.span_id
    transformer = by_name(spans, TRANSFORMER_SERVICE, f"POST {COMPLETIONS}")
    assert transformer.parent_span_id == request.span_id
    predictor = by_name(spans, PREDICTOR_SERVICE, f"POST /v2/models/{MODEL_NAME}/generate_stream")
    assert predictor.parent_span_id == transformer.span_id
    assert by_name(spans, PREDICTOR_SERVICE, PREDICTOR_REQUEST).parent_span_id == predictor.span_id


def test_the_transformer_passes_the_trace_on_to_the_predictor_over_grpc(servers, collector, tmp_path):
    """Over gRPC the trace context travels in the call's metadata; the predictor's request span
    is then the child of the transformer's span (KServe's gRPC server has no span of its own)."""
    predictor = servers[0]
    with pytest.MonkeyPatch.context() as patch:
        tracing_to(collector, patch)
        transformer = start_transformer(tmp_path, predictor.grpc_url, "--predictor_protocol", "grpc-v2",
                                        "--predictor_rest_host", f"127.0.0.1:{predictor.http_port}")
    trace_id = "5b8aa5a2d2c872e8321cf37308d69df2"
    try:
        body = {"model": MODEL_NAME, "prompt": "Hello", "max_tokens": 2, "temperature": 0}
        response = httpx.post(transformer.url + COMPLETIONS, json=body, timeout=60,
                              headers={"traceparent": f"00-{trace_id}-{CLIENT_SPAN_ID}-01"})
        assert response.status_code == 200
        spans = collector.trace(trace_id, {PREDICTOR_REQUEST})
    finally:
        transformer.stop()
    served = by_name(spans, TRANSFORMER_SERVICE, f"POST {COMPLETIONS}")
    assert served.parent_span_id == CLIENT_SPAN_ID
    assert by_name(spans, PREDICTOR_SERVICE, PREDICTOR_REQUEST).parent_span_id == served.span_id
    assert not [span for span in spans if span.service == PREDICTOR_SERVICE and span.name.startswith("POST")]
