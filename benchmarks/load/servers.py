"""The servers a load run needs when it is given no URLs: the small demo model's predictor, its
transformer and the router, started as `make serve` starts them (devstack/local_stack.py), on free
ports, with their logs in a folder."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from benchmarks.load.clients import DIRECT, ROUTER, Endpoints
from devstack.local_stack import Ports, Stack, local_url, model_name, predictor, router, transformer, write_router_config
from tests.serving.ports import free_port_block

SIZE = "small"
ROUTER_PORT_OFFSET = 15


def start_servers(stack: ExitStack, targets: tuple[str, ...], num_threads: int, log_dir: Path) -> Endpoints:
    """The components `targets` reach, started and ready; stopped when `stack` closes."""
    base = free_port_block(30)
    ports = Ports(base=base, router=base + ROUTER_PORT_OFFSET)
    components = [predictor(SIZE, ports, ["--num_threads", str(num_threads)])]
    if set(targets) - {DIRECT}:
        components.append(transformer(SIZE, ports))
    if ROUTER in targets:
        components.append(router("router", ports.router, _router_config(log_dir / "router.yaml", ports)))
    servers = Stack(components, log_dir)
    stack.callback(servers.stop)
    servers.start()
    return Endpoints(model_name(SIZE), local_url(ports.predictor(SIZE)), local_url(ports.transformer(SIZE)),
                     local_url(ports.router))


def _router_config(path: Path, ports: Ports) -> Path:
    """The stack's router config, with the policy's threshold at its top: only the small model runs
    here, and `model: auto` measures the edge's own cost (policy, proxying) in front of it. A
    prompt that still scores 1.0 falls back to the small model when the large one refuses."""
    return write_router_config(path, ports, policy={"threshold": 1.0})
