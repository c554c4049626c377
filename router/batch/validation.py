"""The checks of a batch's input file, as OpenAI makes them: each line a JSON object with a unique
string `custom_id`, `method: POST`, the batch's endpoint as `url` and an object `body` (not a
stream: a batch line's answer is one whole response). A file that fails them gives a batch that
fails at once, its errors naming the lines, rather than lines that fail one by one later."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

# At most this many line errors are kept on a failed batch (the first ones, in line order).
MAX_REPORTED_ERRORS = 100


@dataclass(slots=True)
class ValidatedFile:
    """The lines to queue, (custom_id, body as JSON), in file order; or the errors that fail the batch."""

    lines: list[tuple[str, bytes]] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)


def request_lines(content: bytes) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, text) of each line that is not blank: a batch's requests, whose
    order among themselves is their index in the queue and in the output files."""
    for number, line in enumerate(content.splitlines(), start=1):
        if line.strip():
            yield number, line


def count_request_lines(content: bytes) -> int:
    return sum(1 for _ in request_lines(content))


def validate_batch_file(content: bytes, endpoint: str, max_lines: int) -> ValidatedFile:
    """Every line checked against the batch's `endpoint`; errors carry OpenAI's fields."""
    result = ValidatedFile()
    seen: set[str] = set()
    for ordinal, (number, text) in enumerate(request_lines(content)):
        if ordinal >= max_lines:
            _add_error(result, "too_many_requests", f"the file has more than {max_lines} requests, the most a batch "
                       f"may have", None, number)
            break
        try:
            custom_id, body = _check_line(text, endpoint, seen)
        except LineError as exc:
            _add_error(result, exc.code, str(exc), exc.param, number)
            continue
        result.lines.append((custom_id, body))
    if not result.lines and not result.errors:
        _add_error(result, "empty_file", "the input file has no requests: one JSON object per line is expected",
                   None, None)
    if result.errors:
        result.lines = []
    return result


class LineError(ValueError):
    def __init__(self, code: str, message: str, param: str | None) -> None:
        super().__init__(message)
        self.code = code
        self.param = param


def _check_line(text: bytes, endpoint: str, seen: set[str]) -> tuple[str, bytes]:
    try:
        request = json.loads(text)
    except ValueError:
        raise LineError("invalid_json_line", "this line is not valid JSON", None) from None
    if not isinstance(request, dict):
        raise LineError("invalid_json_line", "this line is not a JSON object", None)
    custom_id = request.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise LineError("missing_custom_id", "custom_id must be a non-empty string", "custom_id")
    if custom_id in seen:
        raise LineError("duplicate_custom_id", f"custom_id {custom_id[:200]!r} is used by an earlier line; each "
                        "must be unique in the file", "custom_id")
    seen.add(custom_id)
    if request.get("method") != "POST":
        raise LineError("invalid_method", f"method must be 'POST'; got {request.get('method')!r}", "method")
    if request.get("url") != endpoint:
        raise LineError("mismatched_url", f"url must be the batch's endpoint {endpoint!r}; got "
                        f"{str(request.get('url'))[:200]!r}", "url")
    body = request.get("body")
    if not isinstance(body, dict):
        raise LineError("invalid_body", "body must be a JSON object (the request to the endpoint)", "body")
    if body.get("stream") is True:
        raise LineError("stream_not_supported", "a batch line cannot stream: remove 'stream' or set it to false",
                        "body.stream")
    if "background" in body:
        raise LineError("background_not_supported", "a batch line already runs in the background: remove "
                        "'background'", "body.background")
    return custom_id, json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def _add_error(result: ValidatedFile, code: str, message: str, param: str | None, line: int | None) -> None:
    if len(result.errors) < MAX_REPORTED_ERRORS:
        result.errors.append({"code": code, "message": message, "param": param, "line": line})
