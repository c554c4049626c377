"""The local stack (devstack/local_stack.py) as tests run it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from devstack.local_stack import Stack


@contextmanager
def running(stack: Stack) -> Iterator[Stack]:
    """`stack` started, its predictors without the C++ CPU kernels (compiled on first use, as
    tests.servers starts servers), and stopped on leaving - or when it fails to start."""
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("KSERVE_LLM_CPU_KERNELS", "0")
            stack.start()
        yield stack
    finally:
        stack.stop()
