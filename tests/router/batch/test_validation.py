"""The checks of a batch's input file and of a create request's fields, without a server."""

from __future__ import annotations

import json

import pytest

from router.batch.objects import (
    BatchRequestError,
    check_metadata,
    completion_window_seconds,
)
from router.batch.validation import MAX_REPORTED_ERRORS, validate_batch_file

CHAT = "/v1/chat/completions"


def line(custom_id: str, **fields) -> bytes:
    request = {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": {"model": "auto", "messages": []}}
    return json.dumps({**request, **fields}).encode()


def test_a_valid_file_gives_its_lines_in_order_skipping_blank_ones():
    checked = validate_batch_file(line("a") + b"\n\n  \n" + line("b") + b"\n", CHAT, max_lines=10)
    assert checked.errors == []
    assert [custom_id for custom_id, _ in checked.lines] == ["a", "b"]
    assert json.loads(checked.lines[0][1]) == {"model": "auto", "messages": []}


def test_errors_name_physical_lines_and_no_line_is_queued():
    checked = validate_batch_file(line("a") + b"\n\n" + line("a") + b"\n[1]\n", CHAT, max_lines=10)
    assert checked.lines == []
    assert [(error["line"], error["code"]) for error in checked.errors] == [(3, "duplicate_custom_id"),
                                                                           (4, "invalid_json_line")]


def test_too_many_lines_and_an_empty_file_fail():
    too_many = validate_batch_file(b"\n".join(line(f"r{index}") for index in range(4)), CHAT, max_lines=3)
    assert [(error["line"], error["code"]) for error in too_many.errors] == [(4, "too_many_requests")]
    assert validate_batch_file(b"\n \n", CHAT, max_lines=3).errors[0]["code"] == "empty_file"


def test_reported_errors_are_bounded():
    checked = validate_batch_file(b"\n".join([b"nope"] * (MAX_REPORTED_ERRORS + 50)), CHAT, max_lines=10_000)
    assert len(checked.errors) == MAX_REPORTED_ERRORS


@pytest.mark.parametrize("window, seconds", [("24h", 86400), ("1s", 1), ("90m", 5400), ("7d", 604800)])
def test_completion_windows(window, seconds):
    assert completion_window_seconds(window) == seconds


@pytest.mark.parametrize("window", ["0s", "8d", "24", "1w", "", None, 24, "01h"])
def test_bad_completion_windows(window):
    with pytest.raises(BatchRequestError, match="completion_window must be '24h'"):
        completion_window_seconds(window)


def test_metadata_limits():
    assert check_metadata({"k" * 64: "v" * 512}) == {"k" * 64: "v" * 512}
    for bad in ({"k": 1}, ["k"], {f"k{index}": "v" for index in range(17)}):
        with pytest.raises(BatchRequestError):
            check_metadata(bad)


def test_a_batch_line_cannot_ask_for_background():
    text = json.dumps({"custom_id": "a", "method": "POST", "url": CHAT,
                       "body": {"model": "auto", "messages": [], "background": True}}).encode()
    checked = validate_batch_file(text, CHAT, max_lines=10)
    assert [(error["code"], error["param"]) for error in checked.errors] == [("background_not_supported",
                                                                             "body.background")]
