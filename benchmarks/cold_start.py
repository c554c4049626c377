"""Cold start: seconds from starting `python -m runtime --demo small` to its model answering ready
(GET /v2/models/demo/ready), a fresh process each run, with the predictor's own split of that time
(the `startup: ready in ...` line it logs: imports, checkpoint, weight load, KV cache sizing, warm-up,
C++ kernel build or load, server start). Medians of --runs.

Rows: the predictor with its C++ kernels already built (torch's cache warm, the usual restart);
with --cold_kernels, also once with an empty TORCH_EXTENSIONS_DIR, so the kernels are compiled (the
first start on a machine); with --tree, the kernels-built row for other checkouts (a baseline
worktree), run in turn with this one so the machine's load hits all alike. KServe's huggingfaceserver on the same
model (the demo model's directory is a Hugging Face checkpoint), in turn with the others, where the
interpreter --hf_server_python (this one by default) can import it; otherwise the report says why
it was skipped, with the import's error. This benchmark installs nothing: huggingfaceserver belongs
in a virtual environment of its own (shared PEERS.md), and it imports vLLM (KServe's OpenAI types
do, since KServe 0.15), so an environment without vLLM cannot run it.

    .venv/bin/python benchmarks/cold_start.py --runs 5 --cold_kernels --json cold_start.json
    .venv/bin/python benchmarks/cold_start.py --tree /tmp/baseline  # a checkout of the branch before
    .venv/bin/python benchmarks/cold_start.py --hf_server_python /work/hfs-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from runtime.demo import build_demo_model

MODEL_NAME = "demo"
READY_PATH = f"/v2/models/{MODEL_NAME}/ready"
POLL_SECONDS = 0.02
START_TIMEOUT = 300.0
STOP_TIMEOUT = 30.0
# The predictor's summary line (runtime/engine/startup.py describe_startup).
SUMMARY = re.compile(r"startup: ready in ([\d.]+)s: (.*)$", re.MULTILINE)
PHASE = re.compile(r"(\w+) ([\d.]+)s")


@dataclass
class Target:
    """One way of starting a server: its name in the table, command line and environment."""

    name: str
    command: list[str]
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Run:
    seconds: float
    # The process's CPU time (user + system) at ready: less swayed than wall time by what else
    # the machine runs, so it shows a change on a busy machine that the wall time hides.
    cpu_seconds: float
    phases: dict[str, float]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def predictor(name: str, tree: Path, env: dict[str, str] | None = None) -> Target:
    args = ["--demo", "small", "--model_name", MODEL_NAME, "--device", "cpu", "--dtype", "float32"]
    return Target(name, [sys.executable, "-m", "runtime", *args], tree, {"PYTHONPATH": str(tree), **(env or {})})


def huggingfaceserver(model_dir: Path, python: str) -> Target:
    """KServe's huggingfaceserver on the demo model, run by the interpreter `python`."""
    args = ["--model_dir", str(model_dir), "--model_name", MODEL_NAME, "--task", "text_generation",
            "--backend", "huggingface", "--dtype", "float32"]
    return Target("huggingfaceserver", [python, "-m", "huggingfaceserver", *args], REPO_ROOT)


