"""hotplug: create -> ready latency for both backends, against interpreter start and bare fork.

Why: hot-plugging a sandbox into a running pod is what Nest does instead of starting a pod;
its latency bounds scale-from-zero. Baselines: `python -I -S -c pass` (what a fresh process
would cost) and a warm fork + exit + wait (the floor any zygote design has).
"""

from __future__ import annotations

import time

from bench.common import HELLO, Report, fork_exit_wait_ms, ms, percentile, python_startup_ms
from isolation.base import SandboxSpec
from isolation.namespace import NamespaceBackend
from isolation.process import SubprocessBackend


async def _namespace(n: int) -> list[float]:
    backend = NamespaceBackend()
    samples = []
    for i in range(n + 20):
        started = time.perf_counter()
        await backend.create(SandboxSpec(f"ns-{i}", HELLO, "main:handler"))
        if i >= 20:  # the first few warm the bytecode cache and import machinery
            samples.append(time.perf_counter() - started)
    await backend.close()
    return samples


async def _subprocess(n: int) -> list[float]:
    backend = SubprocessBackend()
    await backend.start()
    samples = []
    try:
        for i in range(n + 5):
            started = time.perf_counter()
            await backend.create(SandboxSpec(f"sp-{i}", HELLO, "main:handler"))
            if i >= 5:
                samples.append(time.perf_counter() - started)
            await backend.remove(f"sp-{i}")  # keep the pod's process count constant
    finally:
        await backend.close()
    return samples


async def run(n: int = 300) -> Report:
    report = Report("hotplug")
    ns = await _namespace(n)
    sp = await _subprocess(n)
    report.results = {
        "namespace_p50_ms": ms(percentile(ns, 50)),
        "namespace_p99_ms": ms(percentile(ns, 99)),
        "subprocess_p50_ms": ms(percentile(sp, 50)),
        "subprocess_p99_ms": ms(percentile(sp, 99)),
        "n": float(n),
    }
    report.baselines = {
        "python_startup_ms": python_startup_ms(),
        "fork_exit_wait_ms": fork_exit_wait_ms(),
    }
    report.ratios = {
        "subprocess_p50_over_python_startup": report.results["subprocess_p50_ms"]
        / report.baselines["python_startup_ms"],
        "subprocess_p50_over_fork": report.results["subprocess_p50_ms"]
        / report.baselines["fork_exit_wait_ms"],
        "namespace_p50_over_python_startup": report.results["namespace_p50_ms"]
        / report.baselines["python_startup_ms"],
    }
    return report
