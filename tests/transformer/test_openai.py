"""The OpenAI-compatible API, driven by the official `openai` client (sync, async, streaming)
against a real transformer in front of a real predictor."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.runtime.conftest import start_server
from tests.runtime.priority_order import PriorityProbe, answer_order
from tests.servers import MODEL_NAME

SEEDED = dict(temperature=1.0, seed=1234)


@pytest.fixture
def client(transformer) -> openai.OpenAI:
    with openai.OpenAI(base_url=f"{transformer.url}/openai/v1", api_key="unused", max_retries=0) as client:
        yield client


def test_models_lists_the_served_model(client):
    models = client.models.list()
    assert [model.id for model in models.data] == [MODEL_NAME]
    assert client.models.retrieve(MODEL_NAME).id == MODEL_NAME


def test_completion(client):
    completion = client.completions.create(model=MODEL_NAME, prompt="The history of", max_tokens=8, **SEEDED)
    choice = completion.choices[0]
    assert completion.object == "text_completion" and choice.finish_reason == "length"
    assert completion.usage.completion_tokens == 8 and completion.usage.prompt_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 8
    assert choice.text


def test_streamed_completion_concatenates_to_the_whole_text(client):
    whole = client.completions.create(model=MODEL_NAME, prompt="Once upon a time", max_tokens=24, **SEEDED)
    chunks = list(client.completions.create(model=MODEL_NAME, prompt="Once upon a time", max_tokens=24, stream=True,
                                            stream_options={"include_usage": True}, **SEEDED))
    text = "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].text
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24


@pytest.mark.parametrize("path, body", [
    ("/openai/v1/completions", {"prompt": "Once upon a time", "echo": True}),
    ("/openai/v1/chat/completions", {"messages": [{"role": "user", "content": "What is a set?"}]}),
], ids=["completion", "chat"])
def test_continuous_usage_stats_count_the_tokens_so_far(transformer, path, body):
    """vLLM's stream_options.continuous_usage_stats: every chunk carries the usage so far, which
    ends at the final usage chunk's."""
    request = {"model": MODEL_NAME, "max_tokens": 10, "stream": True, **SEEDED, **body,
               "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    with httpx.Client(base_url=transformer.url, timeout=60) as http:
        lines = http.post(path, json=request).text.splitlines()
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: {")]
    completion_tokens = [chunk["usage"]["completion_tokens"] for chunk in chunks]
    assert completion_tokens[0] == 0 and completion_tokens[-1] == 10
    assert completion_tokens == sorted(completion_tokens)
    assert all(chunk["usage"]["prompt_tokens"] == chunks[-1]["usage"]["prompt_tokens"] > 0 for chunk in chunks)
    assert chunks[-1]["choices"] == []


def test_chat_completion_and_its_stream_agree(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a list?"}]
    whole = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=20, **SEEDED)
    assert whole.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=20, stream=True,
                                            **SEEDED)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_max_completion_tokens_and_extensions_reach_the_predictor(client):
    completion = client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}], temperature=0,
        extra_body={"min_tokens": 30, "ignore_eos": True}, max_completion_tokens=30,
    )
    assert completion.usage.completion_tokens == 30
    assert completion.choices[0].finish_reason == "length"


def test_logit_bias_and_penalties_steer_the_tokens(client):
    free = client.completions.create(model=MODEL_NAME, prompt="Iterators", max_tokens=6, temperature=0, logprobs=0)
    first = free.choices[0].logprobs.tokens[0]
    forced = client.completions.create(model=MODEL_NAME, prompt="Iterators", max_tokens=6, temperature=0, logprobs=0,
                                       logit_bias={"7": 100})
    # Every token is the biased one (the same text each time), whatever the model preferred.
    assert len(set(forced.choices[0].logprobs.tokens)) == 1 and forced.choices[0].logprobs.tokens[0] != first
    # Two forced tokens ("$" and "%" in the demo vocabulary): a frequency penalty of 2 a use
    # soon outweighs whatever the model prefers between them, so both appear.
    both = client.completions.create(model=MODEL_NAME, prompt="Iterators", max_tokens=12, temperature=0, logprobs=0,
                                     logit_bias={"7": 100, "8": 100}, frequency_penalty=2)
    assert set(both.choices[0].logprobs.tokens) == {"$", "%"}


