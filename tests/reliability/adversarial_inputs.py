"""Hypothesis strategies of the adversarial suite: pathological text, wrong types for every field,
values and sizes at and past the limits, and raw bodies that are not the JSON a route takes, each
poured into a route's valid request (adversarial_routes.py lists them) and drawn as a `Case`."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

JSON_TYPE = "application/json"


# JSON that Python's json module will not write -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Raw:
    """JSON text written as it is: numbers json.dumps cannot write (1e309, 400 digits, -0) and
    nesting deeper than a recursive encoder allows."""

    text: str


def to_json(value: Any, ascii_only: bool) -> str:
    """`value` as JSON text; NaN and infinities as Python writes them (NaN, Infinity), which
    lenient parsers accept and strict ones refuse."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        items = (json.dumps(str(key), ensure_ascii=ascii_only) + ":" + to_json(item, ascii_only)
                 for key, item in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(to_json(item, ascii_only) for item in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


def encode(value: Any, ascii_only: bool) -> bytes:
    """The body's bytes. A lone surrogate is escaped (\\ud800) when `ascii_only`; otherwise it is
    written as the bytes UTF-8 forbids (ED A0 80), since "surrogatepass" lets it through."""
    return to_json(value, ascii_only).encode("utf-8", "surrogatepass")


def weighted(*choices: tuple[int, SearchStrategy]) -> SearchStrategy:
    """One of the strategies, drawn in proportion to its weight (one_of draws them evenly)."""
    return st.sampled_from([strategy for weight, strategy in choices for _ in range(weight)]).flatmap(lambda s: s)


# Pathological text -------------------------------------------------------------------------------

# Delimiters left open, markup of chat templates, invisible and direction-changing marks,
# combining marks, NUL and other controls, lone surrogates, emoji joined by zero-width joiners.
NASTY_CHARACTERS = ("$", "(", "{", "[", '"', "'", "`", "\\", "<", "%", "\x00", "\x1b", "\x7f", "\u200b",
                    "\u200d", "\u200e", "\u200f", "\u202e", "\u2066", "\u0301", "\u0489", "\ud800", "\udfff",
                    "\ufeff", "\ufffd", "\uffff", "\U0010ffff", "\U0001f600", "\U0001f468\u200d\U0001f469",
                    "\n", "\r", "\t", " ", "a", "\u00df", "\u0130", "\ufdfa")
OPENERS = ("$", "$$", "(", "{", "[", '"', "```", "```python\n", "{{", "{%", "<!--", "\\begin{equation}", "'''",
           '{"a": [', "<|im_start|>")
# Special tokens' text, which a tokenizer may read as the special token itself.
TOKEN_MARKUP = ("<s>", "</s>", "<unk>", "<pad>", "<|endoftext|>", "<|im_start|>user\n", "<|im_end|>")
# Mostly short runs, so that many prompts fit the short context and reach the model; now and
# then one long enough to cost the tokenizer and the router's features real work.
LONG_RUNS = (1_000, 10_000, 100_000)
RUN_LENGTHS = weighted((7, st.integers(1, 24)), (2, st.integers(25, 400)), (1, st.sampled_from(LONG_RUNS)))

any_characters = st.text(st.characters(exclude_categories=()), max_size=40)  # surrogates and controls too
runs = st.builds(str.__mul__, st.sampled_from(NASTY_CHARACTERS + OPENERS + TOKEN_MARKUP), RUN_LENGTHS)
unclosed = st.builds(str.__add__, st.sampled_from(OPENERS), any_characters)
pathological_text = st.lists(st.one_of(runs, unclosed, any_characters, st.sampled_from(TOKEN_MARKUP)),
                             min_size=1, max_size=4).map("".join)


# Values of the wrong type, and at or past the limits -----------------------------------------------

HUGE_NUMBERS = (Raw("1e309"), Raw("-1e309"), Raw("1" + "0" * 400), Raw("-1" + "0" * 400), Raw("9" * 5000),
                Raw("1e-400"), Raw("-0"), Raw("-0.0"), Raw("NaN"), Raw("Infinity"), Raw("-Infinity"),
                "NaN", "1e309", "-0", "Infinity", "0x10", "1_000", "")
INTEGER_LIMITS = (0, 1, -1, 2, 2**31 - 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1)
FLOAT_LIMITS = (0.0, -0.0, 5e-324, 1e-300, 0.5, 1.0000001, 2.0000001, 10.01, 100.0001, 1e308, -1e308)
NESTING_DEPTHS = (64, 1_000, 100_000)


def deep_nesting(depth: int, opener: str) -> Raw:
    if opener == "[":
        return Raw("[" * depth + "]" * depth)
    return Raw('{"a":' * depth + "null" + "}" * depth)


deeply_nested = st.builds(deep_nesting, st.sampled_from(NESTING_DEPTHS), st.sampled_from("[{"))
integers_at_limits = st.one_of(st.sampled_from(INTEGER_LIMITS), st.sampled_from(HUGE_NUMBERS),
                               st.integers(-(2**70), 2**70))
floats_at_limits = st.one_of(st.sampled_from(FLOAT_LIMITS + INTEGER_LIMITS), st.sampled_from(HUGE_NUMBERS),
                             st.floats())
short_text = st.one_of(st.text(max_size=12), st.sampled_from(["small", "large", "auto", "demo", "true", "null"]))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.sampled_from(INTEGER_LIMITS),
                    st.sampled_from(FLOAT_LIMITS), st.sampled_from(HUGE_NUMBERS), short_text)
