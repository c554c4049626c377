"""What the routing policy measures in a request, each feature as an activation in [0, 1] (how
strongly it points at the large model), with no model and nothing to download: prompt length in
tokens, code, maths and multi-step markers, the requested max_tokens and the conversation depth.

A request's text is read in bounded time: markers are looked for in its first and last
SCANNED_CHARS_EACH_END characters only (an instruction sits at a prompt's start or its end), and a
long text's tokens are counted on that window and scaled to its whole length. Case-blind cues
are matched, without re's IGNORECASE, against the window lower-cased once: a flagged alternation of
cue words costs three times as much on text with a word boundary at every other character. No
pattern has two
quantifiers that can match the same characters one after the other (a line's leading space is
`[ \\t]*`, never `\\s*`, which would run on over blank lines), so each pass is linear in the
window, or bounded by a fixed span (`{1,400}`) per cue word."""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path

from serving.text import without_lone_surrogates

# Without a tokenizer, English text and code average about four characters per token.
CHARACTERS_PER_TOKEN = 4
SCANNED_CHARS_EACH_END = 2048
# Texts whose token counts are kept (each at most 2 x SCANNED_CHARS_EACH_END characters: 1 MiB in all).
COUNTED_TEXTS = 256

# Prompt length: a short sentence (up to LENGTH_FLOOR tokens) says nothing; from there the
# activation grows with the logarithm of the length, so a longer prompt always scores a little
# higher (which also keeps scores from tying: a calibrated threshold hits a share only as closely
# as ties allow), and saturates at LENGTH_CEILING, where small models' long-context quality falls off.
LENGTH_FLOOR_TOKENS = 8
LENGTH_CEILING_TOKENS = 4096
# Requested output length: up to 256 tokens is an ordinary answer; 4096 asks for a long piece.
MAX_TOKENS_FLOOR = 256
MAX_TOKENS_CEILING = 4096
# Conversation depth: a single question is 1 user turn; a ninth turn carries a long context.
DEPTH_CEILING_TURNS = 9

