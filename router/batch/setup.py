"""The batch API's command-line flags on `python -m router`, and putting it on the app: the Files
and Batch routes, the upload's own body bound, and the worker and sweeper that run with the app;
background requests (router/batch/background.py) ride on the same store and worker. It is always
on: idle, it costs a sweep of the store a second. Its state is a SQLite file in the router's
state directory, or, with the gateway's --redis_url, Redis (replicas share the work)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Collection
from pathlib import Path

from fastapi import FastAPI

from router.batch.background import (
    DEFAULT_COMPLETION_WINDOW,
    BackgroundApi,
    BackgroundSettings,
    add_background_routes,
)
from router.batch.capacity import OnlineTraffic, OnlineTrafficMiddleware, SpareCapacity
from router.batch.dispatch import InProcessDispatcher
from router.batch.finalize import (
    DEFAULT_BACKGROUND_RETENTION_SECONDS,
    Finalizer,
    Sweeper,
)
from router.batch.objects import BatchRequestError, completion_window_seconds
from router.batch.redis_store import RedisBatchStore
from router.batch.routes import (
    MULTIPART_OVERHEAD_BYTES,
    BatchApi,
    FileLimits,
    add_batch_routes,
)
from router.batch.sqlite_store import SQLiteBatchStore
from router.batch.store import BatchStore
from router.batch.worker import BatchWorker, WorkerSettings
from router.gateway.gateway import Gateway
from router.gateway.redis_store import FailureMode, RedisStore
from router.gateway.setup import STATE_DIR_VARIABLE, default_state_dir
from router.replicas import ReplicaSet
from serving.lifespan import chain_lifespan
from serving.middleware import allow_larger_body
from serving.openai_routes import FILES_PATH

logger = logging.getLogger(__name__)

BATCH_STORE_FILE = "router-batch.sqlite3"


def open_batch_store(path: str | Path, redis: RedisStore | None) -> BatchStore:
    """The batch store of this router: shared through Redis when the gateway has one (`path` is
    then unused), else the SQLite file at `path`."""
    return SQLiteBatchStore(path) if redis is None else RedisBatchStore(redis)


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("batch", "OpenAI's Files and Batch APIs: batch lines run on spare capacity")
    group.add_argument("--batch_state_dir", default=None,
                       help=f"directory of the batch store's SQLite file {BATCH_STORE_FILE} (unused with "
                            f"--redis_url: the store is then in Redis); default ${STATE_DIR_VARIABLE} or "
                            "~/.local/state/kserve-llm-runtime")
    group.add_argument("--batch_max_file_bytes", type=int, default=64 << 20,
                       help="largest file an upload may carry (413 past it); other routes keep --max_body_bytes")
    group.add_argument("--batch_max_lines", type=int, default=50000, help="most requests in one batch file")
    group.add_argument("--batch_concurrency", type=int, default=32,
                       help="most batch lines one router process runs at once, while it serves no online request")
    group.add_argument("--batch_max_waiting", type=float, default=1.0,
                       help="batch lines start only while every target's predictors have fewer requests waiting "
                            "than this (vllm:num_requests_waiting; unknown load counts as none)")
    group.add_argument("--batch_concurrency_beside_online", type=int, default=1,
                       help="most batch lines one router process runs while it serves online requests, and until "
                            "--batch_online_quiet_seconds after the last one ended (0: none)")
    group.add_argument("--batch_online_quiet_seconds", type=float, default=1.0,
                       help="how long after its last online request a router process goes back to "
                            "--batch_concurrency lines")
    group.add_argument("--background_completion_window", default=DEFAULT_COMPLETION_WINDOW,
                       help="how long a background request (`\"background\": true`) may wait to start before it "
                            "expires: <n>s, <n>m, <n>h or <n>d, up to 7d")
    group.add_argument("--background_retention_seconds", type=float, default=DEFAULT_BACKGROUND_RETENTION_SECONDS,
                       help="how long a background request's result is kept after it ends; then it is deleted")
    group.add_argument("--batch_lease_seconds", type=float, default=60.0,
                       help="how long a claimed line is this process's; renewed while it runs, and claimed again "
                            "by another replica when its process died")


def check_batch_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for flag in ("batch_max_file_bytes", "batch_max_lines", "batch_concurrency"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be >= 1")
    if args.batch_concurrency_beside_online < 0:
        parser.error("--batch_concurrency_beside_online must be >= 0")
    if args.batch_online_quiet_seconds < 0:
        parser.error("--batch_online_quiet_seconds must be >= 0")
    if args.batch_max_waiting <= 0:
        parser.error("--batch_max_waiting must be > 0")
    if args.batch_lease_seconds < 1:
        parser.error("--batch_lease_seconds must be >= 1")
    if not args.background_retention_seconds > 0:
        parser.error("--background_retention_seconds must be > 0")
    try:
        completion_window_seconds(args.background_completion_window)
    except BatchRequestError as exc:
        parser.error(f"--background_completion_window: {exc}")


def open_store(args: argparse.Namespace, gateway: Gateway | None) -> tuple[BatchStore, RedisStore | None]:
    """The store the flags name, and a Redis connection opened for it alone (to close with it):
    the gateway's, when it has one."""
    redis = gateway.store if gateway is not None else None
    own_redis = None
    if redis is None and args.redis_url:
        # The batch routes answer 503 while their store cannot be reached: they fail closed.
        redis = own_redis = RedisStore(args.redis_url, args.redis_timeout_seconds, failure_mode=FailureMode.CLOSED)
    directory = Path(args.batch_state_dir) if args.batch_state_dir else default_state_dir()
    if redis is None:
        directory.mkdir(parents=True, exist_ok=True)
    store = open_batch_store(directory / BATCH_STORE_FILE, redis)
    where = f"in Redis at {redis.describe()}" if redis is not None else str(directory / BATCH_STORE_FILE)
    logger.info("batch API: store %s, files up to %d bytes and %d lines, %d lines at once (%d beside online requests, "
                "until %g s after the last) while targets wait < %g, leases %g s", where, args.batch_max_file_bytes,
                args.batch_max_lines, args.batch_concurrency, args.batch_concurrency_beside_online,
                args.batch_online_quiet_seconds, args.batch_max_waiting, args.batch_lease_seconds)
    return store, own_redis


