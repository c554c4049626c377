"""What the batch API's end-to-end tests share: a router config in front of fake transformers, JSONL
files of requests, waiting for a batch to end, and reading its output and error files."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import yaml
from openai import OpenAI
from openai.types import Batch

from router.gateway.tenants import hash_key
from tests.router.conftest import start_router, write_config
from tests.router.edge_fakes import FakeTransformer
from tests.servers import Server

ENDED = ("completed", "failed", "expired", "cancelled")
CHAT = "/v1/chat/completions"
# Load polling fast enough that a test sees a busy target within a tick.
METRICS_INTERVAL = 0.1


def batch_config(path: Path, small: FakeTransformer, large: FakeTransformer) -> Path:
    """Cascade off (a line's answer is the routed target's), lenient breakers (a test's 400s and
    503s must not hold the next test's lines back)."""
    return write_config(
        path,
        targets={"small": {"model": "llm-small", "urls": [{"url": small.url, "metrics_url": small.url + "/metrics"}]},
                 "large": {"model": "llm-large", "urls": [{"url": large.url, "metrics_url": large.url + "/metrics"}]}},
        policy={"threshold": 0.3},
        cascade={"enabled": False},
        timeouts={"connect_seconds": 1, "request_seconds": 10},
        load_balancing={"metrics_interval_seconds": METRICS_INTERVAL},
        circuit_breakers={"failure_threshold": 100000, "open_seconds": 0.5},
    )


def start_tenant_router(fakes: dict[str, FakeTransformer], directory: Path, keys: dict[str, str]) -> Server:
    """A batch router whose tenants (name -> API key) come from a tenants file, sending to `fakes`."""
    tenants = directory / "tenants.yaml"
    tenants.write_text(yaml.safe_dump({"tenants": [{"name": name, "keys_sha256": [hash_key(key.encode())]}
                                                   for name, key in keys.items()]}))
    config = batch_config(directory / "router.yaml", fakes["llm-small-a"], fakes["llm-large-a"])
    return start_router(config, directory, "--tenants_file", str(tenants))


def client_of(url: str, api_key: str = "unused") -> OpenAI:
    return OpenAI(base_url=f"{url}/openai/v1", api_key=api_key, max_retries=0, timeout=30)


def chat_line(custom_id: str, model: str = "auto", content: str = "How are you?") -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": CHAT,
            "body": {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 4}}


def jsonl(lines: list[dict]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def upload(client: OpenAI, lines: list[dict] | bytes, name: str = "requests.jsonl") -> str:
    content = lines if isinstance(lines, bytes) else jsonl(lines)
    return client.files.create(file=(name, io.BytesIO(content)), purpose="batch").id


def wait_for_end(client: OpenAI, batch_id: str, timeout: float = 60.0) -> Batch:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ENDED:
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status} after {timeout} s: {batch}"
        time.sleep(0.2)


def wait_for_status(client: OpenAI, batch_id: str, predicate, timeout: float = 30.0) -> Batch:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if predicate(batch):
            return batch
        assert time.monotonic() < deadline, f"batch never got there: {batch}"
        time.sleep(0.05)


def file_lines(client: OpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).content.splitlines()]


def all_lines(client: OpenAI, batch: Batch) -> tuple[list[dict], list[dict]]:
    return file_lines(client, batch.output_file_id), file_lines(client, batch.error_file_id)
