"""The gateway's command-line flags on `python -m router`, and building it from them. The gateway
runs when tenants are configured (--tenants_file, or the flat --api_keys_file) or the response
cache is on; otherwise the router serves as it always did, with nothing in the request's way."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from fastapi import FastAPI
from starlette.middleware import Middleware

from router.embeddings import SentenceEmbedder
from router.features import TokenCounter
from router.gateway.gateway import DEFAULT_UNBOUNDED_MAX_TOKENS, CacheHitBilling, Gateway, GatewaySettings
from router.gateway.idempotency import MemoryIdempotencyStore, RedisIdempotencyStore
from router.gateway.ledger import open_ledger
from router.gateway.limits import MemoryLimiter, RedisLimiter
from router.gateway.middleware import GatewayMiddleware
from router.gateway.redis_store import DEFAULT_TIMEOUT_SECONDS, FailureMode, RedisStore
from router.gateway.response_cache import MemoryResponseCache, RedisResponseCache
from router.gateway.semantic_cache import DEFAULT_THRESHOLD, MemorySemanticCache, RedisSemanticCache, SemanticCache
from router.gateway.tenants import Tenants
from serving.lifespan import chain_lifespan
from serving.middleware import ClientConnectionMiddleware

logger = logging.getLogger(__name__)

STATE_DIR_VARIABLE = "KSERVE_LLM_STATE_DIR"
LEDGER_FILE = "router-usage.sqlite3"


class ApiKeysError(Exception):
    """The flat API keys file cannot be read or holds no key."""


def add_gateway_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("gateway", "tenants, limits, metering, idempotency and the response cache")
    keys = group.add_mutually_exclusive_group()
    keys.add_argument("--tenants_file", default=None,
                      help="YAML file of tenants: hashed API keys and each tenant's limits, budget and models "
                           "(see README; python -m router.gateway.tenants new-key makes a key)")
    keys.add_argument("--api_keys_file", default=None,
                      help="file of API keys, one per line (# comments): tenants without limits; the KServe "
                           "predict routes stay open, as before tenants existed")
    group.add_argument("--redis_url", default=None,
                       help="redis://host:port/db shared by router replicas for limits, ledger, idempotency, "
                            "the cache and the batch store (unset: in process, one replica)")
    group.add_argument("--redis_timeout_seconds", type=float, default=DEFAULT_TIMEOUT_SECONDS,
                       help="time limit of every Redis call")
    group.add_argument("--redis_failure_mode", choices=[mode.value for mode in FailureMode], default=FailureMode.OPEN,
                       help="when Redis cannot be reached: serve requests unmetered by the shared limits (open) "
                            "or refuse them with 503 (closed)")
    group.add_argument("--usage_ledger", default=None,
                       help=f"SQLite file of the usage ledger (with --redis_url: the spool used while Redis is "
                            f"down); default ${STATE_DIR_VARIABLE} or ~/.local/state/kserve-llm-runtime/{LEDGER_FILE}")
    group.add_argument("--unbounded_max_tokens", type=int, default=DEFAULT_UNBOUNDED_MAX_TOKENS,
                       help="tokens reserved against a tenant's limits for a chat that sets no max_tokens")
    group.add_argument("--idempotency_ttl_seconds", type=float, default=86400.0,
                       help="how long an answer stays replayable under its Idempotency-Key")
    group.add_argument("--response_cache", action="store_true",
                       help="cache answers to deterministic requests (temperature 0, or a seed), per tenant")
    group.add_argument("--response_cache_ttl_seconds", type=float, default=3600.0)
    group.add_argument("--response_cache_max_entries", type=int, default=1024)
    group.add_argument("--semantic_cache", action="store_true",
                       help="also answer a deterministic request whose prompt is a near duplicate of one answered "
                            "before (all-MiniLM-L6-v2 similarity and a near-miss guard; needs the embeddings extra)")
    group.add_argument("--semantic_cache_threshold", type=float, default=DEFAULT_THRESHOLD,
                       help="cosine similarity at or above which a prompt counts as a near duplicate "
                            "(benchmarks/semantic_cache.py measured the default)")
    group.add_argument("--cache_hit_billing", choices=[billing.value for billing in CacheHitBilling],
                       default=CacheHitBilling.NONE,
                       help="what a cache hit costs its tenant: nothing, its prompt tokens, or the full usage")


def check_gateway_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for flag in ("redis_timeout_seconds", "idempotency_ttl_seconds", "response_cache_ttl_seconds"):
        if getattr(args, flag) <= 0:
            parser.error(f"--{flag} must be > 0")
    for flag in ("unbounded_max_tokens", "response_cache_max_entries"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be >= 1")
    if not 0 < args.semantic_cache_threshold <= 1:
        parser.error("--semantic_cache_threshold must be in (0, 1]")


def load_tenants(args: argparse.Namespace) -> Tenants:
    """The tenants the flags name; TenantsError or ApiKeysError, naming what is wrong."""
    if args.tenants_file:
        return Tenants.from_file(args.tenants_file)
    if args.api_keys_file:
        return Tenants.from_api_keys(read_api_keys(args.api_keys_file))
    return Tenants.none()


def read_api_keys(path: str | Path) -> list[str]:
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ApiKeysError(f"cannot read the API keys file {str(path)!r}: {exc}") from None
    keys = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not keys:
        raise ApiKeysError(f"the API keys file {str(path)!r} holds no key (one per line, # for comments)")
    return keys


def build_gateway(args: argparse.Namespace, tenants: Tenants, counter: TokenCounter) -> Gateway | None:
    """The gateway the flags ask for, or None when they ask for none."""
    if not tenants.required and not args.response_cache and not args.semantic_cache:
        return None
    failure_mode = FailureMode(args.redis_failure_mode)
    store = RedisStore(args.redis_url, args.redis_timeout_seconds, failure_mode=failure_mode) if args.redis_url else None
    settings = GatewaySettings(unbounded_max_tokens=args.unbounded_max_tokens,
                               cache_hit_billing=CacheHitBilling(args.cache_hit_billing),
                               authenticate_predict=bool(args.tenants_file), failure_mode=failure_mode)
    ledger_path = Path(args.usage_ledger) if args.usage_ledger else default_ledger_path()
    ledger_path.parent.mkdir(parents=True, exist_ok=True)
    if store is None:
        limiter, idempotency = MemoryLimiter(), MemoryIdempotencyStore(ttl_seconds=args.idempotency_ttl_seconds)
        cache = MemoryResponseCache(max_entries=args.response_cache_max_entries,
                                    ttl_seconds=args.response_cache_ttl_seconds) if args.response_cache else None
    else:
        limiter = RedisLimiter(store, failure_mode)
        idempotency = RedisIdempotencyStore(store, ttl_seconds=args.idempotency_ttl_seconds)
        cache = RedisResponseCache(store, ttl_seconds=args.response_cache_ttl_seconds,
                                   max_entries=args.response_cache_max_entries) if args.response_cache else None
    semantic_cache = build_semantic_cache(args, store) if args.semantic_cache else None
    ledger = open_ledger(ledger_path, store)
    logger.info("gateway: %d tenants, state %s, ledger %s%s, Redis failure mode %s, response cache %s, "
                "semantic cache %s", len(tenants), "in Redis at " + store.describe() if store else "in process",
                ledger_path, " (spool)" if store else "", failure_mode, "on" if cache else "off",
                f"on (threshold {args.semantic_cache_threshold:g})" if semantic_cache else "off")
    return Gateway(tenants, limiter, ledger, counter, settings, idempotency, cache, semantic_cache, store)


def build_semantic_cache(args: argparse.Namespace, store: RedisStore | None) -> SemanticCache:
    """EmbeddingsUnavailable when the embeddings extra is not installed."""
    embedder = SentenceEmbedder()
    if store is None:
        return MemorySemanticCache(embedder, args.semantic_cache_threshold)
    return RedisSemanticCache(store, embedder, args.semantic_cache_threshold)


def default_ledger_path() -> Path:
    return default_state_dir() / LEDGER_FILE


def default_state_dir() -> Path:
    """Where the router keeps its files (the usage ledger, the batch store): $KSERVE_LLM_STATE_DIR,
    else ~/.local/state/kserve-llm-runtime."""
    state_dir = os.environ.get(STATE_DIR_VARIABLE)
    return Path(state_dir) if state_dir else Path.home() / ".local" / "state" / "kserve-llm-runtime"


def install_gateway(app: FastAPI, gateway: Gateway) -> None:
    """The gateway's middleware just inside ClientConnectionMiddleware (bodies read and bounded
    first), outside every route; its stores closed when the app shuts down."""
    position = next(index for index, middleware in enumerate(app.user_middleware)
                    if middleware.cls is ClientConnectionMiddleware)
    app.user_middleware.insert(position + 1, Middleware(GatewayMiddleware, gateway=gateway))
    chain_lifespan(app, after_shutdown=gateway.close)

