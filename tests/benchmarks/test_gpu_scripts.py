"""The GPU benchmark scripts run end to end in their CPU check modes (tiny shapes; Triton kernels in
its interpreter), so a GPU session never spends its few minutes on a script that broke since."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.servers import REPO_ROOT


def run_script(arguments: list[str], **env: str) -> None:
    finished = subprocess.run(
        [sys.executable, *arguments], cwd=REPO_ROOT, capture_output=True, text=True, timeout=240,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **env},
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]


def test_gpu_roofline_compares_both_step_loops(tmp_path):
    report_path = tmp_path / "roofline.json"
    run_script(["benchmarks/gpu_roofline.py", "--tiny", "--device", "cpu", "--async_scheduling", "on,off",
                "--hf_batch", "0", "--json", str(report_path)])
    report = json.loads(report_path.read_text())
    systems = {(row["system"], row["batch"]) for row in report["results"]}
    assert systems == {(f"ours/torch/eager/{loop}", batch) for loop in ("async", "sync") for batch in (1, 4)}
    assert all(0 < row["fraction_of_roofline"] for row in report["results"])
    assert not report["errors"]


def test_gpu_kernels_times_every_kernel_and_launch(tmp_path):
    report_path = tmp_path / "kernels.json"
    run_script(["benchmarks/gpu_kernels.py", "--tiny", "--device", "cpu", "--decode_launches", "16:2:1,32",
                "--json", str(report_path)], TRITON_INTERPRET="1")
    report = json.loads(report_path.read_text())
    kernels = {(row["batch"], row["kernel"]) for row in report["kernels"]}
    assert {kernel for _, kernel in kernels} >= {"qkv_proj (matmul)", "down_proj (matmul)", "lm_head (matmul)",
                                                "decode attention", "rotary", "silu_and_mul", "add_rms_norm x2"}
    assert {batch for batch, _ in kernels} == {1, 4}
    assert {(row["batch"], row["launch"]) for row in report["attention_sweep"]} == {
        (batch, launch) for batch in (1, 4) for launch in ("16:2:1", "32")
    }
    assert all(row["ms_per_step"] > 0 and row["bytes_per_step"] > 0 for row in report["kernels"])


def test_gpu_kernels_names_a_launch_only_when_it_beat_the_default(tmp_path):
    def summary(sweep: dict[str, float], default: float) -> dict:
        return {
            "kernels": [{"batch": 64, "kernel": "decode attention", "gb_per_s": default},
                        {"batch": 64, "kernel": "rotary", "gb_per_s": 9999.0}],
            "attention_sweep": [{"batch": 64, "launch": launch, "gb_per_s": rate} for launch, rate in sweep.items()]
                               + [{"batch": 16, "launch": "256:8:2", "gb_per_s": 9999.0}],
        }

    for sweep, default, expected in [
        ({"64": 3000.0, "128:8:2": 3300.0}, 3000.0, "128:8:2"),
        ({"64": 3000.0, "128:8:2": 3050.0}, 3000.0, ""),  # within noise
        ({"64": 3000.0}, 3000.0, ""),
    ]:
        path = tmp_path / "kernels.json"
        path.write_text(json.dumps(summary(sweep, default)))
        finished = subprocess.run([sys.executable, "benchmarks/gpu_kernels.py", "--best_launch", str(path),
                                   "--batch", "64"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                                  env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        assert finished.returncode == 0, finished.stderr[-2000:]
        assert finished.stdout.strip() == expected
