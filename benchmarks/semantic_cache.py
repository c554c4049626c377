"""The gateway's semantic cache: how precise its hits are, at each threshold, with and without the
near-miss guard, on labelled prompt pairs, and what a lookup adds to a request's latency:

    .venv/bin/python benchmarks/semantic_cache.py            # about a minute on 2 cores

1. benchmarks/data/semantic_cache_pairs.jsonl: pairs of prompts that share an answer (paraphrases)
   or do not (near misses: one number, a negation, an entity, a unit, a direction changed; and
   unrelated pairs). Each pair is one lookup of `b` in a cache holding `a`: a hit when the
   similarity is at or above the threshold (and, with the guard, the guard lets it through).
2. For thresholds 0.80..0.99: the precision of hits (the share of hits whose pair shares an
   answer), the recall on paraphrases, and the share of near misses that hit. The threshold
   chosen is the lowest whose precision with the guard is at least --min_precision. The guard was
   written from these pairs; benchmarks/data/semantic_cache_pairs_holdout.jsonl, written after it
   and never used to change it, checks the chosen threshold on prompts it has not seen.
3. The time a lookup adds (embedding and search), p50/p99 over --lookups lookups against a scope
   holding --entries entries, in memory and in Redis (a redis-server of its own on a free port,
   when one is on PATH), through the caches' public API."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from router.embeddings import SentenceEmbedder  # noqa: E402
from router.gateway.near_miss import same_exact_tokens  # noqa: E402
from router.gateway.redis_store import RedisStore  # noqa: E402
from router.gateway.semantic_cache import (  # noqa: E402
    MemorySemanticCache,
    RedisSemanticCache,
    SemanticCache,
)

PAIRS = REPO_ROOT / "benchmarks" / "data" / "semantic_cache_pairs.jsonl"
HOLDOUT = REPO_ROOT / "benchmarks" / "data" / "semantic_cache_pairs_holdout.jsonl"
THRESHOLDS = [round(0.80 + step / 100, 2) for step in range(20)]
SCOPE = "benchmark"


@dataclass(frozen=True, slots=True)
class Pair:
    a: str
    b: str
    same_answer: bool
    kind: str


@dataclass(frozen=True, slots=True)
class Sweep:
    threshold: float
    precision: float | None
    paraphrase_recall: float
    near_miss_hit_rate: float
    hits: int


def read_pairs(path: Path) -> list[Pair]:
    return [Pair(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def similarities_and_guard(embedder: SentenceEmbedder, pairs: list[Pair]) -> tuple[np.ndarray, np.ndarray]:
    """Each pair's cosine similarity, and whether the near-miss guard lets `b` have `a`'s answer."""
    first, second = embedder.embed([pair.a for pair in pairs]), embedder.embed([pair.b for pair in pairs])
    guard = np.array([same_exact_tokens(pair.b, pair.a) for pair in pairs])
    return (first * second).sum(axis=1), guard


def sweep(pairs: list[Pair], similarities: np.ndarray, guarded: np.ndarray, threshold: float) -> Sweep:
    hits = (similarities >= threshold) & guarded
    same = np.array([pair.same_answer for pair in pairs])
    kinds = np.array([pair.kind for pair in pairs])
    precision = float(same[hits].mean()) if hits.any() else None
    return Sweep(threshold, precision, float(hits[kinds == "paraphrase"].mean()),
                 float(hits[kinds == "near_miss"].mean()), int(hits.sum()))


def chosen_threshold(sweeps: list[Sweep], min_precision: float) -> Sweep | None:
    return next((row for row in sweeps if row.precision is not None and row.precision >= min_precision), None)


def quality_table(unguarded: list[Sweep], guarded: list[Sweep]) -> str:
    header = ("| threshold | precision | precision, guard | paraphrase recall | recall, guard "
              "| near-miss hits | near-miss hits, guard |")
    lines = [header, "|---|---|---|---|---|---|---|"]
    for plain, guard in zip(unguarded, guarded):
        lines.append(f"| {plain.threshold:.2f} | {_share(plain.precision)} | {_share(guard.precision)} "
                     f"| {_share(plain.paraphrase_recall)} | {_share(guard.paraphrase_recall)} "
                     f"| {_share(plain.near_miss_hit_rate)} | {_share(guard.near_miss_hit_rate)} |")
    return "\n".join(lines)


def false_hits(pairs: list[Pair], similarities: np.ndarray, guarded: np.ndarray, threshold: float) -> list[str]:
    return [f"{similarity:.3f} {pair.a!r} / {pair.b!r}" for pair, similarity, allowed in
            zip(pairs, similarities, guarded) if similarity >= threshold and allowed and not pair.same_answer]


def report_wrong_hits(pairs: list[Pair], similarities: np.ndarray, guard: np.ndarray, threshold: float) -> None:
    for label, allowed in (("without the guard", np.ones(len(pairs), dtype=bool)), ("with the guard", guard)):
        wrong = false_hits(pairs, similarities, allowed, threshold)
        print(f"\nWrong hits at {threshold:.2f} {label}: {len(wrong)}")
        for line in wrong:
            print(f"- {line}")


def report_holdout(embedder: SentenceEmbedder, pairs: list[Pair], threshold: float) -> None:
    similarities, guard = similarities_and_guard(embedder, pairs)
    unguarded = sweep(pairs, similarities, np.ones(len(pairs), dtype=bool), threshold)
    guarded = sweep(pairs, similarities, guard, threshold)
    counts = {kind: sum(pair.kind == kind for pair in pairs) for kind in ("paraphrase", "near_miss", "unrelated")}
    print(f"\n## Held-out pairs at {threshold:.2f} ({', '.join(f'{count} {kind}' for kind, count in counts.items())})\n")
    print(quality_table([unguarded], [guarded]))
    report_wrong_hits(pairs, similarities, guard, threshold)


async def fill(cache: SemanticCache, filler: list[str]) -> None:
    for index, text in enumerate(filler):
        await cache.store(SCOPE, text, f"answer {index}".encode())


async def lookup_seconds(cache: SemanticCache, questions: list[str]) -> list[float]:
    times = []
    for question in questions:
        started = time.perf_counter()
        await cache.lookup(SCOPE, question)
        times.append(time.perf_counter() - started)
    return times


async def memory_lookup_seconds(embedder: SentenceEmbedder, filler: list[str], questions: list[str]) -> list[float]:
    cache = MemorySemanticCache(embedder, max_entries_per_scope=len(filler))
    try:
        await fill(cache, filler)
        return await lookup_seconds(cache, questions)
    finally:
        await cache.close()


async def embedding_seconds(embedder: SentenceEmbedder, questions: list[str]) -> list[float]:
    """The embedding alone, as the cache runs it: on its worker thread."""
    cache = MemorySemanticCache(embedder)
    times = []
    try:
        for question in questions:
            started = time.perf_counter()
            await cache.embed(question)
            times.append(time.perf_counter() - started)
        return times
    finally:
        await cache.close()


def start_redis(directory: Path) -> tuple[subprocess.Popen, str] | None:
    executable = shutil.which("redis-server")
    if executable is None:
        return None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(directory)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            redis.Redis(port=port, socket_timeout=0.5).ping()
            return process, f"redis://127.0.0.1:{port}/0"
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
    process.terminate()
    return None


async def redis_lookup_seconds(url: str, embedder: SentenceEmbedder, filler: list[str],
                               questions: list[str]) -> list[float]:
    """Lookups by another replica than the one that stored: its mirror starts empty, so the first
    lookup reads every vector."""
    writer_store, reader_store = RedisStore(url, prefix="bench:"), RedisStore(url, prefix="bench:")
    writer = RedisSemanticCache(writer_store, embedder, max_entries_per_scope=len(filler))
    reader = RedisSemanticCache(reader_store, embedder, max_entries_per_scope=len(filler))
    try:
        await fill(writer, filler)
        return await lookup_seconds(reader, questions)
    finally:
        for cache, store in ((writer, writer_store), (reader, reader_store)):
            await cache.close()
            await store.close()


def filler_texts(pairs: list[Pair], entries: int) -> list[str]:
    """The pairs' `a` prompts, then made-up questions up to `entries`."""
    texts = list(dict.fromkeys(pair.a for pair in pairs))
    topics = ["history", "biology", "cooking", "networking", "databases", "music", "geology", "finance"]
    index = 0
    while len(texts) < entries:
        texts.append(f"Tell me fact number {index} about {topics[index % len(topics)]}.")
        index += 1
    return texts[:entries]


