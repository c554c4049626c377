"""GJSON step conditions answered as KServe's router answers them: `gjson.Get(json, condition)
.Exists()` with tidwall/gjson v1.18. Plain paths (keys, indexes, `#` counts, wildcards, escapes,
modifiers, multipaths such as `[@this]`) go to the gjson-py package, which reads them as Go does.
The array operators `#.` and `#(...)` are evaluated here, because gjson-py's queries part from
Go's on forms KServe users write:

- a bare word is a string in Go: `#(source==client)` (KServe's own docs) is an error in gjson-py;
- Go compares by the type of the JSON value, reading the literal as that type: `#(id==1)` matches
  `{"id": "1"}` and `#(n=="5")` matches `{"n": 5}`; gjson-py compares Python values, and one
  element of another type (a `null` confidence) makes its whole query fail;
- a query key is a path in Go: `#(scores.large>0.5)`; gjson-py takes it as one literal key;
- `null` equals nothing in Go; `%` patterns know only `*`, `?` and `\\`, not regular expressions.

Queries nested inside multipaths (`[a.#(x>1),b]`) are left to gjson-py."""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gjson


class _Missing:
    """A path that leads nowhere: Go's Result whose Exists() is false."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()

# Go's trim() drops every byte up to and including the space.
_GO_SPACE = "".join(map(chr, range(0x21)))
# Operators in the order Go's parseQuery tries them: two-character ones first.
_OPERATORS = ("!=", "!%", "<=", ">=", "==", "<", ">", "=", "%")
_ORDERINGS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}
# strconv.ParseBool after strings.ToLower, as gjson's `~true` / `~false` read strings.
_TRUE_WORDS = {"1", "t", "true"}
_FALSE_WORDS = {"0", "f", "false"}


def parse_json(body: bytes) -> Any:
    """The document KServe's router would query, or MISSING where gjson.Valid is false (Python's
    parser would also take NaN and Infinity, which are not JSON)."""
    try:
        return json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):  # Python's parser also gives up on very deep nesting
        return MISSING


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def condition_matches(document: Any, condition: str) -> bool:
    """gjson.Get(document, condition).Exists(), on an already parsed JSON document."""
    return get(document, condition) is not MISSING


def get(value: Any, path: str) -> Any:
    """The value at a GJSON path, or MISSING."""
    if not path:
        return MISSING
    start = _array_operator_start(path)
    if start is None:
        return _plain_get(value, path)
    base = value if start == 0 else _plain_get(value, path[:start - 1])
    if not isinstance(base, list):
        return MISSING
    if path.startswith("#.", start):
        return _map(base, path[start + 2:])
    query = _parse_query(path[start:])
    return MISSING if query is None else query.apply(base)


def _plain_get(value: Any, path: str) -> Any:
    try:
        return gjson.get(value, path)
    except gjson.GJSONError:
        return MISSING


def _map(elements: list, path: str) -> Any:
    """`#.path` and `#(...)#.path`: the path on every element (those where it leads nowhere left
    out); a pipe in it applies to the list so made, as in Go (`#.scores|0`)."""
    pipe = next((index for index, char, _ in _top_level(path) if char == "|"), None)
    per_element = path if pipe is None else path[:pipe]
    results = [result for result in (get(element, per_element) for element in elements) if result is not MISSING]
    return results if pipe is None else get(results, path[pipe + 1:])


def _array_operator_start(path: str) -> int | None:
    """Where the first `#.` or `#(` component outside any multipath begins, if any."""
    for index, char, component_start in _top_level(path):
        if component_start and char == "#" and path[index + 1:index + 2] in ("(", "."):
            return index
    return None


def _top_level(path: str) -> Iterator[tuple[int, str, bool]]:
    """The characters of a path outside brackets, quotes and escapes: (index, character, whether
    a path component starts there)."""
    depth = 0
    component_start = True
    index = 0
    while index < len(path):
        char = path[index]
        if char == "\\":
            index += 2
            component_start = False
            continue
        if depth == 0:
            yield index, char, component_start
        component_start = depth == 0 and char in ".|"
        if char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == '"' and depth > 0:
            index = _closing_quote(path, index)
        index += 1


def _closing_quote(text: str, opening: int) -> int:
    index = opening + 1
    while index < len(text) and text[index] != '"':
        index += 2 if text[index] == "\\" else 1
    return index


@dataclass(frozen=True, slots=True)
class _Query:
    """`#(path op value)` (first match) or `#(...)#` (all matches), and the path after it."""

    path: str
    operator: str
    value: str
    all_matches: bool
    rest: str
    rest_is_pipe: bool

    def apply(self, elements: list) -> Any:
        matches = [element for element in elements if self.matches(element)]
        if not self.all_matches:
            if not matches:
                return MISSING
            return get(matches[0], self.rest) if self.rest else matches[0]
        if not self.rest:
            return matches  # an empty list exists too: `#(...)#` always matches
        return get(matches, self.rest) if self.rest_is_pipe else _map(matches, self.rest)

    def matches(self, element: Any) -> bool:
        if isinstance(element, (dict, list)):
            return _compare(get(element, self.path), self.operator, self.value)
        if self.path:
            return False
        return _compare(element, self.operator, self.value)


def _parse_query(text: str) -> _Query | None:
    """Reads `#(...)` the way Go's parseQuery does; None when its parentheses never close."""
    depth, index, operator_start, escaped = 1, 2, None, False
    while index < len(text):
        char = text[index]
        if depth == 1 and operator_start is None and char in "!=<>%":
            operator_start = index
        elif char == "\\":
            index += 1
        elif char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
            if depth == 0:
                break
        elif char == '"':
            closing = _closing_quote(text, index)
            escaped = escaped or "\\" in text[index:closing]
            index = closing
        index += 1
    if depth > 0:
        return None
    path, operator_, value = _split_condition(text[2:index], None if operator_start is None else operator_start - 2)
    after = text[index + 1:]
    all_matches = after.startswith("#")
    separator = re.search(r"[.|]", after)
    rest = after[separator.end():] if separator else ""
    return _Query(path, operator_, _unquote(value, escaped), all_matches, rest,
                  rest_is_pipe=bool(separator) and separator.group() == "|")


