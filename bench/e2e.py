"""e2e: `kubectl apply` of a 200-replica SandboxDeployment until every sandbox is Ready.

Why: this is the whole system at once — the operator's deployment, replica set and scheduler
controllers, the sidecars hot-plugging, the status writes — on the real API server with the pool
from deploy/. API writes are counted from the API server's own request metrics
(`apiserver_request_total`), so nothing is estimated. Baseline, same run: creating the same
number of bare Sandbox objects straight through the API, the write floor any controller pays.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import yaml
from kubernetes import watch

from bench.cluster import BenchCluster
from bench.common import Report
from crds.constants import GROUP, SANDBOX_PLURAL, VERSION

# NEST_E2E_REPLICAS: fewer, when other work on a shared cluster holds part of the pool
# (per-sandbox write counts do not depend on the number; the time figures do).
REPLICAS = int(os.environ.get("NEST_E2E_REPLICAS", "200"))
# NEST_E2E_ISOLATION=subprocess: when other namespaces' namespace-mode sandboxes hold every pod
# (TenantIsolation keeps those apart); the write counts are the same for both modes.
ISOLATION = os.environ.get("NEST_E2E_ISOLATION", "namespace")
HANDLER = "def handler(event, context):\n    return event\n"
WRITE_VERBS = ("POST", "PATCH", "PUT", "DELETE")
_SAMPLE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")


def deployment(namespace: str) -> dict[str, Any]:
    labels = {"app": "e2e"}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SandboxDeployment",
        "metadata": {"name": "e2e", "namespace": namespace},
        "spec": {
            "replicas": REPLICAS,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "function": {
                        "handler": "main:handler",
                        "isolation": ISOLATION,
                        "resources": {"memory": "16Mi", "cpu": "10m"},
                        "source": {"inline": {"main.py": HANDLER}},
                    }
                },
            },
        },
    }


def writes_by_resource(bench: BenchCluster) -> dict[str, float]:
    """Write requests the API server has served so far, by resource (subresources folded in)
    and by "VERB resource[/subresource]" (the keys with a space: where the writes go)."""
    text = bench.kubectl("get", "--raw", "/metrics")
    counts: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
        if labels.get("verb") in WRITE_VERBS:
            resource, value = labels.get("resource", ""), float(match["value"])
            counts[resource] = counts.get(resource, 0.0) + value
            sub = labels.get("subresource", "")
            detail = f"{labels['verb']} {resource}" + (f"/{sub}" if sub else "")
            counts[detail] = counts.get(detail, 0.0) + value
    return counts


def _delta(after: dict[str, float], before: dict[str, float], resource: str) -> float:
    return after.get(resource, 0.0) - before.get(resource, 0.0)


def _available(bench: BenchCluster) -> int:
    d: Any = bench.custom.get_namespaced_custom_object(
        GROUP, VERSION, bench.namespace, "sandboxdeployments", "e2e"
    )
    return int((d.get("status") or {}).get("availableReplicas", 0))


def _raw_creates(bench: BenchCluster) -> float:
    body = deployment(bench.namespace)["spec"]["template"]["spec"]
    unserved = bench.unserved_pool("raw")

    def create(i: int) -> None:
        bench.custom.create_namespaced_custom_object(
            GROUP, VERSION, bench.namespace, SANDBOX_PLURAL,
            {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Sandbox",
             "metadata": {"name": f"raw-{i}"}, "spec": {**body, "pool": unserved}},
        )  # fmt: skip

    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(create, range(REPLICAS)))
    return time.perf_counter() - started


class Stages:
    """When the last sandbox was created, bound and Running, from a watch: where time goes."""

    def __init__(self, bench: BenchCluster) -> None:
        self.bench = bench
        self.created: dict[str, float] = {}
        self.bound: dict[str, float] = {}
        self.running: dict[str, float] = {}
        self.watch = watch.Watch()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with contextlib.suppress(Exception):  # the stream is cut when the benchmark ends
            for event in self.watch.stream(
                self.bench.custom.list_namespaced_custom_object,
                GROUP, VERSION, self.bench.namespace, SANDBOX_PLURAL,
            ):  # fmt: skip
                obj, now = event["object"], time.perf_counter()
                name = obj["metadata"]["name"]
                self.created.setdefault(name, now)
                if obj["spec"].get("podName"):
                    self.bound.setdefault(name, now)
                if (obj.get("status") or {}).get("phase") == "Running":
                    self.running.setdefault(name, now)

    def last(self, table: dict[str, float], started: float) -> float:
        return max(table.values(), default=started) - started


def _measure(bench: BenchCluster) -> dict[str, float]:
    before = writes_by_resource(bench)
    stages = Stages(bench)
    stages.thread.start()
    started = time.perf_counter()
    bench.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(deployment(bench.namespace)))
    deadline = started + 120
    while _available(bench) < REPLICAS:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"only {_available(bench)}/{REPLICAS} ready after 120s")
        time.sleep(0.02)  # polling the outcome being measured, bounded by the deadline
    all_ready = time.perf_counter() - started
    stages.watch.stop()
    after = writes_by_resource(bench)
    events = _events_by_source(bench)
    return {
        "all_ready_s": all_ready,
        "all_created_s": stages.last(stages.created, started),
        "all_bound_s": stages.last(stages.bound, started),
        "all_running_s": stages.last(stages.running, started),
        "sandbox_writes": _delta(after, before, "sandboxes"),
        "event_writes": _delta(after, before, "events"),
        "all_writes": sum(v for k, v in after.items() if " " not in k)
        - sum(v for k, v in before.items() if " " not in k),
        **{k: _delta(after, before, k) for k in after if " " in k and _delta(after, before, k)},
        **events,
    }


def _events_by_source(bench: BenchCluster) -> dict[str, float]:
    """The namespace's Event objects by "events source reason": who writes the Events."""
    listed: Any = bench.core.list_namespaced_event(bench.namespace)
    counts: dict[str, float] = {}
    for event in listed.items:
        key = f"events {event.source.component if event.source else ''} {event.reason}"
        counts[key] = counts.get(key, 0.0) + 1
    return counts


async def run() -> Report:
    report = Report("e2e")
    with BenchCluster() as bench:
        pods = bench.deploy()
        figures = await asyncio.to_thread(_measure, bench)
        raw = await asyncio.to_thread(_raw_creates, bench)
    report.results["replicas"] = REPLICAS
    report.results["pool_pods"] = len(pods)
    for stage in ("all_ready_s", "all_created_s", "all_bound_s", "all_running_s"):
        report.results[stage] = figures[stage]
    report.results["api_writes_per_sandbox"] = figures["sandbox_writes"] / REPLICAS
    report.results["event_writes_per_sandbox"] = figures["event_writes"] / REPLICAS
    report.results["all_writes_per_sandbox"] = figures["all_writes"] / REPLICAS
    for key in sorted(k for k in figures if " " in k):  # e.g. "writes_per_sandbox PATCH events"
        prefix = "objects_per_sandbox" if key.startswith("events ") else "writes_per_sandbox"
        report.results[f"{prefix} {key}"] = figures[key] / REPLICAS
    report.baselines["raw_create_s"] = raw
    report.ratios["all_ready_over_raw_create"] = figures["all_ready_s"] / raw
    report.ratios["all_ready_over_target_5s"] = figures["all_ready_s"] / 5.0
    return report
