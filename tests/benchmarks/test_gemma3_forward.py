"""benchmarks/gemma3_forward.py runs end to end on a tiny Gemma 3 and reports every measurement."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.engine.tiny_models import build_tiny_model
from tests.servers import REPO_ROOT


def test_reports_decode_and_prefill_steps_of_both_paths(tmp_path):
    model_dir = build_tiny_model(tmp_path / "gemma3", "gemma3")
    finished = subprocess.run(
        [sys.executable, "benchmarks/gemma3_forward.py", "--model_dir", str(model_dir), "--rounds", "2",
         "--steps", "2", "--prefills", "1", "--context_len", "16", "--prefill_len", "40"],
        check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    rows = [line.split()[:3] for line in finished.stdout.splitlines() if " ratio " in line]
    assert rows == [["decode", "batch", "1"], ["decode", "batch", "8"], ["prefill", "40", "transformers"]]
