"""Each replica's live load, polled from its predictor's Prometheus metrics in the background (the
vLLM names our predictor exports, labelled with the model's name)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from router.replicas import Endpoint, Load, ReplicaSet

logger = logging.getLogger(__name__)

WAITING = "vllm:num_requests_waiting"
KV_CACHE_USAGE = "vllm:kv_cache_usage_perc"


def parse_load(text: str, model: str) -> Load:
    """The load of `model` in a Prometheus text exposition; ValueError if a gauge is missing."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name in (WAITING, KV_CACHE_USAGE):
            for sample in family.samples:
                if sample.labels.get("model_name") == model:
                    values[family.name] = sample.value
    missing = [name for name in (WAITING, KV_CACHE_USAGE) if name not in values]
    if missing:
        raise ValueError(f"no {' or '.join(missing)} for model_name={model!r}")
    return Load(values[WAITING], values[KV_CACHE_USAGE])


class LoadPoller:
    """Polls every replica that has a metrics URL, all at once, every `interval` seconds. A poll
    that fails or does not answer within the interval leaves the replica's load unknown; a long
    waiting queue may open its circuit breaker."""

    def __init__(self, client: httpx.AsyncClient, replica_sets: Iterable[ReplicaSet], interval: float) -> None:
        self.client = client
        self.polled = [(replicas.model, endpoint) for replicas in replica_sets for endpoint in replicas.endpoints
                       if endpoint.metrics_url is not None]
        self.interval = interval
        self._task: asyncio.Task | None = None
        self._errors: dict[str, str] = {}  # the last failure of each metrics URL, to log changes only

    def start(self) -> None:
        if self.polled and self._task is None:
            self._task = asyncio.create_task(self._run(), name="replica-load-poller")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def poll(self) -> None:
        await asyncio.gather(*(self._poll(model, endpoint) for model, endpoint in self.polled))

    async def _run(self) -> None:
        while True:
            await self.poll()
            await asyncio.sleep(self.interval)

    async def _poll(self, model: str, endpoint: Endpoint) -> None:
        url = endpoint.metrics_url
        try:
            response = await self.client.get(url, timeout=self.interval)
            response.raise_for_status()
            endpoint.report_load(parse_load(response.text, model))
        except (httpx.HTTPError, ValueError) as exc:
            endpoint.report_load(None)
            error = str(exc) or type(exc).__name__
            if self._errors.get(url) != error:
                logger.warning("%s replica %s: load unknown, its metrics at %s failed: %s", model, endpoint.url, url,
                               error)
            self._errors[url] = error
            return
        if self._errors.pop(url, None) is not None:
            logger.info("%s replica %s: metrics at %s answer again", model, endpoint.url, url)
