"""The OpenAI example clients run against a real transformer: the chat client's streamed text
equals the whole completion (same seed); the steering client's banned tokens change the text."""

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


def test_steering_example_bans_the_first_words_tokens(transformer):
    command = [sys.executable, str(REPO_ROOT / "examples" / "steering_client.py"), "--url", transformer.url,
               "--model", MODEL_NAME]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    printed = dict(line.split(": ", 1) for line in finished.stdout.splitlines() if ": " in line)
    banned = printed["banned ids"]
    assert banned.startswith("[") and not banned.startswith("[]"), banned
    assert printed["plain"] and printed["steered"] and printed["steered"] != printed["plain"]


def test_tool_calling_example_calls_the_tool_and_answers(transformer):
    command = [sys.executable, str(REPO_ROOT / "examples" / "tool_calling_client.py"), "--url", transformer.url,
               "--model", MODEL_NAME]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert "call: get_weather" in finished.stdout and "finish_reason: tool_calls" in finished.stdout
    assert "tool answer: " in finished.stdout and "answer: " in finished.stdout