def _split_condition(inside: str, operator_start: int | None) -> tuple[str, str, str]:
    if operator_start is None:
        return inside.strip(_GO_SPACE), "", ""
    path = inside[:operator_start].strip(_GO_SPACE)
    comparison = inside[operator_start:].strip(_GO_SPACE)
    operator_ = next((op for op in _OPERATORS if comparison.startswith(op)), "")
    if len(comparison) == 1:
        operator_ = comparison
    value = comparison[len(operator_):].strip(_GO_SPACE)
    return path, "=" if operator_ == "==" else operator_, value


def _unquote(value: str, escaped: bool) -> str:
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return value
    if not escaped:
        return value[1:-1]
    try:
        return json.loads(value)
    except ValueError:
        return value[1:-1]


def _compare(value: Any, operator_: str, literal: str) -> bool:
    """Go's queryMatches: the JSON value's type decides how the literal text is read."""
    if literal.startswith("~"):
        value, literal = _truthiness(value, literal[1:])
    if value is MISSING:
        return False
    if not operator_:
        return True
    if isinstance(value, bool):
        return _compare_bool(value, operator_, literal)
    if isinstance(value, str):
        return _compare_string(value, operator_, literal)
    if _is_number(value) and operator_ in _ORDERINGS:
        return _ORDERINGS[operator_](value, _go_parse_float(literal))
    return False  # null, objects and arrays only exist


def _truthiness(value: Any, kind: str) -> tuple[Any, str]:
    """`==~true`, `==~false`, `==~null`, `==~*`: the value turned into a boolean (compared with
    "true" from then on); any other kind matches nothing."""
    if kind not in _TRUTHINESS:
        return MISSING, ""
    return _TRUTHINESS[kind](value), "true"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _trueish(value: Any) -> bool:
    if isinstance(value, str):
        return value.lower() in _TRUE_WORDS
    return value is True or (_is_number(value) and value != 0)


def _falseish(value: Any) -> bool:
    if isinstance(value, str):
        return value.lower() in _FALSE_WORDS
    return value is None or value is MISSING or value is False or (_is_number(value) and value == 0)


_TRUTHINESS: dict[str, Callable[[Any], bool]] = {
    "*": lambda value: value is not MISSING,
    "null": lambda value: value is None or value is MISSING,  # a missing value reads as null
    "true": _trueish,
    "false": _falseish,
}


def _compare_bool(value: bool, operator_: str, literal: str) -> bool:
    if value:
        outcomes = {"=": literal == "true", "!=": literal != "true", ">": literal == "false", ">=": True}
    else:
        outcomes = {"=": literal == "false", "!=": literal != "false", "<": literal == "true", "<=": True}
    return outcomes.get(operator_, False)


def _compare_string(value: str, operator_: str, literal: str) -> bool:
    if operator_ == "%":
        return _glob_matches(value, literal)
    if operator_ == "!%":
        return not _glob_matches(value, literal)
    return operator_ in _ORDERINGS and _ORDERINGS[operator_](value, literal)


def _go_parse_float(text: str) -> float:
    """strconv.ParseFloat, whose errors gjson ignores (the literal then reads as 0)."""
    if "_" in text:
        return 0.0
    try:
        return float(text)
    except ValueError:
        return 0.0


def _glob_matches(text: str, pattern: str) -> bool:
    """tidwall/match: `*` any run of characters, `?` one character, `\\c` the character c."""
    parts = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\" and index + 1 < len(pattern):
            index += 1
            parts.append(re.escape(pattern[index]))
        elif char == "*":
            parts.append(".*")
        elif char == "?":
            parts.append(".")
        else:
            parts.append(re.escape(char))
        index += 1
    return re.fullmatch("".join(parts), text, flags=re.DOTALL) is not None
