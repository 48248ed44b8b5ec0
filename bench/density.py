"""density: how many sandboxes one runtime holds with every one of them answering.

Why: the design promises >= 1,000 namespace and >= 200 subprocess sandboxes per 2-core pod.
Each sandbox is loaded, invoked once (all answering), then invocation p99 is measured at that
density with calls spread over all sandboxes (through the backend, without HTTP).
"""

from __future__ import annotations

import random
import time

from bench.common import HELLO, Report, ms, percentile
from isolation.base import Backend, SandboxSpec
from isolation.contract import Request
from isolation.namespace import NamespaceBackend
from isolation.process import SubprocessBackend

BODY = Request(body=b'{"name": "d"}')


async def _fill(backend: Backend, prefix: str, count: int, calls: int) -> tuple[int, float]:
    ids = [f"{prefix}-{i}" for i in range(count)]
    for sandbox_id in ids:
        await backend.create(SandboxSpec(sandbox_id, HELLO, "main:async_noop"))
    answering = 0
    for sandbox_id in ids:
        answering += (await backend.invoke(sandbox_id, BODY)).status == 200
    rng = random.Random(7)
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        await backend.invoke(rng.choice(ids), BODY)
        samples.append(time.perf_counter() - started)
    return answering, ms(percentile(samples, 99))


async def run(namespace: int = 2000, subprocess: int = 250, calls: int = 3000) -> Report:
    report = Report("density")
    ns_backend = NamespaceBackend()
    ns_count, ns_p99 = await _fill(ns_backend, "ns", namespace, calls)
    await ns_backend.close()
    sp_backend = SubprocessBackend()
    await sp_backend.start()
    try:
        sp_count, sp_p99 = await _fill(sp_backend, "sp", subprocess, calls)
    finally:
        await sp_backend.close()
    report.results = {
        "namespace_sandboxes": float(ns_count),
        "subprocess_sandboxes": float(sp_count),
        "namespace_invoke_p99_ms": ns_p99,
        "subprocess_invoke_p99_ms": sp_p99,
    }
    report.baselines = {"namespace_target": 1000.0, "subprocess_target": 200.0}
    report.ratios = {
        "namespace_over_target": ns_count / 1000,
        "subprocess_over_target": sp_count / 200,
    }
    return report
