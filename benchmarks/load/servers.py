"""The servers a load run needs when it is given no URLs: the small demo model's predictor, its
transformer and the router, started as `make serve` starts them (devstack/local_stack.py), on free
ports, with their logs in a folder; for the `gateway` target, a second router with the gateway
on in front of the same transformer, its state in a redis-server started here; for the `llamacpp`
peer, llama.cpp's llama-server on the same demo model (built by benchmarks/peers/llama_cpp.py)."""

from __future__ import annotations

import hashlib
import secrets
import shutil
import subprocess
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import yaml

from benchmarks.load.clients import DIRECT, GATEWAY, LLAMACPP, PEERS, ROUTER, Endpoints
from benchmarks.peers import llama_cpp
from devstack.local_stack import (
    ROUTER_NAME,
    Component,
    Ports,
    Stack,
    kserve_component,
    local_url,
    model_name,
    predictor,
    router,
    transformer,
    write_router_config,
)
from tests.serving.ports import free_port_block

SIZE = "small"
ROUTER_PORT_OFFSET = 15
GATEWAY_PORT_OFFSET = 16
REDIS_PORT_OFFSET = 20
LLAMACPP_PORT_OFFSET = 25
# llama-server's context per slot: the demo models' longest sequence.
LLAMACPP_CONTEXT_PER_SLOT = 2048
# The benchmark's tenant: every limit set (so every check runs), none of them reached.
TENANT_LIMITS = {"requests_per_minute": 1_000_000, "tokens_per_minute": 1_000_000_000, "max_concurrent": 10_000,
                 "budget": {"tokens": 10**12, "period": "month"}}


@dataclass
class ServerBinary(Component):
    """A component that is an executable, not a Python module (llama.cpp's llama-server)."""

    executable: str = ""

    def command(self) -> list[str]:
        return [self.executable, *self.args]


def start_servers(stack: ExitStack, targets: tuple[str, ...], num_threads: int, log_dir: Path,
                  router_args: Sequence[str] = (), size: str = SIZE, llamacpp_slots: int = 4,
                  predictor_args: Sequence[str] = ()) -> Endpoints:
    """The components `targets` reach, started and ready; stopped when `stack` closes.
    `router_args`: more flags for the router (the batch benchmark's batch policy), `predictor_args`
    for the predictor (a scheduler setting under test). The predictor
    and llama-server both compute with `num_threads` threads."""
    base = free_port_block(30)
    ports = Ports(base=base, router=base + ROUTER_PORT_OFFSET)
    components = [predictor(size, ports, ["--num_threads", str(num_threads), *predictor_args])]
    if set(targets) - {DIRECT, *PEERS}:
        components.append(transformer(size, ports))
    config = _router_config(log_dir / "router.yaml", ports)
    if ROUTER in targets:
        components.append(router("router", ports.router, config, router_args))
    gateway_key = None
    if GATEWAY in targets:
        redis_url = _start_redis(stack, base + REDIS_PORT_OFFSET, log_dir)
        gateway_key = "sk-" + secrets.token_urlsafe(24)
        components.append(_gateway_router(base + GATEWAY_PORT_OFFSET, config, redis_url, gateway_key, log_dir))
    if LLAMACPP in targets:
        components.append(llama_server(size, base + LLAMACPP_PORT_OFFSET, num_threads, llamacpp_slots))
    servers = Stack(components, log_dir)
    stack.callback(servers.stop)
    servers.start()
    return Endpoints(model_name(size), local_url(ports.predictor(size)), local_url(ports.transformer(size)),
                     local_url(ports.router), local_url(base + GATEWAY_PORT_OFFSET), gateway_key,
                     local_url(base + LLAMACPP_PORT_OFFSET))


def llama_server(size: str, port: int, num_threads: int, slots: int) -> ServerBinary:
    """llama-server on the demo model's float32 GGUF: `slots` sequences batched continuously (its
    default), each with the demo model's whole context, computing on `num_threads` threads."""
    args = ["-m", str(llama_cpp.gguf_path(size)), "-t", str(num_threads), "-tb", str(num_threads),
            "-np", str(slots), "-c", str(slots * LLAMACPP_CONTEXT_PER_SLOT), "--host", "127.0.0.1",
            "--port", str(port), "--no-webui"]
    return ServerBinary(f"llama-server-{size}", "llama-server", args, port, None, "/health",
                        executable=str(llama_cpp.server_path()))


def _gateway_router(port: int, config: Path, redis_url: str, key: str, log_dir: Path):
    """The router with every gateway feature on: a tenant with every limit, state in Redis, the
    response cache, a ledger (the clients send an Idempotency-Key with each request)."""
    tenants = log_dir / "tenants.yaml"
    entry = {"name": "bench", "keys_sha256": [hashlib.sha256(key.encode()).hexdigest()], **TENANT_LIMITS}
    tenants.write_text(yaml.safe_dump({"tenants": [entry]}))
    args = ["--config", str(config), "--tenants_file", str(tenants), "--redis_url", redis_url, "--response_cache",
            "--usage_ledger", str(log_dir / "usage.sqlite3")]
    return kserve_component("router-gateway", "router", args, port, ROUTER_NAME)


def _start_redis(stack: ExitStack, port: int, log_dir: Path) -> str:
    """A local redis-server (Debian's redis-server package), stopped when `stack` closes."""
    executable = shutil.which("redis-server")
    if executable is None:
        raise SystemExit("the gateway target needs redis-server (apt-get install -y redis-server)")
    with open(log_dir / "redis.log", "wb") as log:
        process = subprocess.Popen([executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                    "--appendonly", "no", "--dir", str(log_dir)], stdout=log, stderr=subprocess.STDOUT)
    stack.callback(_stop, process)
    time.sleep(0.3)
    if process.poll() is not None:
        raise SystemExit(f"redis-server did not start: see {log_dir / 'redis.log'}")
    return f"redis://127.0.0.1:{port}/0"


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=10)


def _router_config(path: Path, ports: Ports) -> Path:
    """The stack's router config, with the policy's threshold at its top: only the small model runs
    here, and `model: auto` measures the edge's own cost (policy, proxying) in front of it. A
    prompt that still scores 1.0 falls back to the small model when the large one refuses."""
    return write_router_config(path, ports, policy={"threshold": 1.0})
