"""What a request's output must match (structured outputs): a JSON schema, any JSON object, a
regular expression, one of a few strings, or a grammar. Validated and bounded when built, so a bad
or oversized constraint is refused before it reaches the compiler; `key` names the compiled grammar
in the engine's cache. The compiling and the per-step token masks are in grammar_compiler.py and
grammar.py."""

from __future__ import annotations

import json
from dataclasses import dataclass

# Bounds on what one request may ask for: a schema, regex or grammar of this many characters
# compiles in milliseconds; larger ones are refused before they reach the compiler.
MAX_STRUCTURED_OUTPUT_CHARS = 32_768
MAX_CHOICES = 256
KINDS = ("json", "json_object", "regex", "choice", "grammar")


@dataclass(frozen=True, slots=True)
class StructuredOutput:
    """Exactly one constraint, vLLM's `structured_outputs` fields:

    - `json`: a JSON schema (a dict, or its JSON text), kept as canonical JSON text (key order is
      kept: properties are generated in the schema's order);
    - `json_object`: True for any JSON object (OpenAI's `{"type": "json_object"}`);
    - `regex`: the whole output matches this regular expression (Rust regex syntax);
    - `choice`: the output is exactly one of these strings;
    - `grammar`: a context-free grammar in Lark or GBNF (llama.cpp's) syntax.

    `strict` (OpenAI's json_schema flag) refuses a schema with keywords the grammar cannot
    enforce (`uniqueItems`, `not`, ...); without it they are ignored and the output honours the
    rest of the schema.
    """

    json: str | dict | None = None
    json_object: bool = False
    regex: str | None = None
    choice: tuple[str, ...] | None = None
    grammar: str | None = None
    strict: bool = False

    def __post_init__(self) -> None:
        kinds = self._constraints()
        if len(kinds) != 1:
            found = " and ".join(kinds) if kinds else "none"
            raise ValueError(f"a structured output sets exactly one of {', '.join(KINDS)}; got {found}")
        if self.json is not None:
            object.__setattr__(self, "json", _canonical_schema(self.json))
        if self.regex is not None:
            _check_text("regex", self.regex)
        if self.grammar is not None:
            _check_text("grammar", self.grammar)
        if self.choice is not None:
            object.__setattr__(self, "choice", _checked_choices(self.choice))

    def _constraints(self) -> list[str]:
        return [kind for kind in KINDS if getattr(self, kind) not in (None, False)]

    @property
    def kind(self) -> str:
        return self._constraints()[0]

    @property
    def key(self) -> tuple:
        """What identifies the compiled grammar: equal keys compile to the same grammar."""
        return (self.kind, self.strict, self.json, self.regex, self.choice, self.grammar)


def _canonical_schema(schema: str | dict) -> str:
    if isinstance(schema, str):
        _check_text("json schema", schema)
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise ValueError(f"the json schema is not valid JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise ValueError(f"a json schema must be a JSON object, got {type(schema).__name__}")
    text = json.dumps(schema, separators=(",", ":"), ensure_ascii=False)
    _check_text("json schema", text)
    return text


def _check_text(name: str, text: object) -> None:
    if not isinstance(text, str) or not text:
        raise ValueError(f"the {name} must be a non-empty string")
    if len(text) > MAX_STRUCTURED_OUTPUT_CHARS:
        raise ValueError(f"the {name} has {len(text)} characters; at most {MAX_STRUCTURED_OUTPUT_CHARS} are allowed")


def _checked_choices(choices: object) -> tuple[str, ...]:
    if isinstance(choices, str) or not isinstance(choices, (list, tuple)) or not choices:
        raise ValueError("choice must be a non-empty list of strings")
    if len(choices) > MAX_CHOICES:
        raise ValueError(f"choice has {len(choices)} strings; at most {MAX_CHOICES} are allowed")
    if not all(isinstance(choice, str) and choice for choice in choices):
        raise ValueError("each choice must be a non-empty string")
    total = sum(map(len, choices))
    if total > MAX_STRUCTURED_OUTPUT_CHARS:
        raise ValueError(f"the choices have {total} characters together; at most {MAX_STRUCTURED_OUTPUT_CHARS} "
                         "are allowed")
    return tuple(choices)