def import_failure(python: str, module: str) -> str | None:
    """Why the interpreter `python` cannot import `module` (the error's last line), or None if it can."""
    try:
        result = subprocess.run([python, "-c", f"import {module}"], capture_output=True, text=True,
                                timeout=START_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{type(exc).__name__}: {exc}"
    if result.returncode == 0:
        return None
    lines = result.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit status {result.returncode}"


def start_once(target: Target, log_dir: Path, index: int) -> Run:
    """Start `target`, time it to ready, read its summary line, stop it."""
    http_port, grpc_port = free_port(), free_port()
    log_path = log_dir / f"{target.name.replace(' ', '_')}-{index}.log"
    command = [*target.command, "--http_port", str(http_port), "--grpc_port", str(grpc_port)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **target.env}
    with open(log_path, "wb") as log:
        started = time.monotonic()
        process = subprocess.Popen(command, cwd=target.cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            seconds = _wait_until_ready(process, f"http://127.0.0.1:{http_port}{READY_PATH}", started)
            cpu_seconds = _cpu_seconds(process.pid)
        finally:
            _stop(process)
    text = log_path.read_text(errors="replace")
    if seconds is None:
        raise RuntimeError(f"{target.name} was not ready within {START_TIMEOUT}s:\n{text[-3000:]}")
    return Run(seconds, cpu_seconds, parse_phases(text))


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_until_ready(process: subprocess.Popen, url: str, started: float) -> float | None:
    with httpx.Client(timeout=2) as client:
        while time.monotonic() - started < START_TIMEOUT and process.poll() is None:
            try:
                if client.get(url).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(POLL_SECONDS)
    return None


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def parse_phases(log: str) -> dict[str, float]:
    """The phases of the predictor's `startup: ready in ...` line; empty if it logged none."""
    match = SUMMARY.search(log)
    if match is None:
        return {}
    return {name: float(seconds) for name, seconds in PHASE.findall(match.group(2))}


def summarise(runs: list[Run]) -> dict:
    phases = sorted({name for run in runs for name in run.phases}, key=lambda name: _first_seen(runs, name))
    return {
        "runs": len(runs),
        "ready_seconds_median": statistics.median(run.seconds for run in runs),
        "ready_seconds_min": min(run.seconds for run in runs),
        "ready_seconds_max": max(run.seconds for run in runs),
        "cpu_seconds_median": statistics.median(run.cpu_seconds for run in runs),
        "phases_median": {name: statistics.median(run.phases.get(name, 0.0) for run in runs) for name in phases},
    }


def _first_seen(runs: list[Run], name: str) -> int:
    """A phase's position in the summary line, so the table keeps the predictor's order."""
    return next(list(run.phases).index(name) for run in runs if name in run.phases)


def print_table(results: dict[str, dict]) -> None:
    phases = list(dict.fromkeys(name for result in results.values() for name in result["phases_median"]))
    header = ["target", "runs", "ready p50", "min", "max", "cpu p50", *phases]
    rows = [[name, str(result["runs"]), *(f"{result[key]:.2f}" for key in
                                          ("ready_seconds_median", "ready_seconds_min", "ready_seconds_max",
                                           "cpu_seconds_median")),
             *(f"{result['phases_median'][phase]:.2f}" if phase in result["phases_median"] else "-"
               for phase in phases)]
            for name, result in results.items()]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.rjust(width) if i else cell.ljust(width) for i, (cell, width) in
                        enumerate(zip(row, widths))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per target (kernels built)")
    parser.add_argument("--cold_kernels", action="store_true",
                        help="also one start with an empty TORCH_EXTENSIONS_DIR (compiles the C++ kernels)")
    parser.add_argument("--tree", type=Path, action="append", default=[],
                        help="another checkout to measure the same way (e.g. a baseline worktree)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--hf_server_python", default=sys.executable,
                        help="the Python of a virtual environment with KServe's huggingfaceserver (default: this one)")
    args = parser.parse_args()
    model_dir = build_demo_model("small")
    targets = [predictor(f"predictor ({tree.name})", tree.resolve()) for tree in args.tree]
    targets.insert(0, predictor("predictor", REPO_ROOT))
    failure = import_failure(args.hf_server_python, "huggingfaceserver")
    if failure is None:
        targets.append(huggingfaceserver(model_dir, args.hf_server_python))
        hf_status = f"measured with {args.hf_server_python}"
    else:
        hf_status = f"skipped: {args.hf_server_python} cannot import huggingfaceserver ({failure})"
        print(f"huggingfaceserver {hf_status}", file=sys.stderr)
    report: dict = {"load_average_before": [round(value, 2) for value in os.getloadavg()],
                    "huggingfaceserver": hf_status, "results": {}}
    runs: dict[str, list[Run]] = {target.name: [] for target in targets}
    with tempfile.TemporaryDirectory(prefix="cold-start-") as scratch:
        log_dir = Path(scratch)
        # Each target once a round, so a change in the machine's load hits all of them alike.
        for index in range(args.runs):
            for target in targets:
                runs[target.name].append(start_once(target, log_dir, index))
                print(f"{target.name} run {index + 1}: {runs[target.name][-1].seconds:.2f}s", file=sys.stderr)
        if args.cold_kernels:
            # Only this checkout's: the kernels' sources, and so their build, are the same in others.
            name = "predictor (cold kernels)"
            extensions = {"TORCH_EXTENSIONS_DIR": str(log_dir / "torch-extensions")}
            runs[name] = [start_once(predictor(name, REPO_ROOT, extensions), log_dir, 0)]
            print(f"{name}: {runs[name][-1].seconds:.2f}s", file=sys.stderr)
    report["results"] = {name: summarise(target_runs) for name, target_runs in runs.items()}
    report["load_average_after"] = [round(value, 2) for value in os.getloadavg()]
    print(f"load average before {report['load_average_before']}, after {report['load_average_after']}")
    print_table(report["results"])
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