def latency_table(rows: list[tuple[str, list[float]]]) -> str:
    lines = ["| what | p50 ms | p99 ms |", "|---|---|---|"]
    for name, times in rows:
        milliseconds = sorted(1000 * value for value in times)
        p99 = milliseconds[min(len(milliseconds) - 1, round(0.99 * (len(milliseconds) - 1)))]
        lines.append(f"| {name} | {statistics.median(milliseconds):.2f} | {p99:.2f} |")
    return "\n".join(lines)


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--pairs", type=Path, default=PAIRS)
    parser.add_argument("--holdout", type=Path, default=HOLDOUT, help="pairs that check the chosen threshold")
    parser.add_argument("--min_precision", type=float, default=0.99)
    parser.add_argument("--lookups", type=int, default=200)
    parser.add_argument("--entries", type=int, default=1000, help="entries in the scope searched")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    pairs = read_pairs(args.pairs)
    print(f"{len(pairs)} pairs from {args.pairs}; loading all-MiniLM-L6-v2", file=sys.stderr, flush=True)
    embedder = SentenceEmbedder()
    similarities, guard = similarities_and_guard(embedder, pairs)
    everything = np.ones(len(pairs), dtype=bool)
    unguarded = [sweep(pairs, similarities, everything, threshold) for threshold in THRESHOLDS]
    guarded = [sweep(pairs, similarities, guard, threshold) for threshold in THRESHOLDS]
    chosen = chosen_threshold(guarded, args.min_precision)
    counts = {kind: sum(pair.kind == kind for pair in pairs) for kind in ("paraphrase", "near_miss", "unrelated")}
    print(f"## Hit quality ({', '.join(f'{count} {kind}' for kind, count in counts.items())} pairs)\n")
    print(quality_table(unguarded, guarded))
    if chosen is None:
        print(f"\nNo threshold reaches precision {args.min_precision} with the guard.")
    else:
        print(f"\nChosen: {chosen.threshold:.2f}, the lowest threshold with precision >= {args.min_precision} "
              f"with the guard (recall on paraphrases {chosen.paraphrase_recall:.3f}, {chosen.hits} hits).")
        report_wrong_hits(pairs, similarities, guard, chosen.threshold)
        if args.holdout.is_file():
            report_holdout(embedder, read_pairs(args.holdout), chosen.threshold)

    questions = [pair.b for pair in pairs] * (args.lookups // len(pairs) + 2)
    questions = questions[: args.lookups + 1]
    filler = filler_texts(pairs, args.entries)
    print(f"measuring lookups: {args.entries} entries, {args.lookups} lookups", file=sys.stderr, flush=True)
    rows = [("embedding alone", asyncio.run(embedding_seconds(embedder, questions))[1:])]
    # The first lookup of each cache is left out of its p50/p99, Redis's reported on its own.
    rows.append(("lookup, memory", asyncio.run(memory_lookup_seconds(embedder, filler, questions))[1:]))
    with tempfile.TemporaryDirectory() as directory:
        redis = start_redis(Path(directory))
        if redis is not None:
            process, url = redis
            try:
                redis_times = asyncio.run(redis_lookup_seconds(url, embedder, filler, questions))
            finally:
                process.terminate()
                process.wait()
            rows += [("lookup, Redis (mirror up to date)", redis_times[1:]),
                     (f"first lookup, Redis (mirror reads {args.entries} vectors)", redis_times[:1])]
    print(f"\n## Added latency per lookup ({args.entries} entries in the scope, {args.lookups} lookups)\n")
    print(latency_table(rows))
    if redis is None:
        print("\nNo redis-server on PATH: memory only.")


if __name__ == "__main__":
    main()
