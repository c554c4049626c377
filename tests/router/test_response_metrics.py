"""router_responses_total through a real router process with tenants, in front of fake transformers:
each status a client gets, from the edge, the gateway or KServe's predict routes, streams
included, is counted once under its code."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.router.conftest import ROUTER_NAME, start_router, write_config
from tests.router.edge_fakes import FakeTransformer, running_transformers
from tests.servers import Server

KEY = "sk-responses-team-0123"
TINY_KEY = "sk-responses-tiny-0123"
CHAT = "/openai/v1/chat/completions"
COMPLETIONS = "/openai/v1/completions"


def write_tenants(path: Path) -> Path:
    """`team`, unlimited, and `tiny`, allowed one request a minute."""
    tenants = [{"name": "team", "keys_sha256": [hashlib.sha256(KEY.encode()).hexdigest()]},
               {"name": "tiny", "keys_sha256": [hashlib.sha256(TINY_KEY.encode()).hexdigest()],
                "requests_per_minute": 1}]
    path.write_text(yaml.safe_dump({"tenants": tenants}))
    return path


def bearer(key: str = KEY) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def chat(model: str = "auto", **fields) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, **fields}


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeTransformer]]:
    with running_transformers("llm-small-a", "llm-large-a") as running:
        yield running


@pytest.fixture(scope="module")
def router(fakes, tmp_path_factory) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("responses")
    config = write_config(directory / "router.yaml",
                          targets={"small": {"model": "llm-small", "urls": [fakes["llm-small-a"].url]},
                                   "large": {"model": "llm-large", "urls": [fakes["llm-large-a"].url]}},
                          cascade={"enabled": False}, circuit_breakers={"failure_threshold": 1000})
    server = start_router(config, directory, "--tenants_file", str(write_tenants(directory / "tenants.yaml")),
                          "--usage_ledger", str(directory / "usage.db"))
    yield server
    assert server.stop() == 0, server.log()[-3000:]


def responses_by_status(router: Server) -> dict[str, float]:
    counts = {}
    for line in httpx.get(f"{router.url}/metrics", timeout=10).text.splitlines():
        if line.startswith("router_responses_total{"):
            assert f'model_name="{ROUTER_NAME}"' in line, line
            status = line.split('status="', 1)[1].split('"', 1)[0]
            counts[status] = float(line.rsplit(" ", 1)[1])
    return counts


def test_every_status_a_client_gets_is_counted_once(router, fakes):
    fakes["llm-large-a"].status = 503
    before = responses_by_status(router)
    statuses = []
    with httpx.Client(base_url=router.url, timeout=30) as client:
        for body in (chat(), chat(stream=True), {"model": "llm-small", "prompt": "Hi", "stream": True}):
            path = CHAT if "messages" in body else COMPLETIONS
            with client.stream("POST", path, json=body, headers=bearer()) as response:
                response.read()
                statuses.append(response.status_code)
        statuses.append(client.post(f"/v1/models/{ROUTER_NAME}:predict", json={"instances": [{"prompt": "Hi"}]},
                                    headers=bearer()).status_code)
        statuses.append(client.post(CHAT, json=chat(max_tokens=0), headers=bearer()).status_code)
        statuses.append(client.post(f"/v1/models/{ROUTER_NAME}:predict", json={"instances": []},
                                    headers=bearer()).status_code)
        statuses.append(client.post(CHAT, json=chat(), headers=bearer("sk-nobody")).status_code)
        statuses += [client.post(CHAT, json=chat(), headers=bearer(TINY_KEY)).status_code for _ in range(3)]
        statuses.append(client.post(CHAT, json=chat("llm-large"), headers=bearer()).status_code)
    assert statuses == [200, 200, 200, 200, 400, 400, 401, 200, 429, 429, 503]
    after = responses_by_status(router)
    counted = {status: after[status] - before.get(status, 0.0) for status in after}
    # The /metrics read before the requests is counted too (its status goes out after its body is made).
    assert counted == {**{status: 0.0 for status in after}, "200": 5 + 1, "400": 2, "401": 1, "429": 2, "503": 1}
