"""Suite items answered by a real model through our own engine, offline: float32 on the CPU,
greedy, every item in one `engine.generate` call, each token's logprob reported (the cascade's
confidence). The completion is cut at the item's stop strings exactly as the transformer cuts a
served one (its detokenizer and stop-string matcher, token by token), so the text, the completion
tokens and the confidence are what a client sending those stop strings would get."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from benchmarks.routing.strategies import Answered
from benchmarks.routing.suites import QA_STOP, SuiteItem
from transformer.detokenizer import IncrementalDetokenizer
from transformer.stop_strings import StopStringMatcher
from transformer.tokenizer import TextTokenizer


def cut_at_stop(tokenizer: TextTokenizer, prompt_ids: list[int], token_ids: Sequence[int],
                stop: Sequence[str]) -> tuple[str, int, bool]:
    """The text a client sees, how many tokens were generated up to the one that completed a stop
    string (all of them when none did), and whether one did."""
    detokenizer = IncrementalDetokenizer(tokenizer, prompt_tail=prompt_ids)
    matcher = StopStringMatcher(list(stop))
    text = ""
    for count, token in enumerate(token_ids, start=1):
        text += matcher.feed(detokenizer.push([token]))
        if matcher.stopped:
            return text, count, True
    text += matcher.feed(detokenizer.flush())
    return text + matcher.flush(), len(token_ids), matcher.stopped


def newline_token_ids(tokenizer: TextTokenizer) -> tuple[int, ...]:
    """Every token whose text holds a newline: with the stop string "\\n", generation can end at
    any of them: the cut is the same, and nothing past it is computed."""
    return tuple(token for token in range(tokenizer.vocab_size) if "\n" in tokenizer.token_text(token))


def answer_items(model: str, items: Sequence[SuiteItem], num_threads: int | None = None,
                 log: Callable[[str], None] = print) -> list[Answered]:
    """Each item answered by the real model `model` (runtime.real_models), graded."""
    from runtime.engine import EngineConfig, LLMEngine, SamplingParams
    from runtime.real_models import checkpoint_dir

    directory = checkpoint_dir(model)
    tokenizer = TextTokenizer(directory)
    started = time.perf_counter()
    engine = LLMEngine(EngineConfig(model=str(directory), dtype="float32", device="cpu", num_threads=num_threads))
    newlines = newline_token_ids(tokenizer)
    log(f"{model}: engine ready in {time.perf_counter() - started:.0f} s; answering {len(items)} items")
    prompts = [tokenizer.encode(item.prompt) for item in items]
    params = [SamplingParams(max_tokens=item.max_tokens, temperature=0.0, logprobs=True,
                             stop_token_ids=newlines if tuple(item.stop) == QA_STOP else ())
              for item in items]
    started = time.perf_counter()
    outputs = engine.generate(prompts, params)
    generated = sum(len(output.output_token_ids) for output in outputs)
    log(f"{model}: {len(items)} items, {generated} tokens generated in {time.perf_counter() - started:.0f} s")
    answers = []
    for item, prompt, output in zip(items, prompts, outputs):
        text, count, stopped = cut_at_stop(tokenizer, prompt, output.output_token_ids, item.stop)
        logprobs = (output.logprobs or [])[:count]
        answers.append(Answered(text, item.is_correct(text), len(prompt), count,
                                "stop" if stopped else output.finish_reason, min(logprobs, default=None)))
    return answers
