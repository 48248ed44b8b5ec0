"""hotplug-e2e: from the binding patch to Ready, as observed through the API server.

Why: `hotplug` measures the runtime alone; what a user waits for is the whole path — the
sidecar's watch hearing of the binding, fetching code, the runtime creating the sandbox, the
status write, and the watch event reporting Ready. Baseline, same run: the API server's own
round trip (a patch and the watch event it causes), the floor under any controller.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from kubernetes import watch

from bench.cluster import BenchCluster
from bench.common import Report, ms, percentile
from crds.constants import (
    GROUP,
    POD_UID_LABEL,
    POOL_LABEL,
    SANDBOX_PLURAL,
    SIDECAR_FINALIZER,
    VERSION,
)

N = 100
HANDLER = "def handler(event, context):\n    return event\n"


class ReadyWatch:
    """Records when each Sandbox (by name) is first seen Ready, and when any label appears."""

    def __init__(self, bench: BenchCluster) -> None:
        self.bench = bench
        self.ready: dict[str, float] = {}
        self.labelled: dict[str, float] = {}
        self.cond = threading.Condition()
        self._watch = watch.Watch()
        self.stopped = False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self._follow()
        except Exception:  # the stream is cut when the benchmark stops it
            if not self.stopped:
                raise

    def _follow(self) -> None:
        stream = self._watch.stream(
            self.bench.custom.list_namespaced_custom_object,
            GROUP, VERSION, self.bench.namespace, SANDBOX_PLURAL,
        )  # fmt: skip
        for event in stream:
            obj: dict[str, Any] = event["object"]
            now = time.perf_counter()
            name = obj["metadata"]["name"]
            conditions = (obj.get("status") or {}).get("conditions") or []
            ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
            with self.cond:
                if ready:
                    self.ready.setdefault(name, now)
                if "bench/touched" in (obj["metadata"].get("labels") or {}):
                    self.labelled.setdefault(name, now)
                self.cond.notify_all()

    def wait(self, table: dict[str, float], name: str, timeout: float = 60) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: name in table, timeout):
                raise RuntimeError(f"{name} not observed within {timeout}s")
            return table[name]

    def stop(self) -> None:
        self.stopped = True
        self._watch.stop()


def _sandbox(name: str, isolation: str, pool: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Sandbox",
        "metadata": {"name": name},
        "spec": {
            # A pool no pod serves: the operator leaves them unbound, the benchmark binds them.
            "pool": pool,
            "function": {
                "handler": "main:handler",
                "isolation": isolation,
                # Small, so 200 of them fit the one pool pod they are bound to.
                "resources": {"memory": "8Mi", "cpu": "5m"},
                "source": {"inline": {"main.py": HANDLER}},
            },
        },
    }


def _measure(bench: BenchCluster, seen: ReadyWatch, pod: dict[str, Any], mode: str) -> list[float]:
    ns, custom = bench.namespace, bench.custom
    names = [f"{mode[:3]}-{i}" for i in range(N)]
    pool = bench.unserved_pool(f"unserved-{mode[:3]}")
    for name in names:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, ns, SANDBOX_PLURAL, _sandbox(name, mode, pool)
        )
    binding = {  # as the scheduler binds: the sidecar's finalizer comes with the binding
        "metadata": {
            "labels": {POOL_LABEL: "default", POD_UID_LABEL: pod["metadata"]["uid"]},
            "finalizers": [SIDECAR_FINALIZER],
        },
        "spec": {"podName": pod["metadata"]["name"], "podNamespace": pod["metadata"]["namespace"]},
    }
    samples = []
    for name in names:
        started = time.perf_counter()
        custom.patch_namespaced_custom_object(GROUP, VERSION, ns, SANDBOX_PLURAL, name, binding)
        elapsed = seen.wait(seen.ready, name) - started
        if elapsed <= 0:
            raise RuntimeError(f"{name} was Ready before the benchmark bound it: not measurable")
        samples.append(elapsed)
    return samples


def _api_round_trip(bench: BenchCluster, seen: ReadyWatch, n: int = 50) -> list[float]:
    ns, custom = bench.namespace, bench.custom
    samples = []
    pool = bench.unserved_pool("unserved-rtt")
    for i in range(n):
        name = f"rtt-{i}"
        custom.create_namespaced_custom_object(
            GROUP, VERSION, ns, SANDBOX_PLURAL, _sandbox(name, "namespace", pool)
        )
        started = time.perf_counter()
        custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            ns,
            SANDBOX_PLURAL,
            name,
            {"metadata": {"labels": {"bench/touched": "1"}}},
        )
        samples.append(seen.wait(seen.labelled, name) - started)
    return samples


async def run() -> Report:
    report = Report("hotplug-e2e")
    with BenchCluster() as bench:
        pod = bench.deploy()[0]
        seen = ReadyWatch(bench)
        seen.thread.start()
        try:
            rtt = await asyncio.to_thread(_api_round_trip, bench, seen)
            for mode in ("namespace", "subprocess"):
                samples = await asyncio.to_thread(_measure, bench, seen, pod, mode)
                report.results[f"{mode}_p50_ms"] = ms(percentile(samples, 50))
                report.results[f"{mode}_p99_ms"] = ms(percentile(samples, 99))
        finally:
            seen.stop()
    report.results["n_per_mode"] = N
    report.baselines["api_patch_to_watch_p50_ms"] = ms(percentile(rtt, 50))
    report.baselines["api_patch_to_watch_p99_ms"] = ms(percentile(rtt, 99))
    for mode in ("namespace", "subprocess"):
        report.ratios[f"{mode}_p50_over_api_round_trip"] = (
            report.results[f"{mode}_p50_ms"] / report.baselines["api_patch_to_watch_p50_ms"]
        )
    return report
