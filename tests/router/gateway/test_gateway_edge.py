"""The gateway through real router processes in front of fake transformers: three routers sharing
one real Redis hold a tenant to its concurrency limit and its budget together, every refusal is a
429 in OpenAI's shape with its headers, the official openai client retries after them, and bad
keys, models, headers and files get clear errors, never a 5xx."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.router.conftest import ROUTER_NAME, run_python, start_router, write_config
from tests.router.edge_fakes import FakeTransformer, running_transformers
from tests.servers import Server, free_port

MAX_CONCURRENT = 4
BUDGET_TOKENS = 400
RATED_PER_MINUTE = 60
KEYS = {"limited": "sk-limited-0123", "budgeted": "sk-budgeted-0123", "rated": "sk-rated-0123",
        "free": "sk-free-0123", "admin": "sk-admin-0123", "small-only": "sk-small-only-0123"}
RATE_LIMIT_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests")
CHAT = "/openai/v1/chat/completions"


def sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def tenants_file(path: Path) -> Path:
    policies = {
        "limited": {"max_concurrent": MAX_CONCURRENT, "requests_per_minute": 100_000},
        "budgeted": {"budget": {"tokens": BUDGET_TOKENS, "period": "month"}},
        "rated": {"requests_per_minute": RATED_PER_MINUTE, "tokens_per_minute": 100_000},
        "free": {},
        "admin": {"admin": True},
        "small-only": {"models": ["llm-small"]},
    }
    tenants = [{"name": name, "keys_sha256": [sha256(KEYS[name])], **policy} for name, policy in policies.items()]
    path.write_text(yaml.safe_dump({"tenants": tenants}, sort_keys=False))
    return path


def bearer(tenant: str) -> dict[str, str]:
    return {"authorization": f"Bearer {KEYS[tenant]}"}


def chat(**fields) -> dict:
    return {"model": "llm-small", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, **fields}


@dataclass
class Edge:
    routers: list[Server]
    small: FakeTransformer
    large: FakeTransformer

    def url(self, index: int = 0) -> str:
        return self.routers[index % len(self.routers)].url


@pytest.fixture(scope="module")
def edge(tmp_path_factory, redis_server) -> Iterator[Edge]:
    directory = tmp_path_factory.mktemp("gateway-edge")
    with running_transformers("llm-small-a", "llm-large-a") as fakes:
        config = write_config(directory / "router.yaml",
                              targets={"small": {"model": "llm-small", "urls": [fakes["llm-small-a"].url]},
                                       "large": {"model": "llm-large", "urls": [fakes["llm-large-a"].url]}},
                              cascade={"enabled": False})
        tenants = tenants_file(directory / "tenants.yaml")
        routers: list[Server] = []
        try:
            for index in range(3):
                routers.append(start_router(config, directory, "--tenants_file", str(tenants), "--redis_url",
                                            redis_server.url, "--usage_ledger", str(directory / f"spool-{index}.db")))
            yield Edge(routers, fakes["llm-small-a"], fakes["llm-large-a"])
        finally:
            for router in routers:
                router.stop()


@pytest.fixture
def fresh(edge) -> Edge:
    for fake in (edge.small, edge.large):
        fake.reset()
    return edge


async def _burst(edge: Edge, tenant: str, count: int, body: dict) -> list[httpx.Response]:
    """`count` requests at once, spread over the three routers."""
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        return await asyncio.gather(*(client.post(edge.url(index) + CHAT, json=body, headers=bearer(tenant))
                                      for index in range(count)))


def test_three_routers_hold_a_tenant_to_its_concurrency_limit(fresh):
    fresh.small.delay = 0.05
    responses = asyncio.run(_burst(fresh, "limited", 1000, chat()))
    statuses = [response.status_code for response in responses]
    assert set(statuses) <= {200, 429}, sorted(set(statuses))
    assert statuses.count(200) >= MAX_CONCURRENT
    assert fresh.small.max_in_flight <= MAX_CONCURRENT
    refused = [response for response in responses if response.status_code == 429]
    assert refused, "1000 requests at once should exceed 4 concurrent"
    for response in refused:
        assert int(response.headers["retry-after"]) >= 1 and int(response.headers["retry-after-ms"]) >= 1
        for name in RATE_LIMIT_HEADERS:
            assert name in response.headers, name
        error = response.json()["error"]
        assert error["code"] == "concurrency_limit_exceeded" and "concurren" in error["message"]
    for response in responses:
        assert all(name in response.headers for name in RATE_LIMIT_HEADERS)


def test_a_budget_overshoots_by_at_most_one_reservation(fresh):
    # Each request reserves its prompt (the router's estimate) + max_tokens 20; the fake answers
    # with 3 prompt + 2 completion tokens, so the budget settles lower than reserved.
    fresh.small.delay = 0.02
    body = chat(max_tokens=20)
    responses = asyncio.run(_burst(fresh, "budgeted", 300, body))
    admitted = sum(response.status_code == 200 for response in responses)
    refused = [response for response in responses if response.status_code == 429]
    assert refused and all(response.json()["error"]["code"] == "insufficient_quota" for response in refused)
    usage = httpx.get(fresh.url() + "/v1/usage", params={"period": "month", "tenant": "budgeted"},
                      headers=bearer("admin")).json()
    used = usage["total"]["total_tokens"]
    assert used == admitted * 5
    reservation = 20 + 1 + 2  # max_tokens + the router's estimate of "Hi" (at most a few tokens)
    assert used <= BUDGET_TOKENS + reservation


def test_the_openai_client_retries_a_429_after_its_delay(fresh):
    client = openai.OpenAI(base_url=fresh.url() + "/openai/v1", api_key=KEYS["rated"], max_retries=0)
    # The bucket refills one request a second: drained within a few seconds of requests in a row.
    # The retrying client's first try must come while the bucket is still empty: the drain goes on
    # until a refusal leaves at least 0.7 s of it, which a loaded machine needs to send the next.
    for _ in range(5 * RATED_PER_MINUTE):
        try:
            client.chat.completions.create(**chat())
        except openai.RateLimitError as refused:
            assert refused.response.headers["x-ratelimit-remaining-requests"] == "0"
            if int(refused.response.headers["retry-after-ms"]) >= 700:
                break
    else:
        pytest.fail("the requests bucket was never drained")
    retrying = openai.OpenAI(base_url=fresh.url(1) + "/openai/v1", api_key=KEYS["rated"], max_retries=3)
    answer = retrying.chat.completions.with_raw_response.create(**chat())
    assert answer.http_response.status_code == 200
    assert answer.retries_taken >= 1


def test_usage_is_a_tenants_own_unless_admin(fresh):
    httpx.post(fresh.url() + CHAT, json=chat(), headers=bearer("free")).raise_for_status()
    own = httpx.get(fresh.url(2) + "/v1/usage", headers=bearer("free")).json()
    assert {row["tenant"] for row in own["data"]} == {"free"}
    assert own["total"]["prompt_tokens"] >= 3 and own["total"]["completion_tokens"] >= 2
    other = httpx.get(fresh.url() + "/v1/usage", params={"tenant": "limited"}, headers=bearer("free"))
    assert other.status_code == 403
    everyone = httpx.get(fresh.url() + "/v1/usage", headers=bearer("admin")).json()
    assert {"free", "limited"} <= {row["tenant"] for row in everyone["data"]}
    bad = httpx.get(fresh.url() + "/v1/usage", params={"period": "fortnight"}, headers=bearer("free"))
    assert bad.status_code == 400 and "period" in bad.json()["error"]["message"]


@pytest.mark.parametrize("headers, status, code", [
    ({}, 401, "invalid_api_key"),
    ({"authorization": "Bearer sk-unknown"}, 401, "invalid_api_key"),
    ({"authorization": KEYS["free"]}, 401, "invalid_api_key"),
    ({**bearer("free"), "idempotency-key": "x" * 300}, 400, "invalid_idempotency_key"),
    ({**bearer("free"), "idempotency-key": "bad\tkey"}, 400, "invalid_idempotency_key"),
], ids=["missing", "unknown", "not-bearer", "long-idempotency-key", "control-character-key"])
def test_bad_keys_and_headers_get_clear_errors(fresh, headers, status, code):
    response = httpx.post(fresh.url() + CHAT, json=chat(), headers=headers)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


def test_a_tenant_may_only_use_its_models(fresh):
    refused = httpx.post(fresh.url() + CHAT, json=chat(model="llm-large"), headers=bearer("small-only"))
    assert refused.status_code == 403 and "llm-large" in refused.json()["error"]["message"]
    assert httpx.post(fresh.url() + CHAT, json=chat(), headers=bearer("small-only")).status_code == 200


def test_predict_routes_need_a_key_with_a_tenants_file(fresh):
    body = {"instances": [{"prompt": "Hi"}]}
    path = f"/v1/models/{ROUTER_NAME}:predict"
    refused = httpx.post(fresh.url() + path, json=body)
    assert refused.status_code == 401 and "API key" in refused.json()["error"]
    answered = httpx.post(fresh.url() + path, json=body, headers=bearer("free"))
    assert answered.status_code == 200 and answered.json()["route"] in ("small", "large")
    assert "x-ratelimit-limit-requests" not in answered.headers  # the free tenant has no limits


def test_an_idempotent_retry_is_replayed_and_not_billed_again(fresh):
    headers = {**bearer("free"), "idempotency-key": "retry-1"}
    before = _usage(fresh, "free")
    first = httpx.post(fresh.url() + CHAT, json=chat(), headers=headers)
    again = httpx.post(fresh.url(1) + CHAT, json=chat(), headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert len(fresh.small.received) == 1
    assert _usage(fresh, "free") - before == 5
    conflict = httpx.post(fresh.url(2) + CHAT, json=chat(max_tokens=6), headers=headers)
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "idempotency_key_reused"


def test_a_duplicate_in_flight_waits_for_the_first(fresh):
    fresh.small.delay = 0.5
    headers = {**bearer("free"), "idempotency-key": "in-flight-1"}

    async def both() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            first = asyncio.create_task(client.post(fresh.url() + CHAT, json=chat(), headers=headers))
            await asyncio.sleep(0.1)
            second = client.post(fresh.url(1) + CHAT, json=chat(), headers=headers)
            return [await first, await second]

    first, second = asyncio.run(both())
    assert first.status_code == second.status_code == 200 and first.json() == second.json()
    assert len(fresh.small.received) == 1


def test_tenants_file_errors_stop_the_router_naming_the_line(tmp_path):
    bad = tmp_path / "tenants.yaml"
    bad.write_text("tenants:\n  - name: acme\n    keys_sha256: [nothex]\n")
    finished = run_python("-m", "router", "--config", str(write_config(tmp_path / "router.yaml")),
                          "--tenants_file", str(bad), "--http_port", str(free_port()))
    output = finished.stderr + finished.stdout
    assert finished.returncode == 2 and "line 3" in output and "Traceback" not in output


def _usage(edge: Edge, tenant: str) -> int:
    report = httpx.get(edge.url() + "/v1/usage", params={"tenant": tenant}, headers=bearer("admin")).json()
    return report["total"]["total_tokens"]


def test_rate_limit_headers_ride_on_streams(fresh):
    with httpx.stream("POST", fresh.url() + CHAT, json=chat(stream=True), headers=bearer("rated")) as response:
        assert response.status_code == 200
        assert all(name in response.headers for name in RATE_LIMIT_HEADERS)
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    chunks = [json.loads(line[6:]) for line in events[:-1]]
    # The client asked for no usage: the gateway's own request for it does not show.
    assert all("usage" not in chunk for chunk in chunks) and all(chunk["choices"] for chunk in chunks)
    assert events[-1] == "data: [DONE]"
