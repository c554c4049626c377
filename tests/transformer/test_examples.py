"""The OpenAI example client runs against a real transformer, and its streamed text equals the
whole completion (same seed)."""

from __future__ import annotations

import subprocess
import sys

from tests.servers import MODEL_NAME, REPO_ROOT


def test_openai_example_prints_the_same_text_whole_and_streamed(transformer):
    command = [sys.executable, str(REPO_ROOT / "examples" / "openai_chat_client.py"), "--url", transformer.url,
               "--model", MODEL_NAME, "--max_tokens", "12"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    lines = finished.stdout.splitlines()
    whole = next(line for line in lines if line.startswith("whole: ")).removeprefix("whole: ")
    streamed = next(line for line in lines if line.startswith("streamed: ")).removeprefix("streamed: ")
    assert whole and streamed == whole
    assert "'completion_tokens': 12" in finished.stdout
