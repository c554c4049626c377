"""Serving load: TTFT, inter-token latency and goodput of streamed requests under Poisson arrivals,
straight to the predictor and through the transformer (its OpenAI route over server-sent events,
its WebSocket route, or both), in one run.

Every path gets the same prompts (the direct path sends the token ids the transformer would make),
the same output lengths and the same load: the arrivals of one Poisson stream go to the paths in
turn, so machine noise hits them alike. The WebSocket path multiplexes all its requests on one
connection, as a real-time client would. A second, idle phase sends one request at a time, paths
in turn, and reports the transformer hop's own cost: the difference of median TTFTs when nothing
else runs.

    .venv/bin/python benchmarks/serve_load.py                  # starts both servers on the demo model
    .venv/bin/python benchmarks/serve_load.py --protocol both  # SSE and WebSocket side by side
    .venv/bin/python benchmarks/serve_load.py --predictor_url http://HOST:8080 --transformer_url http://HOST:8090
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import websockets
from pydoc_data.topics import topics as PYDOC_TOPICS

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from runtime.demo import build_demo_model  # noqa: E402
from transformer.tokenizer import TextTokenizer  # noqa: E402

MODEL_NAME = "demo"
START_TIMEOUT = 180.0
DIRECT, SSE, WEBSOCKET = "direct", "transformer", "websocket"
PATHS_OF_PROTOCOL = {"sse": (DIRECT, SSE), "websocket": (DIRECT, WEBSOCKET), "both": (DIRECT, SSE, WEBSOCKET)}


@dataclass
class Sample:
    path: str
    ttft: float | None = None
    token_times: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def inter_token_latencies(self) -> list[float]:
        return [later - earlier for earlier, later in zip(self.token_times, self.token_times[1:])]


@dataclass
class Workload:
    prompts: list[str]
    prompt_ids: list[list[int]]
    max_tokens: list[int]


def build_workload(tokenizer: TextTokenizer, count: int, seed: int, min_prompt: int, max_prompt: int,
                   min_output: int, max_output: int) -> Workload:
    rng = random.Random(seed)
    corpus = " ".join(PYDOC_TOPICS[key] for key in sorted(PYDOC_TOPICS)).split()
    prompts, prompt_ids, max_tokens = [], [], []
    for _ in range(count):
        words = rng.randint(min_prompt, max_prompt)
        start = rng.randrange(len(corpus) - words)
        text = " ".join(corpus[start:start + words])
        prompts.append(text)
        prompt_ids.append(tokenizer.encode(text))
        max_tokens.append(rng.randint(min_output, max_output))
    return Workload(prompts, prompt_ids, max_tokens)


class MultiplexedSocket:
    """One WebSocket connection to the transformer's /ws/v1/generate, requests multiplexed on it by
    id: a reader hands each message to its request's queue."""

    def __init__(self, socket: websockets.ClientConnection) -> None:
        self.socket = socket
        self.queues: dict[str, asyncio.Queue] = {}
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.socket:
            message = json.loads(raw)
            self.queues[message["id"]].put_nowait(message)

    async def stream(self, body: dict) -> AsyncIterator[dict]:
        """The request's messages up to its done or error."""
        request_id = uuid.uuid4().hex
        queue = self.queues[request_id] = asyncio.Queue()
        try:
            await self.socket.send(json.dumps({"type": "generate", "id": request_id, **body}))
            while True:
                message = await queue.get()
                yield message
                if message["type"] != "delta":
                    return
        finally:
            del self.queues[request_id]

    async def close(self) -> None:
        self.reader.cancel()
        await self.socket.close()


@dataclass
class Clients:
    http: httpx.AsyncClient
    socket: MultiplexedSocket | None


