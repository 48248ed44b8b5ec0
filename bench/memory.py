"""memory: what one more sandbox costs, as ΔUSS (and ΔPSS) per sandbox, for both backends.

Why: density is memory-bound. USS is what the kernel would free if the sandbox went away;
PSS additionally charges each process its share of the zygote pages it still shares. Baseline:
the USS of an idle bare interpreter, i.e. what a process-per-function design pays.
"""

from __future__ import annotations

import psutil

from bench.common import HELLO, MB, Report, idle_interpreter_uss_mb, settle, uss_pss
from isolation.base import SandboxSpec
from isolation.contract import Request
from isolation.namespace import NamespaceBackend
from isolation.process import SubprocessBackend


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


async def _subprocess(k: int) -> tuple[float, float]:
    backend = SubprocessBackend()
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
    return report
