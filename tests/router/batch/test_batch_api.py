"""OpenAI's Files and Batch APIs on a real `python -m router` in front of fake transformers, through
the official `openai` client: batches complete with exactly one output or error line per
custom_id, routed like online requests; malformed files fail the batch naming their lines; client
mistakes are clear 4xx answers; expiry and cancellation end a batch with the results it has."""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from router.batch.dispatch import BATCH_PRIORITY
from tests.router.conftest import start_router
from tests.servers import Server, run_python

from .batch_helpers import (
    CHAT,
    all_lines,
    batch_config,
    chat_line,
    client_of,
    jsonl,
    upload,
    wait_for_end,
    wait_for_status,
)

MAX_FILE_BYTES = 200_000
MAX_LINES = 600


@pytest.fixture(scope="module")
def router(fakes, tmp_path_factory) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("batch")
    config = batch_config(directory / "router.yaml", fakes["llm-small-a"], fakes["llm-large-a"])
    server = start_router(config, directory, "--batch_max_file_bytes", str(MAX_FILE_BYTES),
                          "--batch_max_lines", str(MAX_LINES), "--batch_concurrency", "8")
    yield server
    assert server.stop() == 0, server.log()[-3000:]


@pytest.fixture
def client(router, fakes) -> openai.OpenAI:
    for fake in fakes.values():
        fake.reset()
    return client_of(router.url)


