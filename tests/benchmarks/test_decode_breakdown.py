"""benchmarks/decode_breakdown.py on the small demo model, a few steps: it prints each batch size's
step time, the asyncio hand-off's gaps and the step's time by part, the forward's parts included."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.servers import REPO_ROOT

PARTS = ("matmuls (q/k/v, o, gate/up, down)", "LM head", "attention (KV write, paged decode)",
         "norms and residual adds", "sampling", "schedule", "step, the rest (outputs, bookkeeping)")


def test_prints_the_step_by_part_for_each_batch_size():
    command = [sys.executable, "benchmarks/decode_breakdown.py", "--size", "small", "--num_threads", "1",
               "--batch_sizes", "1,2", "--steps", "4", "--prompt_tokens", "8"]
    finished = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]

    for batch in (1, 2):
        section = finished.stdout.split(f"batch {batch}: ", 1)[1].split("\nbatch ", 1)[0]
        assert "LLMEngine.step() p50" in section and "AsyncLLMEngine output gaps p50" in section
        assert all(part in section for part in PARTS)
