"""benchmarks/batch_drain.py end to end, in a tiny configuration: it starts the demo model's
predictor, transformer and router with the batch API, runs the four phases once, and writes a
JSON report in which every online request completed and the batch alone drained every line."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.servers import REPO_ROOT

BATCH_LINES = 12
ONLINE_REQUESTS = 8


def test_one_round_of_the_four_phases_completes_and_reports(tmp_path):
    report_path = tmp_path / "report.json"
    command = [sys.executable, "benchmarks/batch_drain.py", "--rounds", "1", "--online_clients", "4",
               "--peak_requests", "8", "--batch_lines", str(BATCH_LINES), "--online_requests", str(ONLINE_REQUESTS),
               "--prompt_tokens", "8", "--output_tokens", "4", "--router_arg=--batch_concurrency=4",
               "--json", str(report_path)]
    finished = subprocess.run(command, check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    assert "bar (1)" in finished.stdout and "bar (2)" in finished.stdout

    report = json.loads(report_path.read_text())
    assert report["router_args"] == ["--batch_concurrency=4"]
    [round_] = report["rounds"]
    assert round_["peak"]["completed"] == 8 and round_["peak"]["output_token_throughput"] > 0
    drained = round_["drain"]
    assert drained["completed"] == drained["lines"] == BATCH_LINES and drained["failed"] == 0
    assert drained["completion_tokens"] == 4 * BATCH_LINES
    for phase in ("online_alone", "online_with_batch"):
        assert round_[phase]["completed"] == ONLINE_REQUESTS
    assert len(round_["online_with_batch"]["sent_s_and_ttft_ms"]) == ONLINE_REQUESTS
    assert report["pooled"]["online_with_batch"]["failed"] == 0
    assert set(report["median_ratios"]) == {"drain_ratio", "ttft_p99_ratio"}
