"""Batches with tenants: files and batches belong to the tenant whose key created them (another
tenant's ids are 404, no key is 401), and the tokens a batch's lines use are metered to that
tenant, as its online requests are (GET /v1/usage)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.servers import Server

from .batch_helpers import (
    CHAT,
    chat_line,
    client_of,
    start_tenant_router,
    upload,
    wait_for_end,
)

KEYS = {"acme": "sk-acme-batch-key", "globex": "sk-globex-batch-key"}


@pytest.fixture(scope="module")
def router(fakes, tmp_path_factory) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("batch-tenants")
    server = start_tenant_router(fakes, directory, KEYS)
    yield server
    assert server.stop() == 0, server.log()[-3000:]


def test_batches_belong_to_their_tenant_and_are_metered_to_it(router):
    acme, globex = client_of(router.url, KEYS["acme"]), client_of(router.url, KEYS["globex"])
    input_id = upload(acme, [chat_line(f"t-{index}") for index in range(3)])
    batch = acme.batches.create(input_file_id=input_id, endpoint=CHAT, completion_window="24h")

    for call in (lambda: globex.batches.retrieve(batch.id), lambda: globex.batches.cancel(batch.id),
                 lambda: globex.files.retrieve(input_id), lambda: globex.files.content(input_id),
                 lambda: globex.files.delete(input_id)):
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.BadRequestError, match="no file with id"):
        globex.batches.create(input_file_id=input_id, endpoint=CHAT, completion_window="24h")
    assert batch.id not in [listed.id for listed in globex.batches.list()]
    assert input_id not in [listed.id for listed in globex.files.list()]
    with pytest.raises(openai.AuthenticationError):
        client_of(router.url, "sk-not-a-key").batches.list()
    assert httpx.get(f"{router.url}/openai/v1/files", timeout=10).status_code == 401

    batch = wait_for_end(acme, batch.id)
    assert batch.status == "completed" and batch.request_counts.completed == 3
    assert acme.files.content(batch.output_file_id).content.count(b"\n") == 3
    usage = httpx.get(f"{router.url}/v1/usage", params={"period": "all"}, timeout=10,
                      headers={"authorization": f"Bearer {KEYS['acme']}"}).json()
    # The fake's answers use 3 prompt and 2 completion tokens each; the routes of files and
    # batches themselves are not metered.
    assert [(row["tenant"], row["model"], row["requests"], row["total_tokens"]) for row in usage["data"]] == [
        ("acme", "llm-small", 3, 15)]
    globex_usage = httpx.get(f"{router.url}/v1/usage", params={"period": "all"}, timeout=10,
                             headers={"authorization": f"Bearer {KEYS['globex']}"}).json()
    assert globex_usage["data"] == []
