"""Scale-out on Ray (`--ray_replicas N`): N engine replicas as a Ray Serve deployment, one
AsyncLLMEngine (and one GPU, on CUDA) each, behind the same KServe front. RayEngineClient stands in
for the in-process engine, so LLMModel's admission, deadlines, metrics and error mapping apply
unchanged; Ray Serve's router spreads requests over the replicas (power of two choices)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import ray
from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from runtime.engine import (
    AsyncLLMEngine,
    ConfigError,
    EngineConfig,
    EngineDead,
    EngineStats,
    ModelLoadError,
    OutputStream,
    RequestOutput,
    SamplingParams,
)
from runtime.metrics import LABELS
from runtime.model import LLMModel

logger = logging.getLogger(__name__)

# How old the replicas' stats on /metrics may be: they are fetched from every replica this often.
STATS_PERIOD_S = 1.0
# Ray Serve's own per-replica cap on concurrent requests when the engine queue is unbounded.
UNBOUNDED_ONGOING_REQUESTS = 1 << 20
# A replica's stream yields this first, once the engine has admitted the request.
ADMITTED = None


@dataclass(slots=True)
class RayOptions:
    num_replicas: int
    # A running Ray cluster ("auto", "ray://host:10001", ...); None starts a local Ray.
    address: str | None = None
    # CPUs of the local Ray (None: all of this machine's); not allowed with an address.
    num_cpus: int | None = None
    # CPUs each replica reserves (on CUDA it also reserves one GPU).
    replica_cpus: float = 1.0

    def __post_init__(self) -> None:
        if self.num_replicas < 1:
            raise ConfigError(f"num_replicas must be >= 1, got {self.num_replicas}")
        if self.address is not None and self.num_cpus is not None:
            raise ConfigError("the number of CPUs is set only for a local Ray, not with an address")
        if self.replica_cpus <= 0:
            raise ConfigError(f"replica_cpus must be > 0, got {self.replica_cpus}")


@dataclass(slots=True)
class ReplicaStats:
    replica: str
    engine: EngineStats
    num_requests: int


class EngineReplica:
    """One Ray Serve replica: an AsyncLLMEngine, streamed from."""

    def __init__(self, config: EngineConfig) -> None:
        self.name = serve.get_replica_context().replica_id.unique_id
        self.engine = AsyncLLMEngine(config)
        self.engine.start()
        self.num_requests = 0

    async def stream(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, priority: int = 0
    ) -> AsyncIterator[RequestOutput | None]:
        """None once the request is admitted (RayEngineClient.open waits for it), then its
        outputs. Cancelling this call (the caller left) closes the stream, which aborts the
        request."""
        self.num_requests += 1
        async with await self.engine.open(request_id, prompt_token_ids, params, priority) as outputs:
            yield ADMITTED
            async for output in outputs:
                yield output

    def stats(self) -> ReplicaStats:
        return ReplicaStats(self.name, self.engine.stats(), self.num_requests)

    def check_health(self) -> None:
        """Ray Serve calls this periodically and replaces a replica whose engine died."""
        if not self.engine.is_running:
            raise EngineDead(self.engine.dead_reason or "the engine loop stopped")

    def __del__(self) -> None:
        self.engine.shutdown()


class RayEngineClient:
    """The EngineClient that LLMModel uses, served by the replicas of a Ray Serve application."""

    def __init__(self, model_name: str, config: EngineConfig, options: RayOptions) -> None:
        self.app_name = f"llm-{model_name}"
        self.handle = _deploy(self.app_name, config, options)
        self.replica_stats: list[ReplicaStats] = self.handle.broadcast("stats").results()
        self._collector = register_replica_requests(model_name, self)
        self._refresher: asyncio.Task | None = None
        self._stopped = False

    def start(self) -> None:
        """Begin refreshing the replicas' stats (needs the server's event loop)."""
        if self._refresher is None:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_stats())

    def shutdown(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._refresher is not None:
            self._refresher.cancel()
        REGISTRY.unregister(self._collector)
        serve.delete(self.app_name)
        ray.shutdown()

    @property
    def is_running(self) -> bool:
        return not self._stopped

    @property
    def dead_reason(self) -> str | None:
        return "the Ray Serve application was deleted" if self._stopped else None

    def stats(self) -> EngineStats:
        """The replicas' stats added up, as of the last refresh (at most STATS_PERIOD_S old)."""
        return sum_engine_stats([each.engine for each in self.replica_stats])

    async def open(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                   priority: int = 0) -> OutputStream:
        """Like AsyncLLMEngine.open, on a replica (`priority` orders it in that replica's waiting
        queue): returns once the replica has admitted the request (a refused one raises the
        engine's own error); closing the returned stream early cancels the replica's call,
        which aborts the request."""
        outputs = self._outputs(self.handle.options(method_name="stream", stream=True).remote(
            request_id, prompt_token_ids, params, priority
        ))
        try:
            await anext(outputs)  # the replica's ADMITTED
        except BaseException:
            await outputs.aclose()
            raise
        return outputs

    @staticmethod
    async def _outputs(responses: DeploymentResponseGenerator) -> AsyncIterator[RequestOutput | None]:
        try:
            async for output in responses:
                yield output
        except RayTaskError as exc:
            # The engine's own exception (RequestRejected, QueueFull, ...) keeps its status code.
            raise exc.cause from None
        except RayActorError as exc:
            raise EngineDead(f"the replica serving the request died: {exc.error_msg}") from None
        finally:
            responses.cancel()

    async def _refresh_stats(self) -> None:
        while True:
            await asyncio.sleep(STATS_PERIOD_S)
            try:
                self.replica_stats = await self.handle.broadcast("stats").results_async()
            except Exception:
                logger.warning("could not read the replicas' stats; /metrics shows the last ones", exc_info=True)


