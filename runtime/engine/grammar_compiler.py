"""Compiles structured outputs (structured_output.py) into grammars over the model's tokenizer with
llguidance, off the engine's step: compiles run in a small thread pool (llguidance releases the GIL
while it builds a grammar), so a slow one never delays another request's tokens.

Bounded three ways: the constraint's size (StructuredOutput), llguidance's own limits on a
grammar's size and the work of building its lexer (a grammar over them is refused, whatever the
machine's load), and `timeout_seconds` on the wait for a compile. Compiled grammars are kept in an
LRU keyed by the constraint's canonical text; each request gets its own copy to advance. Failures
are kept too, so a schema that cannot compile is refused at once the next time.

llguidance reads the model's tokenizer once (seconds for a 262k vocabulary: see
benchmarks/grammar_backends.py), at the first constrained request rather than at start-up: a
server that never sees one never pays for it. Reading it needs transformers' tokenizer classes,
whose import (over a second) the predictor starts in the background once it is ready
(import_tokenizer_support_in_background), so that neither its start-up nor its first
constrained request waits for it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import llguidance
from llguidance import LLMatcher, LLParserLimits, LLTokenizer

from .errors import RequestRejected
from .grammar import Grammar
from .structured_output import StructuredOutput

logger = logging.getLogger(__name__)

COMPILE_THREADS = 2
# JSON may be laid out freely (newlines, indentation), but a bounded run of whitespace at each
# place: a model that would loop on blanks (a known failure of unbounded JSON whitespace) must
# go on with the value instead.
JSON_WHITESPACE = r"[\x20\x0A\x09]{0,20}"
# The longest part of llguidance's message that a refused request is told.
MAX_ERROR_CHARS = 500
ANY_JSON_OBJECT = '{"type":"object"}'


class GrammarCompiler:
    def __init__(self, tokenizer_dir: str, vocab_size: int, eos_token_ids: tuple[int, ...],
                 cache_size: int, timeout_seconds: float, trust_remote_code: bool = False) -> None:
        self.tokenizer_dir = tokenizer_dir
        self.vocab_size = vocab_size
        self.eos_token_ids = eos_token_ids
        self.cache_size = cache_size
        self.timeout_seconds = timeout_seconds
        self.trust_remote_code = trust_remote_code
        # Short messages: a refused request is told why, without the parser's state.
        self.limits = LLParserLimits(verbose_errors=False)
        self._pool = ThreadPoolExecutor(COMPILE_THREADS, thread_name_prefix="grammar-compile")
        self._lock = threading.Lock()
        self._tokenizer: Future[LLTokenizer] | None = None
        self._compiled: OrderedDict[tuple, Future[LLMatcher]] = OrderedDict()

    def compile(self, constraint: StructuredOutput) -> Grammar:
        """A new request's grammar, waiting here for the compile (the synchronous engine's path).
        Raises RequestRejected when it cannot be compiled, or not in time."""
        self._tokenizer_future().result()
        try:
            template = self._submit(constraint).result(self.timeout_seconds)
        except FutureTimeout:
            raise self._too_slow(constraint) from None
        return Grammar(template.deep_copy())

    async def compile_async(self, constraint: StructuredOutput) -> Grammar:
        """compile(), awaited: the event loop goes on while the pool compiles."""
        await asyncio.wrap_future(self._tokenizer_future())
        future = self._submit(constraint)
        try:
            # Shielded: a request that stops waiting leaves the compile to finish for the cache.
            template = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), self.timeout_seconds)
        except TimeoutError:
            raise self._too_slow(constraint) from None
        return Grammar(template.deep_copy())

    # Compiling ------------------------------------------------------------------------

    def _submit(self, constraint: StructuredOutput) -> Future[LLMatcher]:
        """The compile of `constraint`: the cached one (done or under way) or a new one."""
        key = constraint.key
        with self._lock:
            future = self._compiled.get(key)
            if future is not None:
                self._compiled.move_to_end(key)
                return future
            future = self._pool.submit(self._build, constraint)
            self._compiled[key] = future
            while len(self._compiled) > self.cache_size:
                self._compiled.popitem(last=False)
            return future

    def _build(self, constraint: StructuredOutput) -> LLMatcher:
        started = time.perf_counter()
        try:
            grammar = grammar_text(constraint)
        except ValueError as exc:
            raise RequestRejected(f"the {describe(constraint)} cannot be used: {_short(str(exc))}") from None
        matcher = LLMatcher(self._tokenizer_future().result(), grammar, log_level=0, limits=self.limits)
        if matcher.is_error():
            raise RequestRejected(f"the {describe(constraint)} cannot be compiled: {_short(matcher.get_error())}")
        logger.debug("compiled a %s in %.1f ms", describe(constraint), (time.perf_counter() - started) * 1e3)
        return matcher

    def _too_slow(self, constraint: StructuredOutput) -> RequestRejected:
        return RequestRejected(f"the {describe(constraint)} did not compile within {self.timeout_seconds:g} s; "
                               "simplify it")

    # The tokenizer --------------------------------------------------------------------

    def _tokenizer_future(self) -> Future[LLTokenizer]:
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = self._pool.submit(self._load_tokenizer)
            return self._tokenizer

    def _load_tokenizer(self) -> LLTokenizer:
        started = time.perf_counter()
        try:
            # Imported here, not at start-up (see the module's note); usually already done.
            import llguidance.hf
            from transformers import PreTrainedTokenizerFast

            tokenizer = PreTrainedTokenizerFast.from_pretrained(
                self.tokenizer_dir, local_files_only=True, trust_remote_code=self.trust_remote_code)
            loaded = llguidance.hf.from_tokenizer(tokenizer, n_vocab=self.vocab_size,
                                                  eos_token=list(self.eos_token_ids))
        except Exception as exc:  # noqa: BLE001 - any failure means the same to a request: no tokenizer
            logger.warning("structured outputs are unavailable: the tokenizer of %s does not load (%s)",
                           self.tokenizer_dir, exc)
            raise RequestRejected(f"structured outputs need the model's tokenizer, and {self.tokenizer_dir} has none "
                                  f"that loads ({_short(str(exc))})") from None
        logger.info("structured outputs: read the tokenizer of %s (%d tokens) in %.1f s",
                    self.tokenizer_dir, loaded.vocab_size, time.perf_counter() - started)
        return loaded


def import_tokenizer_support_in_background() -> threading.Thread:
    """Import what reading a tokenizer for structured outputs needs, on a daemon thread."""
    thread = threading.Thread(target=_import_tokenizer_support, name="tokenizer-import", daemon=True)
    thread.start()
    return thread


def _import_tokenizer_support() -> None:
    import llguidance.hf  # noqa: F401 - imports transformers' tokenizer classes


def grammar_text(constraint: StructuredOutput) -> str:
    """The constraint as an llguidance grammar (raises ValueError for one that is malformed)."""
    if constraint.json is not None or constraint.json_object:
        options = {"whitespace_pattern": JSON_WHITESPACE, "lenient": not constraint.strict}
        return LLMatcher.grammar_from_json_schema(constraint.json or ANY_JSON_OBJECT, overrides=options)
    if constraint.regex is not None:
        return LLMatcher.grammar_from_regex(constraint.regex)
    if constraint.choice is not None:
        return llguidance.grammar_from("choice", json.dumps(list(constraint.choice)))
    return llguidance.grammar_from("grammar", constraint.grammar)


_NAMES = {"json": "json schema", "json_object": "json object format", "regex": "regex", "choice": "choice",
          "grammar": "grammar"}


def describe(constraint: StructuredOutput) -> str:
    return _NAMES[constraint.kind]


def _short(message: str) -> str:
    message = message.strip()
    return message if len(message) <= MAX_ERROR_CHARS else message[:MAX_ERROR_CHARS] + "..."
