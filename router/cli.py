"""Command-line plumbing of `python -m router` and `python -m router.calibrate`. Imports nothing
from KServe: it runs before KServe is imported."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

CONFIG_FLAG = "--config"


@contextmanager
def config_flag_hidden_from_kserve() -> Iterator[None]:
    """KServe parses sys.argv when it is first imported, and argparse's prefix matching reads our
    `--config` as KServe's `--configure_logging`, whose value check then exits the process. Import
    KServe inside this block: meanwhile sys.argv lacks `--config` and its value. Our own parser,
    which knows `--config` by its full name, reads the real sys.argv afterwards."""
    argv = sys.argv
    sys.argv = without_flag(argv, CONFIG_FLAG)
    try:
        yield
    finally:
        sys.argv = argv


def without_flag(argv: list[str], flag: str) -> list[str]:
    """`argv` without `flag VALUE` and `flag=VALUE`."""
    kept: list[str] = []
    skip_value = False
    for arg in argv:
        if skip_value:
            skip_value = False
        elif arg == flag:
            skip_value = True
        elif not arg.startswith(flag + "="):
            kept.append(arg)
    return kept
