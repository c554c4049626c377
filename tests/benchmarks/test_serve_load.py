"""benchmarks/serve_load.py end to end, in a tiny configuration: it starts the demo model's
predictor, transformer and router, runs one level on each target with a shared-prefix workload,
and writes a JSON report in which every request completed; the llama.cpp peer's arguments, and
the message that skips it where it is not built."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks import serve_load
from benchmarks.peers import llama_cpp
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


def _parse_args(monkeypatch, llama_cpp_cache, *argv: str):
    """serve_load's arguments, with llama.cpp's build looked for in `llama_cpp_cache`."""
    monkeypatch.setattr(llama_cpp, "cache_dir", lambda: llama_cpp_cache)
    monkeypatch.setattr(sys, "argv", ["serve_load.py", *argv])
    return serve_load.parse_args()


def test_llamacpp_is_skipped_with_the_build_command_when_not_built(monkeypatch, tmp_path, capsys):
    args = _parse_args(monkeypatch, tmp_path, "--targets", "transformer,llamacpp", "--concurrency", "1,4")

    assert args.targets == ("transformer",)
    printed = capsys.readouterr().out
    assert "skipping llamacpp" in printed and "make llama-cpp" in printed and "llama-server" in printed


def test_llamacpp_alone_and_not_built_leaves_nothing_to_measure(monkeypatch, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        _parse_args(monkeypatch, tmp_path, "--targets", "llamacpp")

    assert exited.value.code == 1
    assert "make llama-cpp" in capsys.readouterr().out


def test_llamacpp_built_is_measured_with_a_slot_per_client(monkeypatch, tmp_path):
    monkeypatch.setattr(llama_cpp, "cache_dir", lambda: tmp_path)
    for part in (llama_cpp.server_path(), llama_cpp.gguf_path("large")):
        part.parent.mkdir(parents=True, exist_ok=True)
        part.touch()

    args = _parse_args(monkeypatch, tmp_path, "--targets", "transformer,llamacpp", "--size", "large",
                       "--concurrency", "1,4")

    assert args.targets == ("transformer", "llamacpp")
    assert args.llamacpp_slots == 4


def test_running_servers_need_the_llamacpp_url_for_the_peer(monkeypatch, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        _parse_args(monkeypatch, tmp_path, "--targets", "direct,llamacpp", "--predictor_url", "http://127.0.0.1:1")

    assert exited.value.code == 2
    assert "--llamacpp_url" in capsys.readouterr().err