def install_batch_api(app: FastAPI, args: argparse.Namespace, replica_sets: list[ReplicaSet],
                      gateway: Gateway | None, served_models: Callable[[], Collection[str]]) -> BackgroundApi:
    """The routes (batches', and background requests', which may name `served_models`), the
    upload's bound, the count of online requests the capacity policy reads, and the worker and
    sweeper for as long as the app serves. Returns the background requests' API, for the
    WebSocket API's subscriptions."""
    store, own_redis = open_store(args, gateway)
    finalizer = Finalizer(store)
    add_batch_routes(app, BatchApi(store, finalizer, FileLimits(args.batch_max_file_bytes, args.batch_max_lines)))
    allow_larger_body(app, FILES_PATH, args.batch_max_file_bytes + MULTIPART_OVERHEAD_BYTES)
    online = OnlineTraffic()
    app.add_middleware(OnlineTrafficMiddleware, traffic=online)
    capacity = SpareCapacity(replica_sets, args.batch_concurrency, args.batch_max_waiting,
                             args.batch_concurrency_beside_online, args.batch_online_quiet_seconds, online)
    worker = BatchWorker(store, InProcessDispatcher(app), finalizer, capacity,
                         WorkerSettings(lease_seconds=args.batch_lease_seconds))
    sweeper = Sweeper(store, finalizer, stale_seconds=args.batch_lease_seconds,
                      background_retention_seconds=args.background_retention_seconds)
    background = BackgroundApi(store, finalizer, worker, BackgroundSettings(args.background_completion_window))
    add_background_routes(app, background, served_models)

    async def start() -> None:
        worker.start()
        sweeper.start()

    async def stop() -> None:
        await worker.stop()
        await sweeper.stop()
        await store.close()
        if own_redis is not None:
            await own_redis.close()

    chain_lifespan(app, after_startup=start, after_shutdown=stop)
    return background
