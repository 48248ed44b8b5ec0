"""coldstart: the first response through the gateway for a function at zero replicas.

Why: scale to zero is only free if waking up is fast. Each trial scales the function to zero
(through the gateway's scale API), waits until its sandbox is gone, then times one invocation:
the gateway holds it and reports the demand on its stream, the operator's autoscaler scales the
function from 0 to 1, the operator creates and binds a Sandbox, the sidecar hot-plugs it, the
endpoints controller publishes it and the gateway releases the request. Baseline, same run:
warm invocations of the same function through the same gateway. Target (DESIGN.md): from zero
≤ 100 ms for namespace isolation.
"""

from __future__ import annotations

import asyncio
import time

from bench.cluster import BenchCluster
from bench.common import Report, ms, percentile
from bench.gateway import ECHO, Gateway, connect

TRIALS = 20
WARM = 50


def _at_zero(gw: Gateway, name: str, timeout: float = 60) -> None:
    resp = gw.call("PUT", f"/{name}/scale", json={"replicas": 0})
    if resp.status_code != 200:
        raise RuntimeError(f"scaling {name} to zero: {resp.text}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        gone = not gw.call("GET", f"/{name}/sandboxes").json()["items"]
        endpoints = gw.call("GET", f"/{name}/endpoints").json()["status"]
        if gone and not endpoints["ready"] and not endpoints["notReady"]:
            return
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not reach zero within {timeout}s")


def _invoke(gw: Gateway, name: str) -> float:
    started = time.perf_counter()
    resp = gw.call("POST", f"/{name}:invoke", data=b'{"cold":true}')
    elapsed = time.perf_counter() - started
    if resp.status_code != 200:
        raise RuntimeError(f"invoking {name}: {resp.status_code} {resp.text}")
    return elapsed


def _measure(bench: BenchCluster) -> tuple[list[float], list[float]]:
    gw = connect(bench)
    # Fixed replicas (no autoscaling): only the activator and this benchmark move the scale.
    gw.create("cold", ECHO, replicas=0, concurrency=16)
    _invoke(gw, "cold")  # first-ever start: code fetch and gateway caches, not measured
    cold = []
    for _ in range(TRIALS):
        _at_zero(gw, "cold")
        cold.append(_invoke(gw, "cold"))
    warm = [_invoke(gw, "cold") for _ in range(WARM)]
    return cold, warm


async def run() -> Report:
    report = Report("coldstart")
    with BenchCluster() as bench:
        cold, warm = await asyncio.to_thread(_measure, bench)
    report.results["from_zero_p50_ms"] = ms(percentile(cold, 50))
    report.results["from_zero_p99_ms"] = ms(percentile(cold, 99))
    report.results["trials"] = len(cold)
    report.baselines["warm_p50_ms"] = ms(percentile(warm, 50))
    report.ratios["from_zero_p50_over_warm"] = (
        report.results["from_zero_p50_ms"] / report.baselines["warm_p50_ms"]
    )
    return report
