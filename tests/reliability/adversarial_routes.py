"""The routes the adversarial suite attacks on each server, each with a valid request to mutate
and the fields it takes: the predictor's v1 predict, v2 infer and generate extension; the
transformer's OpenAI routes, KServe routes and vLLM's token routes; the router's OpenAI edge
(model "auto") and decision routes; and the route graph, which takes v1 requests on any path."""

from __future__ import annotations

from hypothesis import strategies as st

from tests.servers import MODEL_NAME

from .adversarial_inputs import (
    Prompt,
    Route,
    integers_at_limits,
    pathological_text,
    sampling_fields,
    stops,
    token_ids_at_limits,
    wrong_values,
)

# The demo model's vocabulary.
VOCAB_SIZE = 8192

# Valid settings that keep a generation to a few tokens, whatever else a case does.
CHEAP_SAMPLING = st.fixed_dictionaries({"max_tokens": st.integers(1, 4)}, optional={
    "temperature": st.sampled_from((0, 0.7, 2)), "seed": st.integers(0, 2**32), "top_p": st.sampled_from((0.1, 1)),
    "ignore_eos": st.booleans(), "logprobs": st.booleans(), "top_k": st.sampled_from((-1, 1, 50)),
})
CHEAP_TEXT_SAMPLING = st.builds(lambda fields, stop: {**fields, **stop}, CHEAP_SAMPLING,
                                st.fixed_dictionaries({}, optional={"stop": st.lists(pathological_text, max_size=4)}))
# v2 parameters hold no lists: a stop string is one string there.
CHEAP_V2_TEXT_SAMPLING = st.builds(lambda fields, stop: {**fields, **stop}, CHEAP_SAMPLING,
                                   st.fixed_dictionaries({}, optional={"stop": pathological_text}))
# OpenAI's chat route takes logprobs as a flag, its completions route as a number.
CHEAP_COMPLETION = CHEAP_TEXT_SAMPLING.map(
    lambda fields: {**fields, "logprobs": 2} if fields.get("logprobs") else fields)

# Constraints the engine must compile or refuse (a pathological regex, a schema of the wrong shape).
CONSTRAINT_FIELDS = {"guided_regex": pathological_text, "guided_choice": st.lists(pathological_text, max_size=3),
                     "guided_json": wrong_values, "structured_outputs": wrong_values}
KSERVE_FIELDS = {**sampling_fields(VOCAB_SIZE), **CONSTRAINT_FIELDS}
TEXT_FIELDS = {**KSERVE_FIELDS, "stop": stops}
CHOICE_COUNTS = st.one_of(st.sampled_from((0, 1, 2, 16, 17, 1_000)), integers_at_limits)
OPENAI_FIELDS = {
    **TEXT_FIELDS, "n": CHOICE_COUNTS, "user": pathological_text, "store": wrong_values,
    "response_format": st.sampled_from((
        {"type": "text"}, {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"}}})),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans(),
                                             "continuous_usage_stats": st.booleans()}),
}
COMPLETION_FIELDS = {**OPENAI_FIELDS, "logprobs": st.one_of(st.sampled_from((0, 5, 20, 21)), integers_at_limits),
                     "echo": st.booleans(), "best_of": CHOICE_COUNTS, "suffix": pathological_text}
CHAT_FIELDS = {**OPENAI_FIELDS, "max_completion_tokens": integers_at_limits, "add_generation_prompt": st.booleans(),
               "tools": st.lists(wrong_values, max_size=2), "tool_choice": st.sampled_from(("none", "auto", None))}
ROUTE_HINTS = st.sampled_from(("small", "large", "LARGE", "auto", "medium", ""))
# The router's edge takes a route hint in a header.
ROUTE_HEADERS = st.fixed_dictionaries({}, optional={"x-route": ROUTE_HINTS})
TOKEN_LISTS = st.one_of(st.lists(st.integers(0, VOCAB_SIZE - 1), max_size=8),
                        st.builds(lambda token, size: [token] * size, token_ids_at_limits(VOCAB_SIZE),
                                  st.sampled_from((0, 1, 64, 100_000))))


def chat(prompt: Prompt) -> list[dict]:
    return [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": prompt.text}]


def text_tensor(prompt: Prompt) -> dict:
    return {"inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES", "data": [prompt.text]}],
            "parameters": {}}


def id_tensor(prompt: Prompt) -> dict:
    return {"inputs": [{"name": "input_ids", "shape": [1, len(prompt.ids)], "datatype": "INT64", "data": prompt.ids}],
            "parameters": {}}


