"""A finished engine request as trace spans: `text_completion {model}` from its arrival to its
end, with `queue` (arrival to first scheduled), `prefill` (to its first token) and `decode` (to
its end) as children. Built after the fact from the timestamps the engine keeps on every request
(RequestMetrics), so that the engine's step loop does no tracing work; called only when tracing
is on (serving.tracing.ENABLED)."""

from __future__ import annotations

from opentelemetry import trace

from runtime.engine import RequestMetrics, RequestOutput, SamplingParams
from serving import tracing

OPERATION = "text_completion"


def record_request_spans(model_name: str, params: SamplingParams, output: RequestOutput | None,
                         failure: BaseException | None) -> None:
    """The spans of one request, as children of the current span (the request's server span).
    `output`: its last; None when it failed before any. `failure`: what ended its outputs'
    iteration early, if anything (a deadline, a client that left)."""
    if output is None:
        return
    metrics = output.metrics
    now_monotonic, now_epoch_ns = tracing.clock_pair()

    def at(seconds: float | None) -> int:
        return tracing.epoch_ns(seconds if seconds is not None else now_monotonic, now_monotonic, now_epoch_ns)

    end = at(metrics.finished_time)
    request = tracing.tracer().start_span(f"{OPERATION} {model_name}", start_time=at(metrics.arrival_time),
                                          attributes=request_attributes(model_name, params, output))
    # A stream closed after its last output (GeneratorExit) ended as it should.
    if failure is not None and (not output.finished or output.error is not None):
        tracing.fail(request, failure)
    parent = trace.set_span_in_context(request)
    for name, start, stop in phases(metrics):
        tracing.tracer().start_span(name, context=parent, start_time=at(start)).end(end_time=at(stop))
    request.end(end_time=end)


def phases(metrics: RequestMetrics) -> list[tuple[str, float, float | None]]:
    """(name, start, end) of each phase the request reached: queue, prefill, decode (an end of
    None: the request's end)."""
    marks = [metrics.arrival_time, metrics.first_scheduled_time, metrics.first_token_time]
    names = ["queue", "prefill", "decode"]
    reached = [(name, start) for name, start in zip(names, marks) if start is not None]
    ends = [start for _, start in reached[1:]] + [metrics.finished_time]
    return [(name, start, stop) for (name, start), stop in zip(reached, ends)]


def request_attributes(model_name: str, params: SamplingParams, output: RequestOutput) -> dict:
    """GenAI semantic-convention attributes (and a few of the engine's own)."""
    attributes = {
        "gen_ai.operation.name": OPERATION,
        "gen_ai.request.model": model_name,
        "gen_ai.response.id": output.request_id,
        "gen_ai.request.max_tokens": params.max_tokens,
        "gen_ai.request.temperature": params.temperature,
        "gen_ai.request.top_p": params.top_p,
        "gen_ai.usage.input_tokens": len(output.prompt_token_ids),
        "gen_ai.usage.output_tokens": output.num_output_tokens,
        "engine.cached_prompt_tokens": output.num_cached_tokens,
        "engine.preemptions": output.metrics.num_preemptions,
    }
    if params.top_k > 0:
        attributes["gen_ai.request.top_k"] = params.top_k
    if params.seed is not None:
        attributes["gen_ai.request.seed"] = params.seed
    if output.finish_reason is not None:
        attributes["gen_ai.response.finish_reasons"] = [output.finish_reason]
    return attributes
