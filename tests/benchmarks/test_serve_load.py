"""benchmarks/serve_load.py end to end, in a tiny configuration: it starts the demo model's
predictor, transformer and router, runs one level on each target with a shared-prefix workload,
and writes a JSON report in which every request completed."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.servers import REPO_ROOT

TARGETS = ("direct", "transformer", "router")
REQUESTS = 4
LATENCIES = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms")


def test_one_level_on_every_target_completes_and_reports(tmp_path):
    report_path = tmp_path / "report.json"
    command = [sys.executable, "benchmarks/serve_load.py", "--targets", ",".join(TARGETS), "--concurrency", "2",
               "--requests", str(REQUESTS), "--workload", "shared-prefix", "--prefix_tokens", "64",
               "--prompt_tokens", "8", "--output_tokens", "4", "--idle_requests", "3", "--json", str(report_path)]
    finished = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=150)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]

    report = json.loads(report_path.read_text())
    assert report["command"].endswith(f"--json {report_path}") and report["timestamp"]
    assert [list(level["targets"]) for level in report["levels"]] == [[target] for target in TARGETS]
    for level in report["levels"]:
        assert level["concurrency"] == 2
        # The warm-up cached the prefix: 64 of each prompt's ~72 tokens, in 16-token blocks.
        assert level["prefix_cache_hit_rate"] > 0.5
        row = next(iter(level["targets"].values()))
        assert row["completed"] == row["requests"] == REQUESTS
        assert row["errors_503"] == row["errors_other"] == 0
        assert row["output_token_throughput"] > 0 and row["goodput_rps"] > 0
        assert all(set(row[name]) == {"mean", "p50", "p90", "p99"} for name in LATENCIES)
        assert row["tpot_ms"]["p50"] > 0
    assert report["levels"][-1]["targets"]["router"]["routes"] == {"small": REQUESTS}
    assert set(report["idle"]) == set(TARGETS)
    assert "router hop, idle" in finished.stdout
