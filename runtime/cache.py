"""Where the runtime keeps what it builds once (the demo model, checkpoints converted from GGUF):
--cache_dir, else $KSERVE_LLM_CACHE, else ~/.cache/kserve-llm-runtime; and how such a directory is
written so that a crash or a concurrent build never leaves a half-written one."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

CACHE_DIR_ENV = "KSERVE_LLM_CACHE"
DEFAULT_CACHE_DIR = "~/.cache/kserve-llm-runtime"
# A staging directory untouched for this long belongs to a build that died (a conversion writes
# its files within minutes); a live build's is younger.
STALE_STAGING_SECONDS = 6 * 3600


def cache_root(cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir or os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR).expanduser().absolute()


def add_cache_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache_dir", default=None,
                        help=f"where checkpoints converted from GGUF and the demo model are kept "
                             f"(default: ${CACHE_DIR_ENV}, else {DEFAULT_CACHE_DIR})")


def build_atomically(target: Path, write: Callable[[Path], None], is_complete: Callable[[Path], bool]) -> None:
    """Write a directory with `write` into a staging directory beside `target`, then rename it into
    place. A failure (or a crash) leaves no `target`; a concurrent build that finished first wins.
    An incomplete `target` (made by hand, or by an older version) is removed first."""
    if target.exists() and not is_complete(target):
        logger.warning("Removing the incomplete directory %s", target)
        shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.building-"
    _remove_stale_staging(target.parent, prefix)
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    try:
        staging.chmod(0o755)
        write(staging)
        # transformers writes files owner-only; the cache may be shared between users.
        for path in staging.iterdir():
            path.chmod(0o644)
        _move_into_place(staging, target, is_complete)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_into_place(staging: Path, target: Path, is_complete: Callable[[Path], bool]) -> None:
    try:
        os.rename(staging, target)
    except OSError:
        # Another process finished first; its files are built from the same input as ours.
        if not is_complete(target):
            raise
        logger.info("Another build of %s finished first; using it", target)


def _remove_stale_staging(parent: Path, prefix: str) -> None:
    """Staging directories that killed builds left behind (a gigabyte each for a real model)."""
    now = time.time()
    for leftover in parent.glob(f"{prefix}*"):
        try:
            age = now - leftover.stat().st_mtime
        except FileNotFoundError:
            continue
        if age > STALE_STAGING_SECONDS:
            logger.warning("Removing %s, left by a build that stopped %.1f h ago", leftover, age / 3600)
            shutil.rmtree(leftover, ignore_errors=True)