wrong_values = st.one_of(
    st.recursive(scalars, lambda children: st.lists(children, max_size=3)
                 | st.dictionaries(short_text, children, max_size=3), max_leaves=6),
    deeply_nested,
)


def lists_of(items: SearchStrategy, sizes: Sequence[int]) -> SearchStrategy[list]:
    """Lists of one drawn item repeated to a size at a limit (repeating keeps 10,000-item lists
    cheap to draw)."""
    return st.builds(lambda item, size: [item] * size, items, st.sampled_from(sizes))


# Stop strings: OpenAI's 4 of at most 256 characters each, and past that.
stop_strings = st.builds(str.__mul__, st.sampled_from(NASTY_CHARACTERS), st.sampled_from((0, 1, 2, 256, 257, 1_000)))
stops = st.one_of(stop_strings, lists_of(stop_strings, (0, 1, 4, 5, 100, 1_000)))


def token_ids_at_limits(vocab_size: int) -> SearchStrategy:
    """A token id at the vocabulary's edges and past them."""
    return st.sampled_from((-1, 0, vocab_size - 1, vocab_size, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1))


def logit_biases(vocab_size: int) -> SearchStrategy:
    """{token id: bias} with up to thousands of entries (OpenAI allows 300, each within +-100),
    and the "token:bias,..." text form v2 parameters carry."""
    first_ids = st.sampled_from((-5, 0, vocab_size - 3, vocab_size, 2**63))
    biases = st.one_of(st.sampled_from((-100, 100, -100.0001, 100.0001, 1e308)), st.sampled_from(HUGE_NUMBERS))
    as_dict = st.builds(lambda first, size, bias: {str(first + offset): bias for offset in range(size)},
                        first_ids, st.sampled_from((0, 1, 300, 301, 5_000)), biases)
    as_text = st.sampled_from(("1:100", "1:-100,2:100", f"{vocab_size}:1", "1:1e309", "1:NaN", "a:b", "1:", ":",
                               ",,,", "1:2:3"))
    return st.one_of(as_dict, as_text)


def stop_token_ids(vocab_size: int) -> SearchStrategy:
    return st.one_of(lists_of(token_ids_at_limits(vocab_size), (0, 1, 256, 257, 10_000)),
                     st.sampled_from(("1,2,3", "1,,2", "a,b", f"{vocab_size}", "-1")))


