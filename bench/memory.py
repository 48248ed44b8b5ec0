"""memory: what one more sandbox costs, as ΔUSS (and ΔPSS) per sandbox, for both backends.

Why: density is memory-bound. USS is what the kernel would free if the sandbox went away;
PSS additionally charges each process its share of the zygote pages it still shares. Baseline:
the USS of an idle bare interpreter, i.e. what a process-per-function design pays. The
subprocess backend is measured twice: plain, and with the tenant boundary on (own uid,
Landlock, seccomp, limits; needs root, else that figure is left out). Goal (issue 14): at most
1.5 MB per subprocess sandbox with the boundary on.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import psutil

from bench.common import HELLO, MB, Report, idle_interpreter_uss_mb, settle, uss_pss
from isolation.base import SandboxSpec
from isolation.boundary import BoundaryConfig
from isolation.contract import Request
from isolation.namespace import NamespaceBackend
from isolation.process import SubprocessBackend

GOAL_BOUNDARY_USS_MB = 1.5  # issue 14: per subprocess sandbox, boundary on


async def _namespace(k: int) -> tuple[float, float]:
    backend = NamespaceBackend()
    for i in range(5):  # warm shared tables before the baseline
        await backend.create(SandboxSpec(f"warm-{i}", HELLO, "main:handler"))
        await backend.invoke(f"warm-{i}", Request(body=b"{}"))
    settle()
    uss0, pss0 = uss_pss()
    for i in range(k):
        await backend.create(SandboxSpec(f"ns-{i}", HELLO, "main:handler"))
        await backend.invoke(f"ns-{i}", Request(body=b"{}"))
    settle()
    uss1, pss1 = uss_pss()
    await backend.close()
    return (uss1 - uss0) / k / MB, (pss1 - pss0) / k / MB


def _tree_memory(pids: list[int]) -> tuple[int, int]:
    uss = pss = 0
    for pid in pids:
        info = psutil.Process(pid).memory_full_info()
        uss += info.uss
        pss += info.pss
    return uss, pss


async def _subprocess(k: int, boundary: BoundaryConfig | None = None) -> tuple[float, float]:
    backend = SubprocessBackend(boundary=boundary)
    await backend.start()
    try:
        await backend.create(SandboxSpec("warm", HELLO, "main:handler"))
        await backend.invoke("warm", Request(body=b"{}"))
        settle()
        assert backend.zygote_pid is not None
        base = [psutil.Process().pid, backend.zygote_pid]
        uss0, pss0 = _tree_memory(base)
        pids = []
        for i in range(k):
            status = await backend.create(SandboxSpec(f"sp-{i}", HELLO, "main:handler"))
            await backend.invoke(f"sp-{i}", Request(body=b"{}"))  # one invocation: warmed up
            assert status.pid is not None
            pids.append(status.pid)
        settle()
        uss1, pss1 = _tree_memory(base + pids)
    finally:
        await backend.close()
    return (uss1 - uss0) / k / MB, (pss1 - pss0) / k / MB


async def run(k_namespace: int = 500, k_subprocess: int = 50) -> Report:
    report = Report("memory")
    ns_uss, ns_pss = await _namespace(k_namespace)
    sp_uss, sp_pss = await _subprocess(k_subprocess)
    report.results = {
        "namespace_uss_mb_per_sandbox": ns_uss,
        "namespace_pss_mb_per_sandbox": ns_pss,
        "subprocess_uss_mb_per_sandbox": sp_uss,
        "subprocess_pss_mb_per_sandbox": sp_pss,
    }
    report.baselines = {"idle_interpreter_uss_mb": idle_interpreter_uss_mb()}
    idle = report.baselines["idle_interpreter_uss_mb"]
    report.ratios = {
        "namespace_over_idle_interpreter": ns_uss / idle,
        "subprocess_over_idle_interpreter": sp_uss / idle,
    }
    if os.geteuid() == 0:  # confined sandboxes setuid to their own uid
        scratch = tempfile.mkdtemp(prefix="nest-bench-scratch-")
        try:
            on_uss, on_pss = await _subprocess(k_subprocess, BoundaryConfig(scratch_root=scratch))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        report.results["subprocess_boundary_uss_mb_per_sandbox"] = on_uss
        report.results["subprocess_boundary_pss_mb_per_sandbox"] = on_pss
        report.ratios["subprocess_boundary_over_idle_interpreter"] = on_uss / idle
        report.ratios["subprocess_boundary_uss_over_goal"] = on_uss / GOAL_BOUNDARY_USS_MB
    return report
