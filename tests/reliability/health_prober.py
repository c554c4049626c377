"""Probes a server's health route continuously from a process of its own, so that the fuzzing
client's work (drawing cases, encoding megabyte bodies) never delays a probe, and reports the
worst latency it saw. `python -m tests.reliability.health_prober URL` probes until its stdin
closes, then prints a JSON report; HealthProber runs it around a block of code."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

import httpx

from tests.servers import REPO_ROOT

# Pause between probes: often enough to catch a stall of a tenth of a second, rarely enough to
# leave the server's event loop to the cases.
PROBE_INTERVAL_SECONDS = 0.02
PROBE_TIMEOUT_SECONDS = 5.0
STARTED = "probing"


@dataclass
class HealthReport:
    probes: int = 0
    worst_seconds: float = 0.0
    worst_at: float = 0.0  # when the slowest probe started (time.time()), to find what ran then
    p99_seconds: float = 0.0
    failures: list[str] = field(default_factory=list)  # probes that got no 200, the first few


def probe_until(url: str, stopped: threading.Event) -> HealthReport:
    report = HealthReport()
    latencies = []
    with httpx.Client(timeout=PROBE_TIMEOUT_SECONDS, trust_env=False) as client:
        while not stopped.is_set():
            started_at, start = time.time(), time.perf_counter()
            try:
                outcome = client.get(url).status_code
            except httpx.HTTPError as exc:
                outcome = repr(exc)
            latencies.append(time.perf_counter() - start)
            if latencies[-1] > report.worst_seconds:
                report.worst_seconds, report.worst_at = latencies[-1], started_at
            if outcome != 200 and len(report.failures) < 10:
                report.failures.append(f"{outcome} after {latencies[-1]:.3f} s")
            if report.probes == 0:
                print(STARTED, flush=True)
            report.probes += 1
            stopped.wait(PROBE_INTERVAL_SECONDS)
    latencies.sort()
    report.p99_seconds = latencies[int(0.99 * (len(latencies) - 1))]
    return report


def main() -> None:
    stopped = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stopped.set()), daemon=True).start()
    report = probe_until(sys.argv[1], stopped)
    print(json.dumps(asdict(report)), flush=True)


class HealthProber:
    """Probes `url` while the `with` block runs; `report` afterwards."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.report: HealthReport | None = None

    def __enter__(self) -> HealthProber:
        self.process = subprocess.Popen([sys.executable, "-m", __name__, self.url], cwd=REPO_ROOT, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        if self.process.stdout.readline().strip() != STARTED:
            self.process.kill()
            raise RuntimeError(f"the health prober of {self.url} did not start")
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            output, _ = self.process.communicate(input="", timeout=PROBE_TIMEOUT_SECONDS * 2)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        self.report = HealthReport(**json.loads(output))


if __name__ == "__main__":
    main()
