"""isolation-cost: what the tenant boundary costs a subprocess sandbox, on vs off in one run.

Why: the boundary (own uid, no capabilities, seccomp, Landlock, a cgroup or rlimits, a scratch
directory, bytecode compiled before the privilege drop) is work done between fork and ready, and
pages a sandbox writes. Both are measured the same way, in the same run, with the same code: the
hot-plug latency (create -> ready, p50/p99) and ΔUSS per sandbox. Goal: at most +1 ms and +0.2 MB.
Needs root (setuid); the rest of the benchmarks do not.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import psutil

from bench.common import HELLO, MB, Report, ms, percentile, settle
from isolation.base import SandboxSpec
from isolation.boundary import BoundaryConfig
from isolation.contract import Request
from isolation.process import SubprocessBackend


def _backend(boundary: BoundaryConfig | None) -> SubprocessBackend:
    return SubprocessBackend(boundary=boundary)


async def _hotplug(boundary: BoundaryConfig | None, n: int) -> list[float]:
    backend = _backend(boundary)
    await backend.start()
    samples = []
    try:
        for i in range(n + 5):
            started = time.perf_counter()
            await backend.create(SandboxSpec(f"hp-{i}", HELLO, "main:handler"))
            if i >= 5:  # the first ones compile the bytecode and warm the caches
                samples.append(time.perf_counter() - started)
            await backend.remove(f"hp-{i}")
    finally:
        await backend.close()
    return samples


async def _uss(boundary: BoundaryConfig | None, k: int) -> float:
    """ΔUSS per sandbox of k running, invoked sandboxes (their own pages only)."""
    backend = _backend(boundary)
    await backend.start()
    try:
        await backend.create(SandboxSpec("warm", HELLO, "main:handler"))
        await backend.invoke("warm", Request(body=b"{}"))
        pids = []
        for i in range(k):
            status = await backend.create(SandboxSpec(f"m-{i}", HELLO, "main:handler"))
            await backend.invoke(f"m-{i}", Request(body=b"{}"))
            assert status.pid is not None
            pids.append(status.pid)
        settle()
        total = sum(psutil.Process(pid).memory_full_info().uss for pid in pids)
    finally:
        await backend.close()
    return total / k / MB


async def run(n: int = 200, k: int = 40) -> Report:
    report = Report("isolation-cost")
    if os.geteuid() != 0:
        raise SystemExit("isolation-cost needs root: confined sandboxes setuid to their own uid")
    scratch = tempfile.mkdtemp(prefix="nest-bench-scratch-")
    boundary = BoundaryConfig(scratch_root=scratch)
    try:
        # Interleaved, so that a change in machine load hits both sides alike.
        off, on = await _hotplug(None, n), await _hotplug(boundary, n)
        off2, on2 = await _hotplug(None, n), await _hotplug(boundary, n)
        uss_off, uss_on = await _uss(None, k), await _uss(boundary, k)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    off, on = off + off2, on + on2
    report.results = {
        "hotplug_p50_ms_boundary_on": ms(percentile(on, 50)),
        "hotplug_p99_ms_boundary_on": ms(percentile(on, 99)),
        "uss_mb_per_sandbox_boundary_on": uss_on,
        "n": float(len(on)),
    }
    report.baselines = {
        "hotplug_p50_ms_boundary_off": ms(percentile(off, 50)),
        "hotplug_p99_ms_boundary_off": ms(percentile(off, 99)),
        "uss_mb_per_sandbox_boundary_off": uss_off,
    }
    report.ratios = {
        "hotplug_p50_added_ms": report.results["hotplug_p50_ms_boundary_on"]
        - report.baselines["hotplug_p50_ms_boundary_off"],
        "uss_added_mb": uss_on - uss_off,
        "hotplug_p50_on_over_off": report.results["hotplug_p50_ms_boundary_on"]
        / report.baselines["hotplug_p50_ms_boundary_off"],
    }
    return report
