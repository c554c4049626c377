"""Directories the runtime builds once (runtime/cache.py): written whole or not at all, and the
staging directories of builds that died are cleared by the next build."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from runtime.cache import STALE_STAGING_SECONDS, build_atomically


def write_marker(directory: Path) -> None:
    (directory / "done").write_text("yes")


def is_complete(directory: Path) -> bool:
    return (directory / "done").is_file()


def test_a_build_appears_whole(tmp_path):
    target = tmp_path / "model"
    build_atomically(target, write_marker, is_complete)
    assert is_complete(target)
    assert [path.name for path in tmp_path.iterdir()] == ["model"]


def test_a_failed_build_leaves_nothing(tmp_path):
    def fail(directory: Path) -> None:
        (directory / "half").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        build_atomically(tmp_path / "model", fail, is_complete)
    assert list(tmp_path.iterdir()) == []


def test_stale_staging_directories_of_dead_builds_are_removed(tmp_path):
    dead = tmp_path / ".model.building-dead"
    live = tmp_path / ".model.building-live"
    other = tmp_path / ".other.building-dead"
    for directory in (dead, live, other):
        directory.mkdir()
        (directory / "model.safetensors").write_bytes(b"\0" * 16)
    long_ago = time.time() - STALE_STAGING_SECONDS - 60
    os.utime(dead, (long_ago, long_ago))
    os.utime(other, (long_ago, long_ago))

    build_atomically(tmp_path / "model", write_marker, is_complete)

    assert not dead.exists(), "a build that stopped hours ago is cleared"
    assert live.exists(), "a build that may still be running is left alone"
    assert other.exists(), "only the staging directories of the same target are touched"
