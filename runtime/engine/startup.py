"""Where a process's start-up time goes: wall seconds per phase (imports, weight load, KV cache
sizing, warm-up, C++ kernel build or load, ...), so a slow cold start says which phase to cut.

One record per process (STARTUP), not per engine: imports and kernel loads are the process's own
and happen once, wherever they are triggered from. An engine built later in the same process
(tests, benchmarks) adds its phases to the same record.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# Read at import, the fallback origin where the kernel does not say when the process started.
_IMPORTED_AT = time.monotonic()
# Every phase, in the order they happen, each reported (0 where it did not happen here: no
# kernels with KSERVE_LLM_CPU_KERNELS=0, the engine's phases in Ray replicas' own processes).
# imports: process start to main(); checkpoint: finding (or building, converting) the model's
# directory; kv_cache: sizing (profiling, on CUDA) and allocating it; kernels: building or
# loading the C++ CPU kernels; server: the model loaded to the server answering.
PHASES = ("imports", "checkpoint", "weight_load", "kv_cache", "warm_up", "kernels", "server")


class StartupTimings:
    """Seconds per phase, exclusive: a phase nested in another (a kernel built during warm-up)
    is not counted in the outer one, so the phases add up to the time they cover."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.seconds: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        # Seconds spent in nested phases, per phase now open (innermost last).
        self._nested: list[float] = []

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = self.clock()
        self._nested.append(0.0)
        try:
            yield
        finally:
            elapsed = self.clock() - started
            nested = self._nested.pop()
            self.record(name, elapsed - nested)
            if self._nested:
                self._nested[-1] += elapsed

    def record(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def breakdown(self, total: float) -> dict[str, float]:
        """The phases of a start-up that took `total` seconds, and as `other` what none covers:
        the values add up to `total`."""
        return {**self.seconds, "other": max(total - sum(self.seconds.values()), 0.0)}


def describe_startup(breakdown: dict[str, float]) -> str:
    """`ready in 2.41s: imports 1.90s, weight_load 0.05s, ...` (benchmarks/cold_start.py parses it)."""
    parts = ", ".join(f"{name} {seconds:.3f}s" for name, seconds in breakdown.items())
    return f"ready in {sum(breakdown.values()):.3f}s: {parts}"


STARTUP = StartupTimings()


def seconds_since_process_start() -> float:
    """Wall seconds since this process was started (before the interpreter loaded anything), from
    /proc on Linux; elsewhere, since this module was imported."""
    try:
        with open("/proc/self/stat", "rb") as stat:
            # Fields after the command name (which may hold spaces); starttime is field 22.
            fields = stat.read().rsplit(b")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return time.clock_gettime(time.CLOCK_BOOTTIME) - started
    except (OSError, ValueError, IndexError, AttributeError):
        return time.monotonic() - _IMPORTED_AT
