"""`make serve`: the whole serving stack as local processes, on fixed ports - for the small and the
large model each a predictor and its transformer, the router (OpenAI edge and KServe predict) in
front of them, and the InferenceGraph runner serving manifests/graphs/route.yaml over them. The
models are the two trained task models (task_models/), which answer the skill suite's questions
with really different accuracy; `--demo` serves the random demo models instead, and `--real`
(`make serve-real`) the real models of the real-models extra, SmolLM2-135M-Instruct and Gemma 3
270M (devstack/model_sources.py). Each component's log lines are prefixed with its name.
Ctrl-C (or SIGTERM) stops everything, each component draining as it would in a pod; if one
component dies, the others are stopped too."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import yaml

from devstack.model_sources import (
    DEMO_MODELS,
    REAL_EXTRA_HINT,
    SIZES,
    TASK_MODELS,
    ModelSource,
    model_name,
    prepare_real_models,
)
from router.graph import service_url
from runtime.gguf_checkpoint import GGUFCheckpointError
from runtime.real_models import RealModelMissing

REPO_ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 300.0
STOP_TIMEOUT = 40.0
ROUTER_NAME = "router"
ROUTER_CONFIG = REPO_ROOT / "router" / "router.yaml"
ROUTE_GRAPH = REPO_ROOT / "manifests" / "graphs" / "route.yaml"
GRAPH_READY_PATH = "/readyz"
GRPC_PORT_OFFSET = 10
# Whose progress the stack shows while it prepares the models (joining, converting).
PROGRESS_LOGGERS = ("devstack", "runtime")
# KServe logs two trace lines per request otherwise.
QUIET = ["--enable_latency_logging", "false"]


@dataclass(frozen=True, slots=True)
class Ports:
    """HTTP ports: transformers on base+1 (small) and base+2 (large), their predictors on base+3
    and base+4; KServe servers take gRPC on their HTTP port + 10."""

    base: int = 9000
    router: int = 8000
    graph: int = 8080

    def transformer(self, size: str) -> int:
        return self.base + 1 + SIZES.index(size)

    def predictor(self, size: str) -> int:
        return self.base + 3 + SIZES.index(size)


def local_url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


@dataclass
class Component:
    name: str
    module: str
    args: list[str]
    http_port: int
    grpc_port: int | None
    ready_path: str
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return local_url(self.http_port)

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module, *self.args]


def kserve_component(name: str, module: str, args: Sequence[str], http_port: int, served_model: str) -> Component:
    grpc_port = http_port + GRPC_PORT_OFFSET
    return Component(name, module, [*args, *QUIET, "--http_port", str(http_port), "--grpc_port", str(grpc_port)],
                     http_port, grpc_port, f"/v2/models/{served_model}/ready")


def predictor(size: str, ports: Ports, extra_args: Sequence[str] = (), models: ModelSource = DEMO_MODELS) -> Component:
    name = models.model_name(size)
    return kserve_component(f"predictor-{size}", "runtime", [*models.predictor_args(size), "--model_name", name,
                                                             *extra_args], ports.predictor(size), name)


def transformer(size: str, ports: Ports, models: ModelSource = DEMO_MODELS) -> Component:
    name = models.model_name(size)
    args = [*models.transformer_args(size), "--model_name", name, "--predictor_host",
            f"127.0.0.1:{ports.predictor(size)}", "--predictor_protocol", "v2"]
    return kserve_component(f"transformer-{size}", "transformer", args, ports.transformer(size), name)


def router(name: str, port: int, config: Path, extra_args: Sequence[str] = ()) -> Component:
    """A router whose config names the KServe model ROUTER_NAME (as router/router.yaml does)."""
    return kserve_component(name, "router", ["--config", str(config), *extra_args], port, ROUTER_NAME)


def graph_runner(name: str, port: int, graph: Path, services: Mapping[str, str], *extra_args: str) -> Component:
    args = [str(graph), "--port", str(port), *extra_args]
    for service, url in services.items():
        args += ["--service", f"{service}={url}"]
    return Component(name, "router.graph", args, port, None, GRAPH_READY_PATH)


def service_urls(ports: Ports, models: ModelSource = DEMO_MODELS) -> dict[str, str]:
    """The services an InferenceGraph of manifests/graphs names: the router and each size's
    transformer (KServe's graph calls an InferenceService's transformer when it has one), the
    latter at the predict path of the model it serves."""
    return {ROUTER_NAME: local_url(ports.router),
            **{model_name(size): service_url(models.model_name(size), local_url(ports.transformer(size)), "v1")
               for size in SIZES}}


def write_router_config(path: Path, ports: Ports, models: ModelSource = DEMO_MODELS, **sections: object) -> Path:
    """router/router.yaml with its targets those of `models` on these ports (each replica's load
    read from its predictor's metrics), its learned model's path made absolute, and top-level
    `sections` replaced."""
    config = yaml.safe_load(ROUTER_CONFIG.read_text())
    learned_model = config.get("policy", {}).get("learned_model")
    if learned_model is not None:
        config["policy"]["learned_model"] = str(ROUTER_CONFIG.parent / learned_model)
    config["targets"] = {
        size: {**models.router_target(size), "urls": [{"url": local_url(ports.transformer(size)),
                                                      "metrics_url": local_url(ports.predictor(size)) + "/metrics"}]}
        for size in SIZES
    }
    config.update(sections)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def stack_components(ports: Ports, router_config: Path, predictor_args: Sequence[str] = (),
                     models: ModelSource = DEMO_MODELS) -> list[Component]:
    """The stack, front components first."""
    return [
        graph_runner("graph", ports.graph, ROUTE_GRAPH, service_urls(ports, models)),
        router("router", ports.router, router_config),
        *(transformer(size, ports, models) for size in SIZES),
        *(predictor(size, ports, predictor_args, models) for size in SIZES),
    ]


class Stack:
    """Components run as processes; their output goes to stdout, each line prefixed with the
    component's name, or with `log_dir` to a file per component."""

    def __init__(self, components: list[Component], log_dir: Path | None = None) -> None:
        self.components = components
        self.log_dir = log_dir
        self._stopping = threading.Event()

    def component(self, name: str) -> Component:
        return next(component for component in self.components if component.name == name)

    def start(self) -> bool:
        """Start every component, then wait until all are ready; False if stopped meanwhile. The
        models must be prepared first (ModelSource.prepare): every component would build or
        convert them at once otherwise."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        for component in self.components:
            with self._output_of(component) as output:
                component.process = subprocess.Popen(
                    component.command(), cwd=REPO_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C reaches the stack only; it stops each component in turn
                )
            if self.log_dir is None:
                threading.Thread(target=_relay_output, args=(component,), daemon=True).start()
        for component in self.components:
            self._wait_ready(component)
        return not self._stopping.is_set()

    def _output_of(self, component: Component) -> AbstractContextManager[IO[bytes] | int]:
        if self.log_dir is None:
            return nullcontext(subprocess.PIPE)
        return open(self.log_dir / f"{component.name}.log", "ab")

    def _wait_ready(self, component: Component) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and not self._stopping.is_set():
            if component.process.poll() is not None:
                raise RuntimeError(f"{component.name} exited with {component.process.returncode} while starting")
            try:
                if httpx.get(component.url + component.ready_path, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        if not self._stopping.is_set():
            raise RuntimeError(f"{component.name} was not ready within {START_TIMEOUT:.0f} s")

    def wait(self) -> int:
        """Until a component exits (its code) or the stack is stopped (0)."""
        while not self._stopping.is_set():
            for component in self.components:
                if component.process.poll() is not None:
                    print(f"[stack] {component.name} exited with {component.process.returncode}; stopping the rest",
                          flush=True)
                    return component.process.returncode or 1
            self._stopping.wait(0.5)
        return 0

    def stop(self) -> None:
        self._stopping.set()
        stop_components(self.components)

    def request_stop(self, *_: object) -> None:
        self._stopping.set()


def stop_components(components: Iterable[Component]) -> None:
    """SIGTERM each running component in the order given (front ones stop taking requests first),
    then wait for them all; those still running after STOP_TIMEOUT are killed."""
    running = [component for component in components
               if component.process is not None and component.process.poll() is None]
    for component in running:
        component.process.send_signal(signal.SIGTERM)
    for component in running:
        try:
            component.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            component.process.kill()
            component.process.wait()


def _relay_output(component: Component) -> None:
    prefix = f"[{component.name}] ".encode()
    for line in component.process.stdout:
        sys.stdout.buffer.write(prefix + line)
        sys.stdout.buffer.flush()


def print_table(components: list[Component], ports: Ports, models: ModelSource) -> None:
    print(f"\n[stack] {models.ready_message()}", flush=True)
    print(f"  {'component':<20}{'http':>6}{'grpc':>6}  command")
    for component in components:
        grpc = str(component.grpc_port) if component.grpc_port is not None else "-"
        print(f"  {component.name:<20}{component.http_port:>6}{grpc:>6}  python -m {component.module} "
              f"{' '.join(component.args)}")
    print("\n[stack] try:")
    transformers = {size: local_url(ports.transformer(size)) for size in SIZES}
    for call in models.example_calls(local_url(ports.router), local_url(ports.graph), transformers):
        print(f"  {call}")
    print("\n[stack] Ctrl-C stops everything.\n", flush=True)


def main(argv: list[str] | None = None) -> None:
    defaults = Ports()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base_port", type=int, default=defaults.base,
                        help="transformers on base+1 (small) and base+2 (large), predictors on base+3 and base+4 "
                             "(gRPC: +10)")
    parser.add_argument("--router_port", type=int, default=defaults.router,
                        help="the router: OpenAI edge and KServe predict (gRPC: +10)")
    parser.add_argument("--graph_port", type=int, default=defaults.graph, help="the route graph's runner")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--demo", action="store_true", help="serve the demo models (random weights) instead of the "
                                                            "task models")
    source.add_argument("--real", action="store_true",
                        help="serve the real models of the real-models extra (SmolLM2-135M-Instruct, Gemma 3 270M), "
                             "converted once into the cache on first use")
    args = parser.parse_args(argv)
    logging.basicConfig(format="[stack] %(message)s")
    for package in PROGRESS_LOGGERS:
        logging.getLogger(package).setLevel(logging.INFO)
    ports = Ports(args.base_port, args.router_port, args.graph_port)
    models = model_source(args)
    with tempfile.TemporaryDirectory(prefix="kserve-llm-stack-") as directory:
        router_config = write_router_config(Path(directory) / "router.yaml", ports, models)
        sys.exit(run(Stack(stack_components(ports, router_config, models=models)), ports, models))


def model_source(args: argparse.Namespace) -> ModelSource:
    """The models to serve, prepared; exits with what to install when the real ones are missing."""
    if not args.real:
        models = DEMO_MODELS if args.demo else TASK_MODELS
        models.prepare()
        return models
    try:
        return prepare_real_models()
    except RealModelMissing as exc:
        sys.exit(f"[stack] the real models ship in the real-models extra, which is not installed; in this checkout: "
                 f"{REAL_EXTRA_HINT}\n[stack] ({exc})")
    except GGUFCheckpointError as exc:
        sys.exit(f"[stack] cannot convert the real models: {exc}\n[stack] the real-models extra brings all they need: "
                 f"{REAL_EXTRA_HINT}")


def run(stack: Stack, ports: Ports, models: ModelSource = DEMO_MODELS) -> int:
    """Serve until Ctrl-C or a component exits; the exit code."""
    signal.signal(signal.SIGINT, stack.request_stop)
    signal.signal(signal.SIGTERM, stack.request_stop)
    code = 0
    try:
        if stack.start():
            print_table(stack.components, ports, models)
            code = stack.wait()
    except RuntimeError as exc:
        print(f"[stack] {exc}", flush=True)
        code = 1
    finally:
        stack.stop()
    return code


if __name__ == "__main__":
    main()
