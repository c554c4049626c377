"""GJSON step conditions answer as KServe's router answers them. Every expected value below is
what tidwall/gjson v1.18.0 (the version in KServe's go.mod) returns from `gjson.Get(doc, path)`,
MISSING where its `Exists()` is false; they were produced by running that Go code."""

from __future__ import annotations

import json

import gjson
import pytest

from router.graph_condition import MISSING, condition_matches, get, parse_json

ROUTED = {"route": "large", "route_score": 0.82, "instances": [{"prompt": "hi"}]}
CASCADE = {"predictions": [{"output_ids": [5, 6], "confidence": -0.2}, {"output_ids": [7], "confidence": -3.1}]}
UNSURE = {"predictions": [{"output_ids": [], "confidence": None}, {"output_ids": [7], "confidence": 0.3}]}
INSTANCES = {"instances": [{"intval": 5, "id": "1", "n": 5},
                           {"intval": 12, "id": "2", "n": 7, "scores": {"large": 0.9}}]}
CLIENT = {"source": "client", "tags": ["a", "b"]}
FIRST, SECOND = INSTANCES["instances"]

GO_ANSWERS = [
    # A comparison is not a path: this looks up a key named `route=="large"`. It never matches.
    (ROUTED, 'route=="large"', MISSING),
    (ROUTED, "route", "large"),
    (ROUTED, "missing", MISSING),
    # The way to test a top-level field: wrap the document in an array and query that.
    (ROUTED, '[@this].#(route=="large")', ROUTED),
    (ROUTED, '[@this].#(route=="small")', MISSING),
    (ROUTED, "[@this].#(route==large)", ROUTED),
    (ROUTED, "[@this].#(route_score>0.5)", ROUTED),
    (ROUTED, "[@this].#(route_score>0.9)", MISSING),
    (ROUTED, '[@this].#(route%"lar*")', ROUTED),
    (ROUTED, '[@this].#(route!%"lar*")', MISSING),
    (ROUTED, '[@this].#(route=="large").route_score', 0.82),
    (ROUTED, "instances.0.prompt", "hi"),
    (ROUTED, "instances.#", 1),
    (CASCADE, "predictions.#(confidence<-1)", CASCADE["predictions"][1]),
    (CASCADE, "predictions.#(confidence<-5)", MISSING),
    # `#(...)#` (all matches) is a list, and an empty list exists: such a condition always holds.
    (CASCADE, "predictions.#(confidence<-5)#", []),
    (CASCADE, "predictions.#(confidence<-1)#.output_ids", [[7]]),
    (CASCADE, "predictions.#.confidence", [-0.2, -3.1]),
    (CASCADE, "predictions.#.output_ids|0", [5, 6]),
    # A null confidence is skipped, not an error that hides the other predictions.
    (UNSURE, "predictions.#(confidence<0.6)", UNSURE["predictions"][1]),
    (UNSURE, "predictions.#(confidence==null)", MISSING),
    (UNSURE, "predictions.#(confidence==~null)", UNSURE["predictions"][0]),
    (UNSURE, "predictions.#(output_ids.#(==7))", UNSURE["predictions"][1]),
    (INSTANCES, "instances.#(intval>10)", SECOND),
    (INSTANCES, "instances.#(intval>100)", MISSING),
    # The JSON value's type decides: a string compared with 1 is compared with "1", and so on.
    (INSTANCES, "instances.#(id==1)", FIRST),
    (INSTANCES, 'instances.#(id=="2").intval', 12),
    (INSTANCES, 'instances.#(n=="5")', FIRST),
    (INSTANCES, "instances.#(intval>abc)", FIRST),
    # The key of a query is a path.
    (INSTANCES, "instances.#(scores.large>0.5)", SECOND),
    (INSTANCES, "instances.#(scores.large>0.95)", MISSING),
    (INSTANCES, "instances.#(scores)", SECOND),
    (INSTANCES, "instances.#(intval>10)#.id", ["2"]),
    (INSTANCES, "instances.#( intval >= 12 )", SECOND),
    # KServe's documented Switch condition: a bare word is a string.
    (CLIENT, "[@this].#(source==client)", CLIENT),
    (CLIENT, '[@this].#(source=="client")', CLIENT),
    (CLIENT, "[@this].#(source==server)", MISSING),
    (CLIENT, "[@this].#(source!=server)", CLIENT),
    # `%` patterns know `*` and `?` only; a dot is a dot.
    (CLIENT, '[@this].#(source%"c?ient")', CLIENT),
    (CLIENT, '[@this].#(source%"c.ient")', MISSING),
    (CLIENT, 'tags.#(=="b")', "b"),
    (CLIENT, "tags.#(==c)", MISSING),
    (CLIENT, "source", "client"),
    (CLIENT, "tags.1", "b"),
    (CLIENT, "", MISSING),
]


@pytest.mark.parametrize(("document", "path", "expected"), GO_ANSWERS)
def test_answers_as_go_gjson(document: dict, path: str, expected: object) -> None:
    assert get(document, path) == expected
    assert condition_matches(document, path) is (expected is not MISSING)


@pytest.mark.parametrize(("document", "path", "expected"),
                         [row for row in GO_ANSWERS if "#(" not in row[1] and row[1]])
def test_gjson_py_reads_plain_paths_as_go_does(document: dict, path: str, expected: object) -> None:
    """Paths without queries are handed to gjson-py: it must agree with Go on them."""
    assert gjson.get(document, path, quiet=True) == (None if expected is MISSING else expected)


@pytest.mark.parametrize("path", ["[@this].#(source==client)", "predictions.#(confidence<0.6)",
                                  "instances.#(scores.large>0.5)", "instances.#(id==1)"])
def test_gjson_py_alone_misses_what_go_matches(path: str) -> None:
    """Why queries are evaluated by graph_condition: gjson-py refuses or misses these forms."""
    document = {**CLIENT, **UNSURE, **INSTANCES}
    assert condition_matches(document, path)
    assert gjson.get(document, path, quiet=True) is None


def test_condition_matches_a_null_that_exists() -> None:
    assert condition_matches({"answer": None}, "answer")
    assert not condition_matches({"answer": None}, "question")


@pytest.mark.parametrize("body", [b"", b"not json", b'{"a": NaN}', b'{"a": Infinity}', b'{"a": 1'])
def test_bodies_gjson_calls_invalid_parse_to_missing(body: bytes) -> None:
    assert parse_json(body) is MISSING


@pytest.mark.parametrize("body", [b"{}", b"[]", b"null", b'"text"', b"3", b' {"a": [1, 2.5e3]} '])
def test_valid_json_parses(body: bytes) -> None:
    assert parse_json(body) == json.loads(body)
