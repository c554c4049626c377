"""The run's report: a table on stdout (a row per target and level, latencies in ms), the idle
hop costs, the max-rate answers, and everything in a JSON file."""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks.load.clients import DIRECT, PEERS

# (header, width, how to read the cell from a target's summary)
COLUMNS = [
    ("done", 9, lambda row: f"{row['completed']}/{row['requests']}"),
    ("503", 5, lambda row: str(row["errors_503"])),
    ("err", 5, lambda row: str(row["errors_other"])),
    ("req/s", 7, lambda row: f"{row['request_throughput']:.2f}"),
    ("tok/s", 8, lambda row: f"{row['output_token_throughput']:.1f}"),
    ("good/s", 7, lambda row: f"{row['goodput_rps']:.2f}"),
    *((f"{metric}_{stat}", 10, lambda row, metric=metric, stat=stat: f"{row[f'{metric}_ms'][stat]:.1f}")
      for metric, stats in (("ttft", ("mean", "p50", "p90", "p99")), ("tpot", ("p50", "p99")),
                            ("itl", ("p50", "p99")), ("e2e", ("p50", "p99")))
      for stat in stats),
]


def print_levels(levels: list[dict]) -> None:
    """A row per target of each level, with the level's prefix-cache hit rate when it has one."""
    header = f"{'target':<12}{'level':<17}" + "".join(f"{name:>{width}}" for name, width, _ in COLUMNS)
    print(f"\n{header}{'prefix hit':>11}\n(latencies in ms)")
    for level in levels:
        for target, row in level["targets"].items():
            cells = "".join(f"{cell(row):>{width}}" for _, width, cell in COLUMNS)
            hit_rate = level["prefix_cache_hit_rate"]
            hits = "" if math.isnan(hit_rate) else f"{100 * hit_rate:>10.1f}%"
            print(f"{target:<12}{level['level']:<17}{cells}{hits}")


def print_idle(idle: dict[str, dict]) -> None:
    """The idle phase's TTFT and ITL per target, and each hop's cost over the direct path."""
    print("\nidle, one request at a time:")
    for target, row in idle.items():
        print(f"  {target:<12} TTFT p50 {row['ttft_ms']['p50']:7.2f} ms  p99 {row['ttft_ms']['p99']:7.2f} ms   "
              f"ITL p50 {row['itl_ms']['p50']:6.2f} ms  p99 {row['itl_ms']['p99']:6.2f} ms  "
              f"({row['completed']}/{row['requests']} done)")
    if DIRECT not in idle:
        return
    for target in [target for target in idle if target not in (DIRECT, *PEERS)]:
        hop_ttft = idle[target]["ttft_ms"]["p50"] - idle[DIRECT]["ttft_ms"]["p50"]
        hop_itl = idle[target]["itl_ms"]["p50"] - idle[DIRECT]["itl_ms"]["p50"]
        print(f"  {target} hop, idle: {hop_ttft:+.2f} ms TTFT p50, {hop_itl:+.2f} ms ITL p50 over direct")
        paired = idle[target].get("paired_hop_ttft_ms")
        if paired:
            print(f"  {target} hop, idle, per pair of equal prompt lengths: TTFT difference p50 "
                  f"{paired['p50']:+.2f} ms, p90 {paired['p90']:+.2f} ms")
        over_router = idle[target].get("paired_over_router_ttft_ms")
        if over_router:
            print(f"  {target} over the router without it, idle, per pair: TTFT difference p50 "
                  f"{over_router['p50']:+.2f} ms, p90 {over_router['p90']:+.2f} ms")


def print_max_rates(searches: list[dict]) -> None:
    print()
    for search in searches:
        limit = f"p99 TTFT <= {search['ttft_p99_limit_s']:g} s"
        if search["max_rate"] is None:
            answer = f"no rate tried sustains {limit}"
        else:
            # What the rate cost: a scheduler that favours prefills keeps TTFT low as decoding slows.
            trial = next(trial for trial in search["levels"] if trial["rate"] == search["max_rate"])
            row = trial["targets"][search["target"]]
            answer = (f"sustains {search['max_rate']:g} req/s with {limit} (completed {row['request_throughput']:.1f} "
                      f"req/s, TPOT p50 {row['tpot_ms']['p50']:.1f} ms)")
        failing = search["first_failing_rate"]
        bound = f"; fails at {failing:g} req/s" if failing is not None else "; no failing rate found"
        cut = "; search cut short by its time budget" if search["out_of_time"] else ""
        print(f"max rate, {search['target']}: {answer}{bound}{cut}")


def write_json(path: Path, report: dict) -> None:
    path.write_text(json.dumps(_without_nan(report), indent=2) + "\n")


def _without_nan(value: object) -> object:
    """NaN (no samples) as null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _without_nan(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_nan(item) for item in value]
    return value