def test_vllm_min_p_and_stop_token_ids_reach_the_predictor(client):
    prompt = [{"role": "user", "content": "What is a tuple?"}]
    greedy = client.chat.completions.create(model=MODEL_NAME, messages=prompt, max_tokens=12, temperature=0)
    # min_p 1 keeps only the most likely token: sampling at temperature 1 is greedy.
    only_the_top = client.chat.completions.create(model=MODEL_NAME, messages=prompt, max_tokens=12, temperature=1,
                                                  seed=5, extra_body={"min_p": 1.0})
    assert only_the_top.choices[0].message.content == greedy.choices[0].message.content
    stopped = client.completions.create(model=MODEL_NAME, prompt="Iterators", max_tokens=6, temperature=0,
                                        logit_bias={"7": 100}, extra_body={"stop_token_ids": [7]})
    assert stopped.choices[0].finish_reason == "stop" and stopped.usage.completion_tokens == 1


def test_tokenize_gives_the_ids_the_generate_routes_use(client, transformer):
    """vLLM's /tokenize and /detokenize: a prompt's count matches the completion's usage, chat
    messages are rendered by the template as the chat route does, and ids decode back."""
    with httpx.Client(base_url=transformer.url, timeout=30) as http:
        tokenized = http.post("/tokenize", json={"model": MODEL_NAME, "prompt": "Iterators and generators"}).json()
        messages = [{"role": "user", "content": "What is a tuple?"}]
        chat = http.post("/tokenize", json={"messages": messages}).json()
        text = http.post("/detokenize", json={"tokens": tokenized["tokens"]}).json()
        errors = [http.post("/tokenize", json={"prompt": "x", "messages": messages}),
                  http.post("/detokenize", json={"tokens": [10**9]}),
                  http.post("/tokenize", json={"model": "gpt-4", "prompt": "x"})]
    completion = client.completions.create(model=MODEL_NAME, prompt="Iterators and generators", max_tokens=1)
    assert tokenized["count"] == len(tokenized["tokens"]) == completion.usage.prompt_tokens
    assert tokenized["max_model_len"] > 0
    answer = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=1)
    assert chat["count"] == answer.usage.prompt_tokens
    assert text == {"prompt": "Iterators and generators"}
    assert [response.status_code for response in errors] == [400, 400, 404]
    assert "exactly one of" in errors[0].json()["error"]["message"]
    assert "token ids must be in [0, " in errors[1].json()["error"]["message"]


def test_echo_with_logprobs_is_refused_rather_than_missing_the_prompts(client):
    with pytest.raises(openai.BadRequestError, match="echo with logprobs"):
        client.completions.create(model=MODEL_NAME, prompt="x", max_tokens=2, echo=True, logprobs=0)


def test_out_of_range_penalties_are_a_400_naming_the_field(client):
    for settings, field in [({"presence_penalty": 2.5}, "presence_penalty"), ({"logit_bias": {"1": 101}}, "logit_bias"),
                            ({"extra_body": {"repetition_penalty": 0}}, "repetition_penalty"),
                            ({"extra_body": {"min_p": 1.5}}, "min_p"),
                            ({"extra_body": {"stop_token_ids": [1.5]}}, "stop_token_ids")]:
        with pytest.raises(openai.BadRequestError, match=field):
            client.completions.create(model=MODEL_NAME, prompt="x", max_tokens=2, **settings)


def test_stop_string_across_tokens_ends_the_request_early(client, transformer, predictor):
    prompt = "Classes and instances"
    free = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=40, logprobs=0, **SEEDED)
    tokens = free.choices[0].logprobs.tokens
    # A stop string made of the end of one token and the start of the next.
    position = next(i for i in range(5, len(tokens) - 1) if len(tokens[i].strip()) >= 2 and len(tokens[i + 1]) >= 2)
    stop = tokens[position][-2:] + tokens[position + 1][:2]
    expected = free.choices[0].text[: free.choices[0].text.find(stop)]
    generated_before = predictor.metric("vllm:generation_tokens_total")

    stopped = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=40, stop=[stop], **SEEDED)

    assert stopped.choices[0].text == expected and stop not in stopped.choices[0].text
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.usage.completion_tokens <= position + 2
    # The predictor was told at once: it did not run on to max_tokens.
    assert predictor.metric("vllm:generation_tokens_total") - generated_before < 40
    streamed = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=40, stop=stop, stream=True,
                                         **SEEDED)
    assert "".join(chunk.choices[0].text for chunk in streamed) == expected


