"""`make serve`: the serving stack as local processes on the embedded demo model, on fixed ports,
each component's log lines prefixed with its name. Ctrl-C (or SIGTERM) stops everything, each
component draining as it would in a pod; if one component dies, the others are stopped too."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 300.0
STOP_TIMEOUT = 40.0
MODEL_NAME = "llm"


@dataclass
class Component:
    name: str
    module: str
    args: list[str]
    http_port: int
    grpc_port: int
    ready_path: str
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module, *self.args, "--http_port", str(self.http_port),
                "--grpc_port", str(self.grpc_port)]


def demo_components(demo: str, base_port: int) -> list[Component]:
    predictor_port, transformer_port = base_port + 1, base_port + 2
    quiet = ["--enable_latency_logging", "false"]  # KServe logs two trace lines per request otherwise
    return [
        Component("predictor", "runtime", ["--demo", demo, "--model_name", MODEL_NAME, *quiet],
                  predictor_port, predictor_port + 10, f"/v2/models/{MODEL_NAME}/ready"),
        Component("transformer", "transformer",
                  ["--demo", demo, "--model_name", MODEL_NAME, "--predictor_host", f"127.0.0.1:{predictor_port}",
                   "--predictor_protocol", "v2", *quiet],
                  transformer_port, transformer_port + 10, f"/v2/models/{MODEL_NAME}/ready"),
    ]


def example_calls(components: list[Component]) -> list[str]:
    transformer = next(component for component in components if component.name == "transformer")
    predictor = next(component for component in components if component.name == "predictor")
    return [
        f"curl -s {transformer.url}/openai/v1/chat/completions -H content-type:application/json "
        f"-d '{{\"model\": \"{MODEL_NAME}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}], "
        f"\"max_tokens\": 16}}'",
        f"curl -s {transformer.url}/v1/models/{MODEL_NAME}:predict -H content-type:application/json "
        f"-d '{{\"instances\": [{{\"prompt\": \"Hello\", \"max_tokens\": 16}}]}}'",
        f"curl -s {predictor.url}/v2/models/{MODEL_NAME}/generate -H content-type:application/json "
        f"-d '{{\"input_ids\": [1, 2, 3], \"parameters\": {{\"max_tokens\": 8}}}}'",
    ]


class Stack:
    def __init__(self, components: list[Component]) -> None:
        self.components = components
        self._stopping = threading.Event()

    def start(self) -> bool:
        """Start the components in order, each once the previous is ready; False if stopped meanwhile."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        for component in self.components:
            if self._stopping.is_set():
                return False
            component.process = subprocess.Popen(
                component.command(), cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the stack only; it stops each component in turn
            )
            threading.Thread(target=_relay_output, args=(component,), daemon=True).start()
            self._wait_ready(component)
        return not self._stopping.is_set()

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
        """SIGTERM everyone, front components first (they stop taking requests), then wait."""
        self._stopping.set()
        running = [component for component in reversed(self.components)
                   if component.process is not None and component.process.poll() is None]
        for component in running:
            component.process.send_signal(signal.SIGTERM)
        for component in running:
            try:
                component.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                component.process.kill()
                component.process.wait()

    def request_stop(self, *_: object) -> None:
        self._stopping.set()


def _relay_output(component: Component) -> None:
    prefix = f"[{component.name}] ".encode()
    for line in component.process.stdout:
        sys.stdout.buffer.write(prefix + line)
        sys.stdout.buffer.flush()


def print_table(components: list[Component]) -> None:
    print("\n[stack] ready (demo model: random weights, so the text is gibberish):", flush=True)
    print(f"  {'component':<14}{'http':>8}{'grpc':>8}  command")
    for component in components:
        print(f"  {component.name:<14}{component.http_port:>8}{component.grpc_port:>8}  "
              f"python -m {component.module} {' '.join(component.args)}")
    print("\n[stack] try:")
    for call in example_calls(components):
        print(f"  {call}")
    print("\n[stack] Ctrl-C stops everything.\n", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", choices=("small", "large"), default="small", help="demo model size")
    parser.add_argument("--base_port", type=int, default=9000,
                        help="the predictor listens on base+1, the transformer on base+2 (gRPC: +10)")
    args = parser.parse_args(argv)
    stack = Stack(demo_components(args.demo, args.base_port))
    signal.signal(signal.SIGINT, stack.request_stop)
    signal.signal(signal.SIGTERM, stack.request_stop)
    code = 0
    try:
        if stack.start():
            print_table(stack.components)
            code = stack.wait()
    except RuntimeError as exc:
        print(f"[stack] {exc}", flush=True)
        code = 1
    finally:
        stack.stop()
    sys.exit(code)


if __name__ == "__main__":
    main()