def test_a_500_line_batch_completes_with_one_line_per_custom_id(client, fakes):
    lines = [chat_line(f"request-{index}") for index in range(500)]
    input_file = client.files.create(file=("requests.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    assert input_file.id.startswith("file-") and input_file.purpose == "batch" and input_file.status == "processed"
    assert input_file.bytes == len(jsonl(lines)) and input_file.filename == "requests.jsonl"
    batch = client.batches.create(input_file_id=input_file.id, endpoint=CHAT, completion_window="24h",
                                  metadata={"job": "nightly"})
    assert batch.id.startswith("batch_") and batch.status == "in_progress" and batch.metadata == {"job": "nightly"}
    assert batch.request_counts.total == 500

    batch = wait_for_end(client, batch.id)
    assert batch.status == "completed", batch
    assert batch.request_counts.completed == 500 and batch.request_counts.failed == 0
    assert batch.completed_at >= batch.finalizing_at >= batch.in_progress_at >= batch.created_at
    output, errors = all_lines(client, batch)
    assert errors == [] and batch.error_file_id is None
    # In input line order, one per custom_id, each the routed target's answer.
    assert [line["custom_id"] for line in output] == [line["custom_id"] for line in lines]
    assert len({line["id"] for line in output}) == 500
    assert all(line["response"]["status_code"] == 200 and line["error"] is None for line in output)
    assert output[0]["response"]["body"]["choices"][0]["message"]["content"] == "llm-small-a answers"
    assert len(fakes["llm-small-a"].received) == 500
    output_file = client.files.retrieve(batch.output_file_id)
    assert output_file.purpose == "batch_output" and output_file.bytes > 0


def test_lines_reach_the_target_at_the_batch_priority_unless_they_set_their_own(client, fakes):
    """The engine starts waiting online requests (priority 0 by default) before batch lines."""
    own = chat_line("own", "llm-small")
    own["body"]["priority"] = -1
    lines = [chat_line("default", "llm-small"), own]
    batch = client.batches.create(input_file_id=upload(client, lines), endpoint=CHAT, completion_window="24h")
    assert wait_for_end(client, batch.id).status == "completed"
    priorities = sorted(request["body"]["priority"] for request in fakes["llm-small-a"].received)
    assert priorities == [-1, BATCH_PRIORITY]


def test_a_line_its_target_refuses_lands_in_the_error_file(client, fakes):
    fakes["llm-large-a"].status = 400
    lines = [chat_line("small-1", "llm-small"), chat_line("large-1", "llm-large"), chat_line("small-2", "llm-small")]
    batch = client.batches.create(input_file_id=upload(client, lines), endpoint=CHAT, completion_window="1h")
    batch = wait_for_end(client, batch.id)
    assert batch.status == "completed"
    assert (batch.request_counts.completed, batch.request_counts.failed) == (2, 1)
    output, errors = all_lines(client, batch)
    assert [line["custom_id"] for line in output] == ["small-1", "small-2"]
    [error] = errors
    assert error["custom_id"] == "large-1" and error["response"]["status_code"] == 400
    assert "llm-large-a answered 400" in error["response"]["body"]["error"]["message"]


def test_a_malformed_file_fails_the_batch_naming_its_lines(client):
    content = b"\n".join([
        json.dumps(chat_line("ok")).encode(),
        b"{not json",
        json.dumps({**chat_line("x"), "custom_id": 7}).encode(),
        json.dumps({**chat_line("get"), "method": "GET"}).encode(),
        json.dumps({**chat_line("other"), "url": "/v1/completions"}).encode(),
        json.dumps({**chat_line("body"), "body": "text"}).encode(),
        json.dumps({**chat_line("stream"), "body": {**chat_line("s")["body"], "stream": True}}).encode(),
        json.dumps(chat_line("ok")).encode(),
    ])
    batch = client.batches.create(input_file_id=upload(client, content), endpoint=CHAT, completion_window="24h")
    assert batch.status == "failed" and batch.failed_at is not None
    assert [(error.line, error.code, error.param) for error in batch.errors.data] == [
        (2, "invalid_json_line", None), (3, "missing_custom_id", "custom_id"), (4, "invalid_method", "method"),
        (5, "mismatched_url", "url"), (6, "invalid_body", "body"), (7, "stream_not_supported", "body.stream"),
        (8, "duplicate_custom_id", "custom_id")]
    assert client.batches.retrieve(batch.id).status == "failed"


@pytest.mark.parametrize("fields, message", [
    ({"endpoint": "/v1/embeddings"}, "endpoint must be one of /v1/chat/completions, /v1/completions"),
    ({"completion_window": "2w"}, "completion_window must be '24h'"),
    ({"completion_window": "8d"}, "from 1s to 7d"),
    ({"input_file_id": "file-missing"}, "no file with id 'file-missing'"),
    ({"metadata": {f"k{index}": "v" for index in range(17)}}, "at most 16 pairs"),
    ({"metadata": {"k" * 65: "v"}}, "at most 64 characters"),
    ({"metadata": {"k": "v" * 513}}, "at most 512 characters"),
])
def test_create_refuses_bad_fields_with_400(client, fields, message):
    request = {"input_file_id": upload(client, [chat_line("a")]), "endpoint": CHAT, "completion_window": "24h",
               **fields}
    with pytest.raises(openai.BadRequestError) as refused:
        client.batches.create(**request)
    assert message in refused.value.message
    assert refused.value.body["type"] == "invalid_request_error"


def test_an_output_file_is_no_batch_input(client):
    batch = wait_for_end(client, client.batches.create(input_file_id=upload(client, [chat_line("a")]), endpoint=CHAT,
                                                       completion_window="24h").id)
    with pytest.raises(openai.BadRequestError, match="purpose 'batch_output'"):
        client.batches.create(input_file_id=batch.output_file_id, endpoint=CHAT, completion_window="24h")


def test_bad_ids_are_404(client):
    for call in (lambda: client.batches.retrieve("batch_nope"), lambda: client.batches.cancel("batch_nope"),
                 lambda: client.files.retrieve("file-nope"), lambda: client.files.content("file-nope"),
                 lambda: client.files.delete("file-nope")):
        with pytest.raises(openai.NotFoundError):
            call()


def test_uploads_are_bounded_in_bytes_and_lines(client, router):
    # Past the file limit, within the upload's body bound: the route says which limit.
    with pytest.raises(openai.APIStatusError) as too_large:
        client.files.create(file=("big.jsonl", io.BytesIO(b"x" * (MAX_FILE_BYTES + 1))), purpose="batch")
    assert too_large.value.status_code == 413 and "--batch_max_file_bytes" in too_large.value.message
    # Far past it: refused by the body bound before it is read.
    with pytest.raises(openai.APIStatusError) as far_too_large:
        client.files.create(file=("huge.jsonl", io.BytesIO(b"x" * (MAX_FILE_BYTES * 2))), purpose="batch")
    assert far_too_large.value.status_code == 413
    with pytest.raises(openai.APIStatusError) as too_many:
        upload(client, [chat_line(f"r{index}") for index in range(MAX_LINES + 1)])
    assert too_many.value.status_code == 413 and "--batch_max_lines" in too_many.value.message
    # Other routes keep the router's 1 MiB bound, uploads' larger one does not loosen them.
    big_chat = httpx.post(f"{router.url}/openai/v1/chat/completions", timeout=30,
                          json={"model": "auto", "messages": [{"role": "user", "content": "x" * (1 << 20)}]})
    assert big_chat.status_code == 413
    with pytest.raises(openai.BadRequestError, match="purpose must be 'batch'"):
        client.files.create(file=("a.jsonl", io.BytesIO(jsonl([chat_line("a")]))), purpose="assistants")


def test_files_are_listed_and_deleted_but_not_under_an_active_batch(client, fakes):
    fakes["llm-small-a"].delay = 0.5
    input_id = upload(client, [chat_line(f"slow-{index}") for index in range(4)], name="slow.jsonl")
    listed = client.files.list(purpose="batch")
    assert input_id in [listed_file.id for listed_file in listed.data]
    oldest_first = client.files.list(purpose="batch", order="asc", limit=100).data
    assert [f.created_at for f in oldest_first] == sorted(f.created_at for f in oldest_first)
    batch = client.batches.create(input_file_id=input_id, endpoint=CHAT, completion_window="24h")
    with pytest.raises(openai.ConflictError, match=batch.id):
        client.files.delete(input_id)
    wait_for_end(client, batch.id)
    assert client.files.delete(input_id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(input_id)
    assert batch.id in [listed_batch.id for listed_batch in client.batches.list(limit=100)]


def test_a_batch_past_its_window_expires_with_the_results_it_has(client, fakes):
    # 80 lines of 0.5 s, 8 at once: 5 s of work in a window of 2 s (1 to 2 s: times are whole seconds).
    fakes["llm-small-a"].delay = 0.5
    lines = [chat_line(f"e-{index}") for index in range(80)]
    batch = client.batches.create(input_file_id=upload(client, lines), endpoint=CHAT, completion_window="2s")
    assert batch.expires_at == batch.created_at + 2
    batch = wait_for_end(client, batch.id, timeout=30)
    assert batch.status == "expired" and batch.expired_at >= batch.expires_at
    output, errors = all_lines(client, batch)
    assert 0 < len(output) < 80 and batch.request_counts.completed == len(output)
    assert sorted(line["custom_id"] for line in output + errors) == sorted(line["custom_id"] for line in lines)
    expired = [line for line in errors if line["error"] is not None]
    assert len(expired) == 80 - len(output)
    assert expired[0]["response"] is None and expired[0]["error"]["code"] == "batch_expired"


def test_a_cancelled_batch_runs_no_more_lines(client, fakes):
    fakes["llm-small-a"].delay = 0.5  # 80 lines, 8 at once: 5 s of work, cancelled within the first
    lines = [chat_line(f"c-{index}") for index in range(80)]
    batch = client.batches.create(input_file_id=upload(client, lines), endpoint=CHAT, completion_window="24h")
    wait_for_status(client, batch.id, lambda current: current.request_counts.completed >= 1)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at is not None
    batch = wait_for_end(client, batch.id)
    assert batch.status == "cancelled" and batch.cancelled_at >= batch.cancelling_at
    ran = len(fakes["llm-small-a"].received)
    output, errors = all_lines(client, batch)
    assert len(output) == batch.request_counts.completed and len(output) <= ran < 80
    assert sorted(line["custom_id"] for line in output + errors) == sorted(line["custom_id"] for line in lines)
    assert {line["error"]["code"] for line in errors} == {"batch_cancelled"}
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(wait_for_end(client, client.batches.create(
            input_file_id=upload(client, [chat_line("done")]), endpoint=CHAT, completion_window="24h").id).id)


def test_batch_lines_wait_for_spare_capacity(client, fakes, router):
    small = fakes["llm-small-a"]
    small.waiting = 5.0  # a busy target: its predictor's queue is above --batch_max_waiting
    # Two scrapes later the router has polled the busy queue (the first may have begun before).
    scrapes = small.metrics_scrapes
    while small.metrics_scrapes < scrapes + 2:
        time.sleep(0.02)
    batch = client.batches.create(input_file_id=upload(client, [chat_line("patient")]), endpoint=CHAT,
                                  completion_window="24h")
    # Many load polls later, nothing has run.
    time.sleep(1.0)
    assert small.received == [] and client.batches.retrieve(batch.id).status == "in_progress"
    small.waiting = 0.0
    assert wait_for_end(client, batch.id).status == "completed"
    assert math.isclose(_metric(router, "router_batch_lines_in_flight"), 0.0)
    assert _metric(router, "router_batch_lines_total", 'outcome="completed"') >= 1
    assert _metric(router, "router_batch_transitions_total", 'to="completed"') >= 1


def _metric(router: Server, name: str, labels: str = "") -> float:
    for line in httpx.get(f"{router.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name) and labels in line and not line.startswith("#"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name}{{{labels}}} on /metrics")


def test_online_requests_preempt_the_newest_lines_which_run_again(client, fakes, router):
    """The router runs 8 lines at once, 1 beside online requests (the default): an online request
    cancels the 7 newest lines' requests; they are sent again once online traffic is quiet, and
    the batch still ends with one result per line."""
    small = fakes["llm-small-a"]
    small.delay = 3.0
    preempted_before = _metric(router, "router_batch_lines_total", 'outcome="preempted"')
    lines = [chat_line(f"line-{index}", "llm-small") for index in range(8)]
    batch = client.batches.create(input_file_id=upload(client, lines), endpoint=CHAT, completion_window="24h")
    deadline = time.monotonic() + 30
    while small.in_flight < 8 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert small.in_flight == 8
    client.chat.completions.create(model="llm-small", messages=[{"role": "user", "content": "online"}], max_tokens=4)
    batch = wait_for_end(client, batch.id)
    assert batch.status == "completed" and batch.request_counts.completed == 8
    output, _ = all_lines(client, batch)
    assert sorted(line["custom_id"] for line in output) == sorted(line["custom_id"] for line in lines)
    preempted = _metric(router, "router_batch_lines_total", 'outcome="preempted"') - preempted_before
    assert preempted >= 1
    # Each preempted line was sent again; plus the online request.
    assert len(small.received) == 8 + preempted + 1


def test_lines_answered_503_run_again_after_their_retry_after(client, fakes, router):
    fakes["llm-small-a"].status = 503
    retried_before = _metric(router, "router_batch_lines_total", 'outcome="retried"')
    lines = [chat_line(f"busy-{index}", "llm-small") for index in range(3)]
    batch = client.batches.create(input_file_id=upload(client, lines), endpoint=CHAT, completion_window="24h")
    deadline = time.monotonic() + 10
    while _metric(router, "router_batch_lines_total", 'outcome="retried"') < retried_before + 3:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert client.batches.retrieve(batch.id).request_counts.failed == 0
    fakes["llm-small-a"].status = 200
    batch = wait_for_end(client, batch.id)
    assert batch.status == "completed" and batch.request_counts.completed == 3


def test_the_example_client_runs_a_batch(router):
    ran = run_python("examples/batch_client.py", "--url", router.url)
    assert ran.returncode == 0, ran.stderr
    assert "completed: 3 completed, 0 failed of 3" in ran.stdout
    assert "question-0 (llm-small): 'llm-small-a answers'" in ran.stdout


@pytest.mark.parametrize("method, path, request_fields, message", [
    ("POST", "/openai/v1/batches", {"content": b"not json"}, "the request body must be a JSON object"),
    ("POST", "/openai/v1/batches", {"json": ["a list"]}, "the request body must be a JSON object"),
    ("POST", "/openai/v1/batches", {"json": {"endpoint": CHAT, "completion_window": "24h"}}, "input_file_id is required"),
    ("POST", "/openai/v1/files", {"json": {"purpose": "batch"}}, "the upload must be multipart/form-data"),
    ("POST", "/openai/v1/files", {"data": {"purpose": "batch"}, "files": {"other": ("a", b"{}")}},
     "the upload has no 'file' part"),
    ("POST", "/openai/v1/files", {"files": {"file": ("a.jsonl", b"{}\n")}}, "the upload has no 'purpose' field"),
    ("POST", "/openai/v1/files", {"files": {"file": ("a.jsonl", b"\xff\xfe\n")}, "data": {"purpose": "batch"}},
     "the file is not UTF-8 text"),
    ("GET", "/openai/v1/batches?limit=0", {}, "limit must be from 1 to 10000"),
    ("GET", "/openai/v1/batches?limit=many", {}, "limit"),
    ("GET", "/openai/v1/files?order=sideways", {}, "order must be 'asc' or 'desc'"),
    ("GET", "/openai/v1/files?purpose=fine-tune", {}, "purpose must be one of batch, batch_output"),
])
def test_malformed_requests_are_400_in_openai_shape(router, method, path, request_fields, message):
    answer = httpx.request(method, router.url + path, timeout=10, **request_fields)
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["error"]["message"]
