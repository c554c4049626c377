"""benchmarks/structured_output_cost.py runs end to end (tiny batch, few tokens) and reports every
mode against the unconstrained one, with the grammar's phases. Needs the real-models extra (the
grammars read SmolLM2's tokenizer)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.engine.test_real_models import real_checkpoint
from tests.servers import REPO_ROOT


def test_reports_each_mode_against_unconstrained_rows(tmp_path):
    real_checkpoint("smollm2-135m-instruct")
    report = tmp_path / "cost.json"
    finished = subprocess.run(
        [sys.executable, "benchmarks/structured_output_cost.py", "--batch", "4", "--output_len", "6", "--rounds", "1",
         "--json", str(report)],
        check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    summary = json.loads(report.read_text())["summary"]
    assert list(summary) == ["unconstrained", "json_schema", "json_object"]
    assert summary["unconstrained"]["throughput_ratio"] == 1.0
    assert summary["unconstrained"]["mask fill"] == 0.0
    # The schema asks for more than max_tokens can write: its rows run as long as the others.
    assert summary["json_schema"]["mean_output_len"] == summary["unconstrained"]["mean_output_len"] == 6
    assert all(summary[mode]["mask fill"] > 0 and summary[mode]["mask apply"] > 0
               for mode in ("json_schema", "json_object"))