# Each marker category lists distinct cues; every matched cue halves the remaining distance to 1,
# so one cue gives 0.5, two 0.75, three 0.875: one stray word is not proof, several are.
CODE_MARKERS = {
    "code block": r"```",
    "function or class definition": r"\b(def|fn|func|function|class|struct|interface)\s+[A-Za-z_]\w*\s*[({:<]",
    "import or include": r"^[ \t]*(import\s+\w|from\s+[\w.]+\s+import\b|#include\b|using\s+namespace\b|package\s+\w)",
    "statement ending in ; or {": r"[;{][ \t]*$",
    "operator": r"(==|!=|->|=>|::|\+=|&&|\|\|)",
    "identifier": r"\b[a-z]+_[a-z0-9_]+\b|\b[a-z]+[A-Z][A-Za-z0-9]*\(",
    "language or tool": r"(?i)\b(python|javascript|typescript|java|rust|golang|c\+\+|c#|sql|bash|shell script|regex"
                        r"|kotlin|haskell|html|css|react|node\.js|django|flask|pandas|numpy|docker\w*|kubernetes"
                        r"|git)(?!\w)",
    "programming term": r"(?i)\b(compiler?|compil(e|ing)|stack ?trace|traceback|exception|segfault|debug\w*|refactor\w*"
                        r"|unit tests?|api|endpoint|recursion|recursive|algorithm|time complexity|big-o|null pointer"
                        r"|linked list|hash ?map|threads?|mutex|deadlock|race condition|async|function|method"
                        r"|variable)\b",
    "SQL query": r"\bSELECT\b[\s\S]{1,400}?\bFROM\b",
}
MATH_MARKERS = {
    # The text before the first operator excludes operators, so a `$` with no closing one is one pass.
    "LaTeX": r"\\(frac|sum|int|sqrt|lim|prod|cdot|alpha|beta|theta|pi|infty|mathbb|begin)\b"
             r"|\$[^$\n\\^_=]*[\\^_=][^$\n]*\$",
    # A minus needs spaces around it: "1990-1995" and "2024-05-01" are not sums.
    "arithmetic": r"\d\s*[+*/^×÷]\s*\(?\d|\d\s+-\s+\(?\d",
    "maths symbol or function": r"[√∫∑∏π≤≥≠∞±]|\^\s*\d|\b(sin|cos|tan|log|ln|exp|sqrt)\s*\(",
    "maths term": r"(?i)\b(prove|proof|theorem|lemma|integral|integrate|derivative|differentiate|equations?"
                  r"|inequalit(y|ies)|polynomial|matri(x|ces)|eigen\w*|vector space|probability|expected value"
                  r"|variance|primes?|divisible|modulo|factorial|combinatorics|permutations?|logarithm"
                  r"|converge\w*|geometric|arithmetic series|solve for|solve|irrational|integers?|fractions?"
                  r"|percentages?|median|square root|vectors?|linear(ly)? (in)?dependent)\b|\d\s*%",
    "calculation request": r"(?i)\b(calculate|compute|how many|how much|what is the (sum|product|value|probability))\b",
}
MULTI_STEP_MARKERS = {
    "step by step": r"(?i)\bstep[- ]by[- ]step\b|\bsteps\b",
    "reasoning request": r"(?i)\b(explain why|why (does|do|did|is|are|was|were|would)|justify|derive|walk me through"
                         r"|think through|reason about)\b",
    "comparison": r"(?i)\b(compare|comparison|contrast|trade-?offs?|pros and cons|advantages and disadvantages"
                  r"|versus|vs\.?)\b",
    "analysis or design": r"(?i)\b(analy[sz]e|analysis|evaluate|assess|design|architect\w*|plan|strategy|critique)\b",
    "sequencing": r"(?is)\bfirst\b.{1,400}?\b(then|next|finally|after that)\b",
    "enumerated list": r"(?m)(^[ \t]*(\d+[.)]|[-*•])[ \t]+\S.*\n(?:[ \t]*\n)*){2,}",
    "several questions": r"\?[^?]+\?",
    "constraints": r"(?i)\b(must|at most|at least|constraints?|requirements?|edge cases?|without using)\b",
}


@dataclass(frozen=True, slots=True)
class RoutingRequest:
    """The part of a request the policy looks at: all its text, how many user turns it has, and
    the output length it asks for. A prompt sent as token ids has no text, only its length."""

    text: str
    user_turns: int = 1
    max_tokens: int | None = None
    prompt_tokens: int | None = None

    def __post_init__(self) -> None:
        # The features' hashing, a tokenizer and the decision log all need the text's UTF-8 form;
        # the target refuses a prompt with half a surrogate pair, or answers it, as it sees fit.
        object.__setattr__(self, "text", without_lone_surrogates(self.text))


@dataclass(frozen=True, slots=True)
class Measurement:
    """One feature of one request: what was measured and its activation in [0, 1]."""

    value: object
    activation: float
    detail: str | None = None


class TokenCounter:
    """Counts prompt tokens with the target models' tokenizer when given one, else estimates them
    from the text's length. `method` says which, so decisions can show it. The counts of the last
    COUNTED_TEXTS texts are kept: the gateway's reservation and the routing policy count the same
    prompt, and encoding it is the most expensive thing either does."""

    def __init__(self, tokenizer_dir: str | Path | None = None) -> None:
        self.tokenizer = _load_tokenizer(tokenizer_dir) if tokenizer_dir is not None else None
        self.method = "tokenizer" if self.tokenizer is not None else f"estimate (characters / {CHARACTERS_PER_TOKEN})"
        self._encoded_length = functools.lru_cache(maxsize=COUNTED_TEXTS)(self._encode)

    def count(self, text: str) -> int:
        if self.tokenizer is None:
            return math.ceil(len(text) / CHARACTERS_PER_TOKEN)
        window = scanned_text(text)
        tokens = self._encoded_length(window)
        return tokens if len(window) == len(text) else math.ceil(tokens * len(text) / len(window))

    def _encode(self, window: str) -> int:
        return len(self.tokenizer.encode(window, add_special_tokens=False))