def sampling_fields(vocab_size: int) -> dict[str, SearchStrategy]:
    """The sampling fields every generating route takes (the predictor's SamplingFields), each
    with values at and past its limits."""
    return {
        "max_tokens": integers_at_limits, "temperature": floats_at_limits, "top_p": floats_at_limits,
        "top_k": st.one_of(integers_at_limits, st.sampled_from((vocab_size, vocab_size + 1))),
        "min_p": floats_at_limits, "seed": integers_at_limits, "min_tokens": integers_at_limits,
        "presence_penalty": floats_at_limits, "frequency_penalty": floats_at_limits,
        "repetition_penalty": floats_at_limits, "ignore_eos": st.booleans(), "logprobs": st.booleans(),
        "top_logprobs": st.one_of(st.sampled_from((0, 20, 21, vocab_size)), integers_at_limits),
        "stop_token_ids": stop_token_ids(vocab_size), "logit_bias": logit_biases(vocab_size),
    }


# Requests ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Prompt:
    """What a request asks about: text for the routes that tokenize, token ids for the predictor's."""

    text: str
    ids: list[int]


FieldPath = tuple[str | int, ...]  # keys and list indexes from a body's top


@dataclass(frozen=True)
class Route:
    """One request path of a server and how to build a valid request for it."""

    name: str
    path: str
    body: Callable[[Prompt], dict]  # a valid request around the prompt, without sampling fields
    sampling: FieldPath  # where the sampling fields go in the body
    fields: Mapping[str, SearchStrategy]  # the fields it takes, with values at and past their limits
    valid_fields: SearchStrategy[dict] = st.just({})  # valid settings that keep a request cheap
    streams: bool = False  # whether `stream: true` is one of its fields
    headers: SearchStrategy[dict[str, str]] = st.just({})


@dataclass(frozen=True, slots=True)
class Case:
    """One request as it goes on the wire."""

    kind: str  # "<route> <mutation>", what the report counts
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def __repr__(self) -> str:
        return f"{self.kind}: {self.method} {self.path} {self.headers} {self.body[:400]!r} ({len(self.body)} bytes)"


def set_at(body: dict, path: FieldPath, value: Any) -> dict:
    """A copy of `body` with the value at `path` replaced (or added, for a key)."""
    changed = copy.deepcopy(body)
    value_at(changed, path[:-1])[path[-1]] = value
    return changed


def without(body: dict, path: FieldPath) -> dict:
    changed = copy.deepcopy(body)
    del value_at(changed, path[:-1])[path[-1]]
    return changed


def value_at(body: Any, path: FieldPath) -> Any:
    for key in path:
        body = body[key]
    return body


def paths_in(value: Any, prefix: FieldPath = ()) -> list[FieldPath]:
    """Every key and list index in a body, outermost first."""
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    found = []
    for key, child in children:
        found.append((*prefix, key))
        found.extend(paths_in(child, (*prefix, key)))
    return found


def short_prompts(vocab_size: int) -> SearchStrategy[Prompt]:
    return st.builds(Prompt, pathological_text, st.lists(st.integers(0, vocab_size - 1), min_size=1, max_size=12))


def prompts_with_ids_at_limits(vocab_size: int) -> SearchStrategy[Prompt]:
    """Prompts whose token ids may lie outside the vocabulary, and past INT64."""
    ids = st.one_of(st.integers(0, vocab_size - 1), token_ids_at_limits(vocab_size))
    return st.builds(Prompt, pathological_text, st.lists(ids, min_size=1, max_size=12))


def valid_bodies(route: Route, prompts: SearchStrategy[Prompt]) -> SearchStrategy[dict]:
    """The route's valid request around a drawn prompt, with cheap sampling settings (a few tokens)."""
    stream = st.fixed_dictionaries({}, optional={"stream": st.booleans()}) if route.streams else st.just({})
    return st.builds(lambda prompt, chosen, streamed: with_fields(route, route.body(prompt), {**chosen, **streamed}),
                     prompts, route.valid_fields, stream)


def with_fields(route: Route, body: dict, fields: Mapping[str, Any]) -> dict:
    """`body` with sampling `fields` at the route's place for them (`stream` at the top)."""
    for name, value in fields.items():
        body = set_at(body, (name,) if name == "stream" else (*route.sampling, name), value)
    return body


