"""Background requests (router/batch/background.py) on a real `python -m router` in front of fake
transformers: a completion submitted with `"background": true` gets its id at once, runs on the
batch worker, and is read by id (polled, or long-polled with ?wait=), cancelled, or followed on the
WebSocket API; bad bodies are refused at once as online ones are; ids belong to their tenant; a
request survives the router's kill -9; and the batches API never shows one. The store's part is
run on both stores (SQLite and Redis)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator

import httpx
import pytest
import websockets

from router.batch.finalize import Finalizer, Sweeper
from router.batch.store import BatchKind, BatchRecord, BatchStatus
from tests.router.conftest import start_router
from tests.router.edge_fakes import FakeTransformer
from tests.servers import Server

from .batch_helpers import (
    CHAT,
    batch_config,
    chat_line,
    client_of,
    start_tenant_router,
    upload,
    wait_for_end,
)

KEYS = {"acme": "sk-acme-background-key", "globex": "sk-globex-background-key"}
FINAL = ("completed", "failed", "cancelled", "expired")
QUESTION = {"model": "auto", "messages": [{"role": "user", "content": "How are you?"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def router(fakes, tmp_path_factory) -> Iterator[Server]:
    """One batch line at a time: a slow request holds the worker, and the next one stays queued."""
    directory = tmp_path_factory.mktemp("background")
    config = batch_config(directory / "router.yaml", fakes["llm-small-a"], fakes["llm-large-a"])
    server = start_router(config, directory, "--batch_concurrency", "1")
    yield server
    assert server.stop() == 0, server.log()[-3000:]


@pytest.fixture(scope="module")
def tenant_router(fakes, tmp_path_factory) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("background-tenants")
    server = start_tenant_router(fakes, directory, KEYS)
    yield server
    assert server.stop() == 0, server.log()[-3000:]


@pytest.fixture(autouse=True)
def reset_fakes(fakes) -> None:
    for fake in fakes.values():
        fake.reset()


def headers(key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"} if key else {}


def submit(url: str, body: dict, key: str | None = None, path: str = "/chat/completions") -> httpx.Response:
    return httpx.post(f"{url}/openai/v1{path}", json=body, headers=headers(key), timeout=10)


def retrieve(url: str, request_id: str, key: str | None = None, wait: float | None = None) -> httpx.Response:
    params = {} if wait is None else {"wait": wait}
    return httpx.get(f"{url}/openai/v1/background/{request_id}", params=params, headers=headers(key), timeout=90)


def cancel(url: str, request_id: str, key: str | None = None) -> httpx.Response:
    return httpx.post(f"{url}/openai/v1/background/{request_id}/cancel", headers=headers(key), timeout=10)


def wait_for(url: str, request_id: str, statuses: tuple[str, ...], key: str | None = None,
             timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        current = retrieve(url, request_id, key).json()
        if current["status"] in statuses:
            return current
        assert time.monotonic() < deadline, f"never {statuses}: {current}"
        time.sleep(0.05)


def asked(fake: FakeTransformer, content: str) -> bool:
    return any(message.get("content") == content for request in fake.received
               for message in request["body"].get("messages", []))


def question(content: str) -> dict:
    return {**QUESTION, "messages": [{"role": "user", "content": content}]}


def test_the_openai_client_submits_and_the_answer_is_read_by_id(router, fakes):
    fakes["llm-small-a"].delay = fakes["llm-large-a"].delay = 1.0
    started = time.monotonic()
    submitted = client_of(router.url).chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "How are you?"}], max_tokens=4,
        extra_body={"background": True})
    # The client parses the object as a ChatCompletion; its own fields ride along as extras.
    assert time.monotonic() - started < 0.9
    assert submitted.id.startswith("bgreq_") and submitted.object == "background.request"
    assert submitted.model_extra["status"] == "queued"
    assert submitted.model_extra["endpoint"] == CHAT and submitted.model == "auto"

    done = wait_for(router.url, submitted.id, FINAL)
    assert done["status"] == "completed", done
    assert done["started_at"] is not None and done["completed_at"] is not None and done["error"] is None
    response = done["response"]
    assert response["status_code"] == 200 and response["request_id"]
    assert response["body"]["choices"][0]["message"]["content"] in ("llm-small-a answers", "llm-large-a answers")
    # What the target got has no `background` field: the line runs as an online request.
    assert all("background" not in request["body"] for fake in fakes.values() for request in fake.received)


def test_a_completion_runs_in_the_background_and_wait_long_polls(router, fakes):
    fakes["llm-small-a"].delay = fakes["llm-large-a"].delay = 0.5
    answer = submit(router.url, {"model": "auto", "prompt": "Say hi", "max_tokens": 4, "background": True},
                    path="/completions")
    assert answer.status_code == 200, answer.text
    request_id = answer.json()["id"]
    started = time.monotonic()
    done = retrieve(router.url, request_id, wait=30).json()
    assert done["status"] == "completed" and time.monotonic() - started < 10, done
    assert done["endpoint"] == "/v1/completions"
    assert done["response"]["body"]["choices"][0]["text"].endswith("answers")
    # A wait on one that ended answers at once; a wait past the bound is refused.
    started = time.monotonic()
    assert retrieve(router.url, request_id, wait=30).json()["status"] == "completed"
    assert time.monotonic() - started < 1
    refused = retrieve(router.url, request_id, wait=61)
    assert refused.status_code == 400 and "wait must be from 0 to 60" in refused.json()["error"]["message"]


def test_a_queued_request_cancelled_never_runs(router, fakes):
    fakes["llm-small-a"].delay = fakes["llm-large-a"].delay = 3.0
    holder = submit(router.url, {**question("hold the worker"), "background": True}).json()["id"]
    wait_for(router.url, holder, ("in_progress",))
    queued = submit(router.url, {**question("never run me"), "background": True}).json()["id"]
    assert retrieve(router.url, queued).json()["status"] == "queued"

    cancelled = cancel(router.url, queued)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text
    assert cancelled.json()["error"]["code"] == "background_cancelled"
    assert cancelled.json()["cancelled_at"] is not None
    # Cancelling again answers it as it is.
    assert cancel(router.url, queued).json()["status"] == "cancelled"

    assert wait_for(router.url, holder, FINAL)["status"] == "completed"
    time.sleep(0.5)  # the worker's slot is free: it would have claimed the cancelled line by now
    assert not any(asked(fake, "never run me") for fake in fakes.values())
    assert retrieve(router.url, queued).json()["status"] == "cancelled"
    # One that ended otherwise cannot be cancelled.
    refused = cancel(router.url, holder)
    assert refused.status_code == 409 and "has ended (completed)" in refused.json()["error"]["message"]


def test_a_running_request_cancelled_frees_its_slot_and_stays_cancelled(router, fakes):
    fakes["llm-small-a"].delay = fakes["llm-large-a"].delay = 4.0
    running = submit(router.url, {**question("cancel me while I run"), "background": True}).json()["id"]
    wait_for(router.url, running, ("in_progress",))
    assert cancel(router.url, running).json()["status"] == "cancelled"

    # Its dispatch was stopped: the single slot takes the next request long before 4 s are over.
    fakes["llm-small-a"].delay = fakes["llm-large-a"].delay = 0.0
    started = time.monotonic()
    following = submit(router.url, {**question("after the cancel"), "background": True}).json()["id"]
    assert wait_for(router.url, following, FINAL)["status"] == "completed"
    assert time.monotonic() - started < 3
    time.sleep(0.3)
    current = retrieve(router.url, running).json()
    assert current["status"] == "cancelled" and current["response"] is None


def test_bad_submissions_are_refused_at_once_as_online_requests_are(router, fakes):
    streamed = submit(router.url, {**QUESTION, "stream": True, "background": True})
    assert streamed.status_code == 400 and streamed.json()["error"]["param"] == "stream"
    assert "subscribe to it on the WebSocket API" in streamed.json()["error"]["message"]

    for bad in ({**QUESTION, "max_tokens": -1}, {"model": "auto"}, {**QUESTION, "model": "gpt-9"}):
        online = submit(router.url, bad)
        background = submit(router.url, {**bad, "background": True})
        assert background.status_code == online.status_code and online.status_code in (400, 404), online.text
        assert background.json()["error"] == online.json()["error"]

    not_a_flag = submit(router.url, {**QUESTION, "background": "yes"})
    assert not_a_flag.status_code == 400 and "background must be true or false" in not_a_flag.text
    # `background: false` is an online request.
    online = submit(router.url, {**QUESTION, "background": False})
    assert online.status_code == 200 and online.json()["object"] == "chat.completion"
    assert not any(fake.received and "background" in fake.received[-1]["body"] for fake in fakes.values())


def test_background_requests_and_batches_do_not_mix(router):
    client = client_of(router.url)
    request_id = submit(router.url, {**QUESTION, "background": True}).json()["id"]
    batch = client.batches.create(input_file_id=upload(client, [chat_line("only")]), endpoint=CHAT,
                                  completion_window="24h")
    assert wait_for_end(client, batch.id).status == "completed"

    listed = [listed.id for listed in client.batches.list(limit=100)]
    assert batch.id in listed and request_id not in listed
    assert httpx.get(f"{router.url}/openai/v1/batches/{request_id}").status_code == 404
    unknown = retrieve(router.url, batch.id)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "background_not_found"
    assert retrieve(router.url, "bgreq_unknown").status_code == 404
    assert cancel(router.url, "bgreq_unknown").status_code == 404
    wait_for(router.url, request_id, FINAL)


def test_a_request_belongs_to_its_tenant(tenant_router):
    acme, globex = KEYS["acme"], KEYS["globex"]
    assert submit(tenant_router.url, {**QUESTION, "background": True}).status_code == 401
    request_id = submit(tenant_router.url, {**QUESTION, "background": True}, acme).json()["id"]
    assert wait_for(tenant_router.url, request_id, FINAL, acme)["status"] == "completed"
    for answer in (retrieve(tenant_router.url, request_id, globex), cancel(tenant_router.url, request_id, globex)):
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "background_not_found"
    assert retrieve(tenant_router.url, request_id).status_code == 401

    async def subscribe_as(key: str) -> dict:
        url = tenant_router.url.replace("http://", "ws://") + "/ws/v1/generate"
        async with websockets.connect(url, additional_headers=headers(key)) as socket:
            await socket.send(json.dumps({"type": "subscribe", "id": request_id}))
            return json.loads(await asyncio.wait_for(socket.recv(), 10))

    refused = asyncio.run(subscribe_as(globex))
    assert refused["type"] == "error" and refused["code"] == "not_found" and refused["id"] == request_id
    final = asyncio.run(subscribe_as(acme))
    assert final["type"] == "background" and final["status"] == "completed"


def test_a_websocket_subscription_gets_the_status_changes_and_the_result(router, fakes):
    fakes["llm-small-a"].delay = fakes["llm-large-a"].delay = 1.0
    request_id = submit(router.url, {**QUESTION, "background": True}).json()["id"]

    async def follow() -> list[dict]:
        async with websockets.connect(router.url.replace("http://", "ws://") + "/ws/v1/generate") as socket:
            await socket.send(json.dumps({"type": "subscribe", "id": "bgreq_unknown"}))
            await socket.send(json.dumps({"type": "subscribe", "id": request_id}))
            received = []
            while not received or received[-1].get("status") not in FINAL:
                received.append(json.loads(await asyncio.wait_for(socket.recv(), 20)))
            # Nothing more comes for it.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(socket.recv(), 0.6)
            return received

    received = asyncio.run(follow())
    unknown = next(message for message in received if message["id"] == "bgreq_unknown")
    assert unknown["type"] == "error" and unknown["code"] == "not_found"
    updates = [message for message in received if message["id"] == request_id]
    assert all(message["type"] == "background" for message in updates)
    assert [message["status"] for message in updates][-1] == "completed"
    assert "in_progress" in [message["status"] for message in updates]
    assert all("response" not in message for message in updates[:-1])
    assert updates[-1]["response"]["body"]["choices"][0]["message"]["content"].endswith("answers")


def test_a_background_request_survives_kill_9_and_completes_after_a_restart(fakes, tmp_path):
    fakes["llm-small-a"].delay = fakes["llm-large-a"].delay = 30.0
    config = batch_config(tmp_path / "router.yaml", fakes["llm-small-a"], fakes["llm-large-a"])
    arguments = ("--batch_lease_seconds", "2")
    first = start_router(config, tmp_path, *arguments)
    try:
        request_id = submit(first.url, {**QUESTION, "background": True}).json()["id"]
        wait_for(first.url, request_id, ("in_progress",))
    finally:
        first.process.send_signal(signal.SIGKILL)
        first.process.wait()

    fakes["llm-small-a"].delay = fakes["llm-large-a"].delay = 0.0
    second = start_router(config, tmp_path, *arguments)
    try:
        done = wait_for(second.url, request_id, FINAL)
        assert done["status"] == "completed" and done["response"]["status_code"] == 200, done
    finally:
        assert second.stop() == 0, second.log()[-3000:]


# The store's part, on both stores ------------------------------------------------------


def background_record(request_id: str, created_at: int, tenant: str = "acme") -> BatchRecord:
    return BatchRecord(request_id, tenant, CHAT, "", "24h", BatchStatus.IN_PROGRESS, created_at,
                       created_at + 86400, 1, kind=BatchKind.BACKGROUND, model="auto")


async def test_the_store_keeps_the_kind_and_lists_background_requests_apart(batch_store):
    await batch_store.add_batch(background_record("bgreq_old", 100), [("request", b"{}")])
    await batch_store.add_batch(background_record("bgreq_new", 500), [("request", b"{}")])
    batch = BatchRecord("batch_1", "acme", CHAT, "file-in", "24h", BatchStatus.IN_PROGRESS, 100, 86500, 1)
    await batch_store.add_batch(batch, [("a", b"{}")])

    stored = await batch_store.batch("bgreq_old")
    assert stored.kind is BatchKind.BACKGROUND and stored.model == "auto"
    assert (await batch_store.batch("batch_1")).kind is BatchKind.BATCH
    assert [record.id for record in await batch_store.batches("acme", None, 10)] == ["batch_1"]
    assert [record.id for record in await batch_store.background_requests(400, 10)] == ["bgreq_old"]
    assert {record.id for record in await batch_store.active_batches()} == {"bgreq_old", "bgreq_new", "batch_1"}

    await batch_store.transition("bgreq_old", frozenset({BatchStatus.IN_PROGRESS}), BatchStatus.CANCELLED, 200)
    await batch_store.delete_batch("bgreq_old")
    assert await batch_store.batch("bgreq_old") is None
    assert await batch_store.background_requests(1000, 10) == [await batch_store.batch("bgreq_new")]
    assert "bgreq_old" not in {record.id for record in await batch_store.active_batches()}


async def test_the_sweeper_deletes_background_requests_past_their_retention(batch_store):
    retention = 600
    for request_id, created_at in (("bgreq_long_done", 100), ("bgreq_just_done", 100), ("bgreq_waiting", 100)):
        await batch_store.add_batch(background_record(request_id, created_at), [("request", b"{}")])
    await batch_store.transition("bgreq_long_done", frozenset({BatchStatus.IN_PROGRESS}), BatchStatus.CANCELLED, 200)
    await batch_store.transition("bgreq_just_done", frozenset({BatchStatus.IN_PROGRESS}), BatchStatus.CANCELLED, 900)
    now = 1000.0
    sweeper = Sweeper(batch_store, Finalizer(batch_store, lambda: now), stale_seconds=60,
                      background_retention_seconds=retention, clock=lambda: now)

    assert await sweeper.delete_retained(now) == 1
    assert await batch_store.batch("bgreq_long_done") is None
    # Ended 100 s ago, and never ended (its window is still open): both kept.
    assert {record.id for record in await batch_store.background_requests(int(now), 10)} == {"bgreq_just_done",
                                                                                           "bgreq_waiting"}
