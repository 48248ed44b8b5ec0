"""Shared measuring helpers for the benchmarks: percentiles, process memory, result shape.

Why: every benchmark must report the same JSON shape (`bench`, `results`, `baselines`,
`ratios`, all flat numeric maps) and compute percentiles and memory the same way, so figures
from different benchmarks can be compared.
"""

from __future__ import annotations

import gc
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

HELLO = str(Path(__file__).resolve().parents[1] / "examples" / "functions" / "hello")
MB = 1024 * 1024


@dataclass
class Report:
    bench: str
    results: dict[str, float] = field(default_factory=dict)
    baselines: dict[str, float] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        def rounded(values: dict[str, float]) -> dict[str, float]:
            return {k: round(v, 4) for k, v in values.items()}

        return {
            "bench": self.bench,
            "results": rounded(self.results),
            "baselines": rounded(self.baselines),
            "ratios": rounded(self.ratios),
        }


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def ms(seconds: float) -> float:
    return seconds * 1000


def uss_pss(pid: int | None = None) -> tuple[int, int]:
    info = psutil.Process(pid or os.getpid()).memory_full_info()
    return info.uss, info.pss


def settle() -> None:
    """Collect garbage so memory deltas measure what is live, not what is pending."""
    gc.collect()


def python_startup_ms(runs: int = 20) -> float:
    """Median wall time of `python -I -S -c pass`: the cost a zygote avoids."""
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-I", "-S", "-c", "pass"], check=True)
        samples.append(time.perf_counter() - started)
    return ms(statistics.median(samples))


def fork_exit_wait_ms(runs: int = 200) -> float:
    """Median of a warm interpreter's fork + _exit + waitpid: the floor of a zygote fork."""
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        samples.append(time.perf_counter() - started)
    return ms(statistics.median(samples))


def idle_interpreter_uss_mb() -> float:
    """USS of a bare interpreter (`python -I -S`) sitting idle."""
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", "import sys; print(flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdin is not None
    proc.stdout.readline()  # it is up and idle
    uss, _ = uss_pss(proc.pid)
    proc.stdin.close()
    proc.wait()
    proc.stdout.close()
    return uss / MB