def json_case(route: Route, mutation: str, bodies: SearchStrategy[dict]) -> SearchStrategy[Case]:
    """Cases that send the drawn bodies as JSON, escaped to ASCII or not."""
    return st.builds(lambda body, ascii_only, headers: Case(f"{route.name} {mutation}", "POST", route.path,
                                                            {"content-type": JSON_TYPE, **headers},
                                                            encode(body, ascii_only)),
                     bodies, st.booleans(), route.headers)


# Mutations: each is a strategy of Cases for one route.


def valid_requests(route: Route, vocab_size: int) -> SearchStrategy[Case]:
    return json_case(route, "valid", valid_bodies(route, short_prompts(vocab_size)))


def fields_at_limits(route: Route, vocab_size: int) -> SearchStrategy[Case]:
    """A valid request with one to three of its fields at or past their limits (and token ids,
    where it takes them, perhaps past theirs)."""
    limits = st.lists(st.sampled_from(sorted(route.fields)), min_size=1, max_size=3, unique=True).flatmap(
        lambda names: st.fixed_dictionaries({name: route.fields[name] for name in names}))
    bodies = st.builds(lambda body, fields: with_fields(route, body, fields),
                       valid_bodies(route, prompts_with_ids_at_limits(vocab_size)), limits)
    return json_case(route, "fields at limits", bodies)


def prompts_at_context_limit(route: Route, context: int) -> SearchStrategy[Case]:
    """Prompts of about the model's context length, one token short of it to past it, with a
    request for more tokens than are left."""
    lengths = st.integers(context - 8, context + 8)
    prompts = st.builds(lambda character, length, token: Prompt(character * length, [token] * length),
                        st.sampled_from(("a", " a", "$", "\u0301", "\U0001f600")), lengths, st.integers(1, 100))
    wanted = {"max_tokens": st.sampled_from((1, 2, 8, context, 2**31))} if "max_tokens" in route.fields else {}
    fields = st.fixed_dictionaries(wanted)
    bodies = st.builds(lambda body, chosen: with_fields(route, body, chosen), valid_bodies(route, prompts), fields)
    return json_case(route, "prompt at context limit", bodies)


def wrong_types(route: Route, vocab_size: int) -> SearchStrategy[Case]:
    """A valid request with one value of the wrong type (anywhere in it, or any field the route
    takes), one key removed, or a key it does not know added."""

    def mutated(body: dict, data: st.DataObject) -> dict:
        present = paths_in(body)
        path = data.draw(st.sampled_from(present + [(*route.sampling, name) for name in sorted(route.fields)]))
        action = data.draw(st.sampled_from(("replace", "replace", "remove", "add unknown")))
        if action == "remove" and path in present:
            return without(body, path)
        if action == "add unknown" and isinstance(value_at(body, path[:-1]), dict):
            return set_at(body, (*path[:-1], data.draw(short_text)), data.draw(wrong_values))
        return set_at(body, path, data.draw(wrong_values))

    bodies = st.builds(mutated, valid_bodies(route, short_prompts(vocab_size)), st.data())
    return json_case(route, "wrong type", bodies)