def scanned_text(text: str) -> str:
    """The part of a text that is read: all of it, or both ends of a long one."""
    if len(text) <= 2 * SCANNED_CHARS_EACH_END:
        return text
    return text[:SCANNED_CHARS_EACH_END] + "\n" + text[-SCANNED_CHARS_EACH_END:]


class TokenizerError(Exception):
    """The tokenizer directory cannot be loaded: the message says why."""


def _load_tokenizer(tokenizer_dir: str | Path) -> object:
    # A path that is not a directory would be taken for a Hugging Face Hub repository id.
    if not Path(tokenizer_dir).is_dir():
        raise TokenizerError(f"the tokenizer directory {str(tokenizer_dir)!r} does not exist")
    # Imported here: transformers takes a second to import and is only needed with a tokenizer.
    # PreTrainedTokenizerFast wraps the Rust tokenizer and does not import torch.
    from transformers import PreTrainedTokenizerFast

    try:
        return PreTrainedTokenizerFast.from_pretrained(str(tokenizer_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        raise TokenizerError(f"cannot load a tokenizer from {str(tokenizer_dir)!r}: {reason}") from None


def log_ramp(value: float, floor: float, ceiling: float) -> float:
    """0 up to `floor`, 1 from `ceiling`, growing with log(value) in between."""
    if value <= floor:
        return 0.0
    return min(1.0, math.log(value / floor) / math.log(ceiling / floor))


def measure_prompt_tokens(request: RoutingRequest, counter: TokenCounter) -> Measurement:
    if request.prompt_tokens is not None:
        tokens, method = request.prompt_tokens, "token ids"
    else:
        tokens, method = counter.count(request.text), counter.method
    return Measurement(tokens, log_ramp(tokens, LENGTH_FLOOR_TOKENS, LENGTH_CEILING_TOKENS), method)


def measure_max_tokens(request: RoutingRequest) -> Measurement:
    if request.max_tokens is None:
        return Measurement(None, 0.0, "not requested")
    return Measurement(request.max_tokens, log_ramp(request.max_tokens, MAX_TOKENS_FLOOR, MAX_TOKENS_CEILING))


def measure_conversation_depth(request: RoutingRequest) -> Measurement:
    activation = min(1.0, max(0, request.user_turns - 1) / (DEPTH_CEILING_TURNS - 1))
    return Measurement(request.user_turns, activation, "user turns")


@dataclass(frozen=True, slots=True)
class Cue:
    pattern: re.Pattern[str]
    case_blind: bool  # matched against the lower-cased window


# A leading flag group that asks for case-blind matching, and what of it is kept.
_CASE_BLIND_FLAGS = {"(?i)": "", "(?is)": "(?s)"}


def _compile(markers: dict[str, str]) -> dict[str, Cue]:
    return {label: _cue(pattern) for label, pattern in markers.items()}


def _cue(pattern: str) -> Cue:
    for flag, kept in _CASE_BLIND_FLAGS.items():
        if pattern.startswith(flag):
            return Cue(re.compile(kept + pattern[len(flag):], re.MULTILINE), case_blind=True)
    return Cue(re.compile(pattern, re.MULTILINE), case_blind=False)


_MARKER_CATEGORIES = {
    "code": _compile(CODE_MARKERS),
    "math": _compile(MATH_MARKERS),
    "multi_step": _compile(MULTI_STEP_MARKERS),
}


@dataclass(frozen=True, slots=True)
class ScannedWindow:
    """The part of a request's text that cues are looked for in, as written and lower-cased."""

    text: str
    lowered: str

    @classmethod
    def of(cls, request: RoutingRequest) -> ScannedWindow:
        text = scanned_text(request.text)
        return cls(text, text.lower())


def measure_markers(category: str, window: ScannedWindow) -> Measurement:
    """The cues of one category found in the request's scanned window (their labels are the value)."""
    found = [label for label, cue in _MARKER_CATEGORIES[category].items()
             if cue.pattern.search(window.lowered if cue.case_blind else window.text)]
    return Measurement(found, 1.0 - 0.5 ** len(found))


MARKER_CATEGORIES = tuple(_MARKER_CATEGORIES)