def test_n_choices_differ_and_stream_by_index(client):
    whole = client.completions.create(model=MODEL_NAME, prompt="Modules", max_tokens=10, n=3, **SEEDED)
    texts = [choice.text for choice in sorted(whole.choices, key=lambda choice: choice.index)]
    assert len(set(texts)) == 3
    assert whole.usage.completion_tokens == 30
    streamed = {0: "", 1: "", 2: ""}
    for chunk in client.completions.create(model=MODEL_NAME, prompt="Modules", max_tokens=10, n=3, stream=True,
                                           **SEEDED):
        for choice in chunk.choices:
            streamed[choice.index] += choice.text
    assert [streamed[index] for index in range(3)] == texts


def test_chat_logprobs_with_alternatives(client):
    completion = client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "Name a number"}], max_tokens=5, logprobs=True,
        top_logprobs=3, temperature=0,
    )
    content = completion.choices[0].logprobs.content
    assert len(content) == 5
    for entry in content:
        assert len(entry.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one.
        assert entry.logprob == pytest.approx(max(alt.logprob for alt in entry.top_logprobs), abs=1e-4)
        assert bytes(entry.bytes).decode(errors="replace") == entry.token


def test_completion_logprobs(client):
    completion = client.completions.create(model=MODEL_NAME, prompt="import", max_tokens=4, logprobs=2, temperature=0)
    logprobs = completion.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 4
    assert all(len(top) <= 2 for top in logprobs.top_logprobs)
    assert all(value <= 0 for value in logprobs.token_logprobs)


async def test_async_client_streams(transformer):
    async with openai.AsyncOpenAI(base_url=f"{transformer.url}/openai/v1", api_key="unused", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": "Count"}], max_tokens=6, stream=True, **SEEDED
        )
        deltas = [chunk.choices[0].delta.content async for chunk in stream if chunk.choices]
        whole = await client.chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": "Count"}], max_tokens=6, **SEEDED
        )
    assert "".join(delta or "" for delta in deltas) == whole.choices[0].message.content


def test_openai_errors(client):
    with pytest.raises(openai.NotFoundError) as not_found:
        client.completions.create(model="no-such-model", prompt="x")
    assert not_found.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model=MODEL_NAME, prompt="x", temperature=7)
    assert bad.value.body["param"] == "temperature" and bad.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as unknown_tool:
        client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "x"}],
                                       tools=[{"type": "function", "function": {"name": "f"}}],
                                       tool_choice={"type": "function", "function": {"name": "g"}})
    assert "tool_choice" in unknown_tool.value.body["message"]
    with pytest.raises(openai.BadRequestError) as too_many_stops:
        client.completions.create(model=MODEL_NAME, prompt="x", stop=["a", "b", "c", "d", "e"])
    assert "stop" in too_many_stops.value.body["message"]


def test_prompt_too_long_is_refused_before_the_predictor(client, predictor):
    prompts_before = predictor.metric("vllm:prompt_tokens_total")
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model=MODEL_NAME, prompt="hello world " * 2000, max_tokens=4)
    message = too_long.value.body["message"]
    assert "2048" in message and "tokens" in message
    with pytest.raises(openai.BadRequestError) as no_room:
        client.completions.create(model=MODEL_NAME, prompt="hello", max_tokens=4000)
    assert "at most" in no_room.value.body["message"]
    assert predictor.metric("vllm:prompt_tokens_total") == prompts_before


async def test_priority_reaches_the_engine(demo_dir, launch_transformer, tmp_path):
    """vLLM's `priority` on a completion goes through to the predictor's engine (lower first):
    with one batch slot there, the request queued later at 0 is answered before the one at 5."""
    predictor = start_server(tmp_path, "--max_num_seqs", "1")
    try:
        transformer = launch_transformer(f"127.0.0.1:{predictor.http_port}")
        completions = "/openai/v1/completions"
        probe = PriorityProbe(transformer.url, completions,
                              {"model": MODEL_NAME, "prompt": "hold the slot", "max_tokens": 1500, "ignore_eos": True,
                               "stream": True},
                              completions, lambda priority: {"model": MODEL_NAME, "prompt": "a short one",
                                                             "max_tokens": 2, "priority": priority})
        assert await answer_order(predictor, probe) == [0, 5]
    finally:
        predictor.stop()


def test_priority_out_of_range_is_a_400_naming_the_field(client):
    with pytest.raises(openai.BadRequestError, match="priority"):
        client.completions.create(model=MODEL_NAME, prompt="hi", max_tokens=1, extra_body={"priority": 2**40})