def _deploy(app_name: str, config: EngineConfig, options: RayOptions) -> DeploymentHandle:
    if not ray.is_initialized():
        # "local": never join a cluster found through RAY_ADDRESS or /tmp/ray unasked.
        ray.init(address=options.address or "local", num_cpus=options.num_cpus, include_dashboard=False,
                 logging_level=logging.WARNING)
    num_gpus = 1 if _uses_gpus(config) else 0
    if num_gpus and ray.cluster_resources().get("GPU", 0) < options.num_replicas:
        logger.warning("the Ray cluster has fewer GPUs than replicas: some replicas wait for GPUs")
    queue = config.max_queue_size
    deployment = serve.deployment(
        EngineReplica,
        name="engine",
        num_replicas=options.num_replicas,
        ray_actor_options={"num_cpus": options.replica_cpus, "num_gpus": num_gpus},
        # KServe logs the requests; the replicas would also log the stats polls every second.
        logging_config={"enable_access_log": False},
        # Let each engine batch and queue as configured; one more request than it holds gets
        # the engine's QueueFull (503) instead of waiting in Ray Serve's router.
        max_ongoing_requests=UNBOUNDED_ONGOING_REQUESTS if queue is None else config.max_num_seqs + queue + 1,
    )
    logger.info("starting %d engine replicas on Ray (%s GPU, %g CPU each)", options.num_replicas, num_gpus,
                options.replica_cpus)
    started = time.monotonic()
    serve.start(proxy_location="Disabled")
    try:
        handle = serve.run(deployment.bind(config), name=app_name, route_prefix=None)
    except Exception as exc:
        ray.shutdown()
        raise ModelLoadError(f"the Ray Serve replicas did not start: {exc}") from exc
    logger.info("%d engine replicas ready in %.1f s", options.num_replicas, time.monotonic() - started)
    return handle


def _uses_gpus(config: EngineConfig) -> bool:
    if config.device == "auto":
        return ray.cluster_resources().get("GPU", 0) > 0
    return config.device == "cuda"


def sum_engine_stats(stats: list[EngineStats]) -> EngineStats:
    """One engine's view of several: counts added, KV usage over all their blocks."""
    names = [field.name for field in dataclasses.fields(EngineStats)]
    total = EngineStats(**{name: sum(getattr(each, name) for each in stats) for name in names})
    used = total.num_kv_blocks - total.num_free_kv_blocks
    return dataclasses.replace(total, kv_cache_usage=used / total.num_kv_blocks if total.num_kv_blocks else 0.0)


class ReplicaRequestsCollector(Collector):
    """Requests each replica has taken, to see how Ray Serve spreads the load."""

    def __init__(self, model_name: str, client: RayEngineClient) -> None:
        self.model_name = model_name
        self.client = client

    def collect(self) -> Iterator[Metric]:
        counter = CounterMetricFamily(
            "kserve_llm:replica_requests", "Requests taken by each Ray Serve replica.", labels=LABELS + ["replica"]
        )
        for each in self.client.replica_stats:
            counter.add_metric([self.model_name, each.replica], each.num_requests)
        yield counter


def register_replica_requests(model_name: str, client: RayEngineClient) -> ReplicaRequestsCollector:
    collector = ReplicaRequestsCollector(model_name, client)
    REGISTRY.register(collector)
    return collector


class RayLLMModel(LLMModel):
    """LLMModel whose engine is a Ray Serve deployment of `ray_options.num_replicas` replicas."""

    def __init__(
        self,
        name: str,
        engine_config: EngineConfig,
        ray_options: RayOptions,
        request_timeout: float | None = None,
        grace_period: float = 30.0,
    ) -> None:
        super().__init__(name, engine_config, request_timeout, grace_period)
        self.ray_options = ray_options

    def build_engine(self) -> RayEngineClient:
        return RayEngineClient(self.name, self.engine_config, self.ray_options)