V1_PREDICT = f"/v1/models/{MODEL_NAME}:predict"
V2_INFER = f"/v2/models/{MODEL_NAME}/infer"
GENERATE = f"/v2/models/{MODEL_NAME}/generate"
GENERATE_STREAM = f"/v2/models/{MODEL_NAME}/generate_stream"
COMPLETIONS = "/openai/v1/completions"
CHAT = "/openai/v1/chat/completions"
INSTANCE = ("instances", 0)
PARAMETERS = ("parameters",)

PREDICTOR_ROUTES = (
    Route("v1 predict", V1_PREDICT, lambda prompt: {"instances": [{"input_ids": prompt.ids}]}, INSTANCE,
          KSERVE_FIELDS, CHEAP_SAMPLING, streams=True),
    Route("v2 infer", V2_INFER, id_tensor, PARAMETERS, KSERVE_FIELDS, CHEAP_SAMPLING),
    Route("generate", GENERATE, lambda prompt: {"input_ids": prompt.ids, "parameters": {}}, PARAMETERS,
          KSERVE_FIELDS, CHEAP_SAMPLING),
    Route("generate_stream", GENERATE_STREAM, lambda prompt: {"input_ids": prompt.ids, "parameters": {}}, PARAMETERS,
          KSERVE_FIELDS, CHEAP_SAMPLING),
)


def openai_routes(model: str, headers: st.SearchStrategy = st.just({})) -> tuple[Route, ...]:
    return (
        Route("completions", COMPLETIONS, lambda prompt: {"model": model, "prompt": prompt.text}, (),
              COMPLETION_FIELDS, CHEAP_COMPLETION, streams=True, headers=headers),
        Route("chat", CHAT, lambda prompt: {"model": model, "messages": chat(prompt)}, (), CHAT_FIELDS,
              CHEAP_TEXT_SAMPLING, streams=True, headers=headers),
    )


def tokenize_routes(model: str) -> tuple[Route, ...]:
    """vLLM's /tokenize with a prompt or chat messages; it takes no sampling fields."""
    fields = {"add_generation_prompt": st.booleans(), "model": st.sampled_from((MODEL_NAME, "auto", "llm-large"))}
    return (Route("tokenize", "/tokenize", lambda prompt: {"model": model, "prompt": prompt.text}, (), fields),
            Route("tokenize chat", "/tokenize", lambda prompt: {"model": model, "messages": chat(prompt)}, (), fields))


def v1_text_routes(name: str, path: str, fields: dict, **options) -> tuple[Route, ...]:
    """v1 predict with a prompt, and with chat messages."""
    return (Route(f"{name}", path, lambda prompt: {"instances": [{"prompt": prompt.text}]}, INSTANCE, fields,
                  CHEAP_TEXT_SAMPLING, **options),
            Route(f"{name} chat", path, lambda prompt: {"instances": [{"messages": chat(prompt)}]}, INSTANCE, fields,
                  CHEAP_TEXT_SAMPLING, **options))


DETOKENIZE = Route("detokenize", "/detokenize", lambda prompt: {"model": MODEL_NAME, "tokens": prompt.ids}, (),
                   {"tokens": TOKEN_LISTS})

TRANSFORMER_ROUTES = (
    *openai_routes(MODEL_NAME),
    *v1_text_routes("v1 predict", V1_PREDICT, TEXT_FIELDS, streams=True),
    Route("v2 infer", V2_INFER, text_tensor, PARAMETERS, TEXT_FIELDS, CHEAP_V2_TEXT_SAMPLING),
    Route("generate", GENERATE, lambda prompt: {"text_input": prompt.text, "parameters": {}}, PARAMETERS, TEXT_FIELDS,
          CHEAP_TEXT_SAMPLING),
    Route("generate_stream", GENERATE_STREAM, lambda prompt: {"text_input": prompt.text, "parameters": {}},
          PARAMETERS, TEXT_FIELDS, CHEAP_TEXT_SAMPLING),
    *tokenize_routes(MODEL_NAME),
    DETOKENIZE,
)

ROUTER_FIELDS = {**TEXT_FIELDS, "route": ROUTE_HINTS}
ROUTER_ROUTES = (
    *openai_routes("auto", ROUTE_HEADERS),
    *v1_text_routes("v1 predict", V1_PREDICT, ROUTER_FIELDS, headers=ROUTE_HEADERS),
    Route("v2 infer", V2_INFER, text_tensor, PARAMETERS, ROUTER_FIELDS, CHEAP_V2_TEXT_SAMPLING, headers=ROUTE_HEADERS),
    *tokenize_routes(MODEL_NAME),
    DETOKENIZE,
)

# KServe's graph router ignores the path: any one runs the graph.
GRAPH_ROUTES = (
    *v1_text_routes("graph", "/", ROUTER_FIELDS, streams=True),
    *v1_text_routes("graph at a predict path", "/v1/models/llm-route:predict", ROUTER_FIELDS),
)