def bodies_at_size_limit(route: Route, limit: int) -> SearchStrategy[Case]:
    """A valid request whose prompt makes the body a few bytes under or over `limit`."""

    def sized(character: str, token: int, ascii_only: bool, excess: int) -> bytes:
        def body_of(length: int) -> bytes:
            return encode(route.body(Prompt(character * length, [token] * length)), ascii_only)

        unit = len(body_of(2)) - len(body_of(1))
        base = len(body_of(1)) - unit
        return body_of(max(1, (limit + excess - base) // unit))

    bodies = st.builds(sized, st.sampled_from(("a", "\\", "\x00", "\u0301", "\ud800", "\U0001f600")),
                       st.sampled_from((1, 8191, 123456789)), st.booleans(), st.integers(-64, 64))
    return st.builds(lambda body: Case(f"{route.name} body at size limit", "POST", route.path,
                                       {"content-type": JSON_TYPE}, body), bodies)


GARBAGE = (b"", b"{", b"}", b"[", b"null", b"true", b"0", b'"x"', b"{'a': 1}", b"{a: 1}", b'{"a":1,}', b"[1,]",
           b'{"a" 1}', b"\x00", b"NaN", b"undefined", b"{}{}", b'{"instances": [}', b'{"prompt": "\\ud800"}',
           b'{"prompt": "\\x00"}', b'{"a": "\\u12"}', b"\xef\xbb\xbf{}", b"\xff\xfe{\x00}\x00")
INVALID_UTF8 = (b"\xff", b"\xfe", b"\x80", b"\xc0\x80", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xf0\x9f\x98",
                b"\xf4\x90\x80\x80")
WRONG_CONTENT_TYPES = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                       "application/octet-stream", "application/json; charset=utf-16", "application/cbor", "")
# KServe reads a v2 body as binary tensors when this header is present.
BINARY_HEADER = "inference-header-content-length"
# A marker in the prompt, replaced with bytes that are not UTF-8.
SPLICE = "SPLICE"


def malformed_bodies(route: Route, vocab_size: int) -> SearchStrategy[Case]:
    """Bodies that are not the JSON the route takes: cut short, not JSON, nested past any parser's
    depth, not UTF-8, or labelled with another content type; and other methods."""
    valid = valid_bodies(route, short_prompts(vocab_size)).map(lambda body: encode(body, True))
    spliced = valid_bodies(route, st.builds(Prompt, st.just(SPLICE), st.just([1, 2]))).map(lambda b: encode(b, True))
    depths = st.sampled_from((1_000, 100_000, 400_000))
    nesting = st.one_of(st.builds(deep_nesting, depths, st.sampled_from("[{")).map(lambda raw: raw.text.encode()),
                        st.builds(str.__mul__, st.sampled_from(("[", '{"a":')), depths).map(str.encode))

    def case(mutation: str, bodies: SearchStrategy[bytes], headers: SearchStrategy[dict] = st.just({}),
             methods: SearchStrategy[str] = st.just("POST")) -> SearchStrategy[Case]:
        return st.builds(lambda body, extra, method: Case(f"{route.name} {mutation}", method, route.path,
                                                          {"content-type": JSON_TYPE, **extra}, body),
                         bodies, headers, methods)

    return st.one_of(
        case("truncated", valid.flatmap(lambda body: st.integers(0, len(body) - 1).map(lambda cut: body[:cut]))),
        case("not JSON", st.one_of(st.sampled_from(GARBAGE), st.binary(max_size=64))),
        case("deep nesting", nesting),
        case("invalid UTF-8", st.builds(_splice, spliced, st.sampled_from(INVALID_UTF8), st.integers(0, 2**16))),
        case("wrong content type", valid,
             st.sampled_from(WRONG_CONTENT_TYPES).map(lambda kind: {"content-type": kind})),
        case("binary tensor header", valid, st.sampled_from(("0", "-1", "abc", "99999999", "1e3", "5")).map(
            lambda length: {BINARY_HEADER: length})),
        case("other method", valid, methods=st.sampled_from(("GET", "PUT", "PATCH", "DELETE", "OPTIONS"))),
    )


def _splice(body: bytes, invalid: bytes, position: int) -> bytes:
    """`invalid` in place of the prompt's marker, or at some position if the body has no text."""
    marker = SPLICE.encode()
    if marker in body:
        return body.replace(marker, invalid)
    position %= len(body) + 1
    return body[:position] + invalid + body[position:]


def cases(routes: Sequence[Route], vocab_size: int, context: int, body_limits: Sequence[int]) -> SearchStrategy[Case]:
    """Every mutation of every route, drawn evenly by route; within a route, mostly requests that
    reach the model or its validation, and a few at the body limits (the costliest to send)."""

    def of_route(route: Route) -> SearchStrategy[Case]:
        return weighted(
            (4, valid_requests(route, vocab_size)),
            (4, fields_at_limits(route, vocab_size)),
            (2, prompts_at_context_limit(route, context)),
            (4, wrong_types(route, vocab_size)),
            (1, st.one_of([bodies_at_size_limit(route, limit) for limit in body_limits])),
            (3, malformed_bodies(route, vocab_size)),
        )

    return st.sampled_from(routes).flatmap(of_route)
