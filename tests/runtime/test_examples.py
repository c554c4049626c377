"""The client scripts in examples/ run against a real server and print the generated token ids."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from .conftest import MODEL_NAME, REPO_ROOT, Server

EXAMPLES = REPO_ROOT / "examples"
TOKENS = ["--input_ids", "5", "18", "31", "--max_tokens", "4"]


def address(server: Server, example: str) -> str:
    return server.grpc_url if "grpc" in example else server.url


@pytest.mark.parametrize("example", ["v2_rest_client.py", "v2_grpc_client.py", "generate_stream_client.py"])
def test_example_prints_token_ids(server, example):
    command = [sys.executable, str(EXAMPLES / example), "--url", address(server, example), "--model", MODEL_NAME,
               *TOKENS]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    ids = [int(token) for line in re.findall(r"output_ids: \[([\d, ]*)\]", finished.stdout)
           for token in line.split(",") if token.strip()]
    assert 1 <= len(ids) <= 4, finished.stdout
    assert "finish_reason:" in finished.stdout