async def stream_direct(client: httpx.AsyncClient, url: str, prompt_ids: list[int], max_tokens: int) -> Sample:
    body = {"input_ids": prompt_ids, "parameters": {"max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}}
    return await _timed_stream(client, DIRECT, f"{url}/v2/models/{MODEL_NAME}/generate_stream", body,
                               lambda event: bool(event.get("output_ids")))


async def stream_transformer(client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int) -> Sample:
    body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "ignore_eos": True}
    return await _timed_stream(client, SSE, f"{url}/openai/v1/completions", body,
                               lambda event: bool(event.get("choices")) and bool(event["choices"][0].get("text")))


async def stream_websocket(socket: MultiplexedSocket, prompt: str, max_tokens: int) -> Sample:
    """The same request as stream_transformer's, over the WebSocket; a token is a delta with text."""
    sample = Sample(WEBSOCKET)
    started = time.perf_counter()
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    async for message in socket.stream(body):
        if message["type"] == "delta" and message["text"]:
            sample.token_times.append(time.perf_counter() - started)
        elif message["type"] == "error":
            sample.error = message["code"]
    if sample.token_times:
        sample.ttft = sample.token_times[0]
    return sample


async def _timed_stream(client: httpx.AsyncClient, path: str, url: str, body: dict, has_token) -> Sample:
    sample = Sample(path)
    started = time.perf_counter()
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                sample.error = f"HTTP {response.status_code}"
                return sample
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                if has_token(json.loads(line[6:])):
                    sample.token_times.append(time.perf_counter() - started)
    except httpx.HTTPError as exc:
        sample.error = type(exc).__name__
    if sample.token_times:
        sample.ttft = sample.token_times[0]
    return sample


async def open_clients(stack: AsyncExitStack, args: argparse.Namespace) -> Clients:
    """An HTTP client, and the WebSocket connection when a path needs it."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    http = await stack.enter_async_context(httpx.AsyncClient(timeout=600, limits=limits))
    socket = None
    if WEBSOCKET in args.paths:
        url = args.transformer_url.replace("http", "ws", 1) + "/ws/v1/generate"
        socket = MultiplexedSocket(await websockets.connect(url, max_size=None))
        stack.push_async_callback(socket.close)
    return Clients(http, socket)


async def run_load(args: argparse.Namespace, workload: Workload) -> list[Sample]:
    """Poisson arrivals at `rate`; arrival i goes to path i mod the number of paths."""
    rng = random.Random(args.seed + 1)
    async with AsyncExitStack() as stack:
        clients = await open_clients(stack, args)
        tasks = []
        for index in range(len(workload.prompts)):
            path = args.paths[index % len(args.paths)]
            tasks.append(asyncio.create_task(_request(clients, args, workload, index, path)))
            await asyncio.sleep(rng.expovariate(args.rate))
        return await asyncio.gather(*tasks)


async def run_idle(args: argparse.Namespace, workload: Workload) -> list[Sample]:
    """One request at a time, paths in turn, each for a few tokens: the hop's own cost."""
    samples = []
    async with AsyncExitStack() as stack:
        clients = await open_clients(stack, args)
        for index in range(args.idle_requests):
            prompt_index = (index // len(args.paths)) % len(workload.prompts)
            path = args.paths[index % len(args.paths)]
            samples.append(await _request(clients, args, workload, prompt_index, path, max_tokens=4))
    return samples


def _request(clients: Clients, args: argparse.Namespace, workload: Workload, index: int, path: str,
             max_tokens: int | None = None):
    max_tokens = max_tokens or workload.max_tokens[index]
    if path == SSE:
        return stream_transformer(clients.http, args.transformer_url, workload.prompts[index], max_tokens)
    if path == WEBSOCKET:
        return stream_websocket(clients.socket, workload.prompts[index], max_tokens)
    return stream_direct(clients.http, args.predictor_url, workload.prompt_ids[index], max_tokens)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def summarise(samples: list[Sample], path: str, duration: float, slo_ttft: float, slo_itl: float) -> dict:
    done = [sample for sample in samples if sample.path == path and sample.ttft is not None]
    ttfts = [sample.ttft for sample in done]
    gaps = [gap for sample in done for gap in sample.inter_token_latencies]
    meeting_slo = [sample for sample in done if sample.ttft <= slo_ttft
                   and (not sample.inter_token_latencies or statistics.mean(sample.inter_token_latencies) <= slo_itl)]
    return {
        "requests": len([sample for sample in samples if sample.path == path]),
        "errors": len([sample for sample in samples if sample.path == path and sample.error]),
        "ttft_p50_ms": 1000 * percentile(ttfts, 0.5),
        "ttft_p99_ms": 1000 * percentile(ttfts, 0.99),
        "itl_p50_ms": 1000 * percentile(gaps, 0.5),
        "itl_p99_ms": 1000 * percentile(gaps, 0.99),
        "goodput_rps": len(meeting_slo) / duration,
    }


def print_table(title: str, rows: dict[str, dict]) -> None:
    print(f"\n{title}")
    columns = ["requests", "errors", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms", "goodput_rps"]
    print(f"{'path':<12}" + "".join(f"{column:>14}" for column in columns))
    for name, row in rows.items():
        cells = "".join(f"{row[column]:>14.2f}" if isinstance(row[column], float) else f"{row[column]:>14}"
                        for column in columns)
        print(f"{name:<12}{cells}")


class LocalServers:
    """A predictor and a transformer on the demo model, as `make serve` runs them."""

    def __init__(self, stack: ExitStack, num_threads: int, log_dir: Path) -> None:
        from tests.servers import free_port  # the suite's helper; only needed when starting servers

        self.predictor_port, self.transformer_port = free_port(), free_port()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        predictor = [sys.executable, "-m", "runtime", "--demo", "small", "--model_name", MODEL_NAME,
                     "--http_port", str(self.predictor_port), "--grpc_port", str(free_port()),
                     "--num_threads", str(num_threads), "--enable_latency_logging", "false"]
        transformer = [sys.executable, "-m", "transformer", "--demo", "small", "--model_name", MODEL_NAME,
                       "--http_port", str(self.transformer_port), "--grpc_port", str(free_port()),
                       "--predictor_host", f"127.0.0.1:{self.predictor_port}", "--enable_latency_logging", "false"]
        for name, command in (("predictor", predictor), ("transformer", transformer)):
            log = stack.enter_context(open(log_dir / f"{name}.log", "wb"))
            process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
            stack.callback(_stop, process)
        for port in (self.predictor_port, self.transformer_port):
            _wait_ready(f"http://127.0.0.1:{port}")


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


def _wait_ready(url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v2/models/{MODEL_NAME}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} was not ready within {START_TIMEOUT} s")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--predictor_url", help="a running predictor (unset: start one on the demo model)")
    parser.add_argument("--transformer_url", help="a running transformer in front of that predictor")
    parser.add_argument("--protocol", choices=tuple(PATHS_OF_PROTOCOL), default="sse",
                        help="how requests reach the transformer: its OpenAI route (server-sent events), its "
                             "WebSocket route, or both side by side (the direct path always runs)")
    parser.add_argument("--requests", type=int, default=64, help="requests of the load phase (shared by the paths)")
    parser.add_argument("--rate", type=float, default=2.0, help="Poisson arrival rate, requests/s")
    parser.add_argument("--idle_requests", type=int, default=60,
                        help="requests of the idle phase (shared by the paths)")
    parser.add_argument("--min_prompt_words", type=int, default=8)
    parser.add_argument("--max_prompt_words", type=int, default=160)
    parser.add_argument("--min_output_tokens", type=int, default=16)
    parser.add_argument("--max_output_tokens", type=int, default=64)
    parser.add_argument("--slo_ttft", type=float, default=2.0, help="goodput SLO: TTFT at most this (s)")
    parser.add_argument("--slo_itl", type=float, default=0.2, help="goodput SLO: mean inter-token latency (s)")
    parser.add_argument("--num_threads", type=int, default=1, help="torch threads of a predictor started here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if bool(args.predictor_url) != bool(args.transformer_url):
        parser.error("give both --predictor_url and --transformer_url, or neither")
    args.paths = PATHS_OF_PROTOCOL[args.protocol]
    return args


def main() -> None:
    args = parse_args()
    tokenizer = TextTokenizer(build_demo_model("small"))
    workload = build_workload(tokenizer, args.requests, args.seed, args.min_prompt_words, args.max_prompt_words,
                              args.min_output_tokens, args.max_output_tokens)
    with ExitStack() as stack:
        if not args.predictor_url:
            log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="serve_load-")))
            print("starting a predictor and a transformer on the demo model ...", flush=True)
            servers = LocalServers(stack, args.num_threads, log_dir)
            args.predictor_url = f"http://127.0.0.1:{servers.predictor_port}"
            args.transformer_url = f"http://127.0.0.1:{servers.transformer_port}"
        asyncio.run(run_idle(args, workload))  # warm-up: connections, first prompts
        idle = asyncio.run(run_idle(args, workload))
        started = time.perf_counter()
        loaded = asyncio.run(run_load(args, workload))
        duration = time.perf_counter() - started
    print(f"\nworkload: {args.requests} streamed requests over {', '.join(args.paths)}, Poisson {args.rate}/s, prompts "
          f"{args.min_prompt_words}-{args.max_prompt_words} words, outputs {args.min_output_tokens}-"
          f"{args.max_output_tokens} tokens, greedy; SLO TTFT <= {args.slo_ttft} s, mean ITL <= {args.slo_itl} s")
    rows = {path: summarise(loaded, path, duration, args.slo_ttft, args.slo_itl) for path in args.paths}
    print_table(f"under load ({duration:.1f} s)", rows)
    idle_rows = {path: summarise(idle, path, 1.0, args.slo_ttft, args.slo_itl) for path in args.paths}
    print_table("idle, one request at a time (goodput column not meaningful)", idle_rows)
    print()
    for path in args.paths[1:]:
        print_hop(path, rows, idle_rows)
    if SSE in args.paths and WEBSOCKET in args.paths:
        idle_gap = idle_rows[WEBSOCKET]["ttft_p50_ms"] - idle_rows[SSE]["ttft_p50_ms"]
        load_gap = rows[WEBSOCKET]["ttft_p50_ms"] - rows[SSE]["ttft_p50_ms"]
        print(f"websocket vs sse: {idle_gap:+.2f} ms TTFT p50 idle, {load_gap:+.2f} ms under load")


def print_hop(path: str, rows: dict[str, dict], idle_rows: dict[str, dict]) -> None:
    """The transformer hop's cost on `path`: its TTFT and ITL over the direct path's."""
    hop_ttft = idle_rows[path]["ttft_p50_ms"] - idle_rows[DIRECT]["ttft_p50_ms"]
    hop_itl = idle_rows[path]["itl_p50_ms"] - idle_rows[DIRECT]["itl_p50_ms"]
    load_ttft = rows[path]["ttft_p50_ms"] - rows[DIRECT]["ttft_p50_ms"]
    print(f"transformer hop ({path}), idle: +{hop_ttft:.2f} ms TTFT p50, +{hop_itl:.2f} ms ITL p50 "
          f"(bar: < 2 ms) -> {'PASS' if hop_ttft < 2.0 else 'FAIL'}")
    print(f"transformer hop ({path}), under load: {load_ttft:+.2f} ms TTFT p50 (noisier: it shares the load)")


if __name__ == "__main__":
    main()
