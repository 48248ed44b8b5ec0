"""The scale benchmark's own pool (a Deployment of pool pods and its SandboxPool), and its meters.

Why a pool of its own: the scale curve needs 25 pool pods with room for 5,000 sandboxes, and the
shared pool (deploy/pool/, two pods, used by everybody's tests) must not be resized or filled.
So the benchmark makes a second pool exactly as a user would: a copy of deploy/pool/'s
Deployment under another name and labels (never `app.kubernetes.io/name=nest-pool`, so neither
the default SandboxPool, its PodDisruptionBudget nor the chaos harness sees these pods), selected
by a SandboxPool of its own that the benchmark's sandboxes name in `spec.pool`. The pods live in
nest-system because that is where the sidecar's ServiceAccount, its Lease Role and the data-plane
key Secret are; everything is deleted at the end, and the end waits until the pods are gone.

What the copy changes, and why:
- requests shrink to 20m/10m CPU per container: the local node has 2 allocatable cores, of
  which the shared system requests half, and 25 pods at deploy/'s 300m would not be scheduled.
  Limits (the capacity the sidecar declares) stay, so the scheduler's packing is unchanged;
- `max-sandboxes` is sized to the largest run with 25% headroom, and the runtime's memory limit
  raised if that many sandboxes of SANDBOX_MEMORY would not fit deploy/'s 2Gi;
- drain and grace periods shrink: the pods are emptied before they are deleted, and a 60 s
  drain of an empty pod would only make cleanup slow;
- the sidecar's liveness probe waits LIVENESS_DELAY_S before its first check: 25 pods starting
  at once on 2 cores took 80 s to answer, deploy/'s probe (no initial delay, 3 x 10 s) failed
  them all after about 20 s, and the local runner then left every sidecar stopping, never
  restarted and never Ready (see the report of issue 14's scale part).

ProcessMeter, host_process and busy are the host side: CPU seconds and peak RSS of processes
found with bench.chaos_faults.container_process (every pod is processes on this host) or by
name (the control plane's), and how busy both cores were.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
import yaml
from kubernetes import client

from bench.chaos_faults import container_process
from crds import constants as c

SYSTEM = "nest-system"
POOL_APP = "nest-scale-pool"
RUN_LABEL = f"bench.{c.GROUP}/scale-run"
TEMPLATE = Path(__file__).resolve().parents[1] / "deploy" / "pool" / "deployment.yaml"
SANDBOX_MEMORY_MI = 8  # per sandbox: 250 of them fit deploy/'s 2Gi runtime limit
SANDBOX_CPU_M = 5  # per sandbox: 250 of them fit its 2 CPUs
HEADROOM = 1.25
REQUESTS = {
    "runtime": {"cpu": "20m", "memory": "64Mi"},
    "sidecar": {"cpu": "10m", "memory": "32Mi"},
}
DRAIN = {"runtime": "7", "sidecar": "5"}  # NEST_DRAIN_SECONDS: runtime outlives the sidecar
GRACE_SECONDS = 15
LIVENESS_DELAY_S = 180


def per_pod_capacity(largest: int, pods: int) -> int:
    """`max-sandboxes` per pod: the largest run spread evenly, plus headroom for the scheduler's
    packing (it need not spread evenly), never below 10."""
    return max(10, math.ceil(largest * HEADROOM / pods))


def runtime_memory_limit_mi(max_sandboxes: int, template_mi: int = 2048) -> int:
    """The runtime's memory limit: deploy/'s, unless `max_sandboxes` of SANDBOX_MEMORY_MI do
    not fit in it (the sidecar declares the limit as the pod's memory capacity)."""
    return max(template_mi, max_sandboxes * SANDBOX_MEMORY_MI)


def pool_deployment(
    template: dict[str, Any], name: str, run: str, pods: int, max_sandboxes: int
) -> dict[str, Any]:
    """deploy/pool/'s Deployment as this benchmark's pool: its own name and labels, `pods`
    replicas, the pool label `name`, small requests (module docstring)."""
    body = copy.deepcopy(template)
    labels = {"app.kubernetes.io/name": POOL_APP, RUN_LABEL: run, c.POOL_LABEL: name}
    body["metadata"] = {"name": name, "namespace": SYSTEM, "labels": labels}
    spec = body["spec"]
    spec["replicas"] = pods
    spec["selector"] = {"matchLabels": {"app.kubernetes.io/name": POOL_APP, RUN_LABEL: run}}
    spec["strategy"] = {"type": "Recreate"}  # never rolled: no surge pod to account for
    meta = spec["template"]["metadata"]
    meta["labels"] = dict(labels)
    meta["annotations"] = {
        **meta.get("annotations", {}),
        c.MAX_SANDBOXES_ANNOTATION: str(max_sandboxes),
    }
    pod = spec["template"]["spec"]
    pod["terminationGracePeriodSeconds"] = GRACE_SECONDS
    for container in pod["containers"]:
        resources = container.setdefault("resources", {})
        resources["requests"] = dict(REQUESTS[container["name"]])
        for env in container.get("env", []):
            if env["name"] == "NEST_DRAIN_SECONDS":
                env["value"] = DRAIN[container["name"]]
        if "livenessProbe" in container:
            container["livenessProbe"]["initialDelaySeconds"] = LIVENESS_DELAY_S
        if container["name"] == "runtime":
            limit = runtime_memory_limit_mi(max_sandboxes)
            resources.setdefault("limits", {})["memory"] = f"{limit}Mi"
    return body


def sandbox_pool(name: str, run: str) -> dict[str, Any]:
    """The SandboxPool whose nodes are exactly this benchmark's pods (namespace mode only)."""
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.POOL_KIND,
        "metadata": {"name": name},
        "spec": {
            "podNamespace": SYSTEM,
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": POOL_APP, RUN_LABEL: run}},
            "isolation": ["namespace"],
            "tenancy": "Dedicated",
        },
    }


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    """The Deployment document of deploy/pool/deployment.yaml (the file also holds a PDB)."""
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == "Deployment":
            return dict(doc)
    raise RuntimeError(f"no Deployment in {path}")


def ready(pod: dict[str, Any]) -> bool:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return len(statuses) == 2 and all(s.get("ready") for s in statuses)


@contextlib.contextmanager
def _absent_is_fine() -> Iterator[None]:
    """A delete of something already gone (or never created) is done."""
    try:
        yield
    except client.exceptions.ApiException as err:
        if err.status != 404:
            raise


class ScalePool:
    """Create the pool, wait for every pod Ready, delete it and wait until its pods are gone."""

    def __init__(self, api: client.ApiClient, name: str, pods: int, max_sandboxes: int) -> None:
        self.api, self.name, self.run, self.pods = api, name, name, pods
        self.max_sandboxes = max_sandboxes
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.selector = f"{RUN_LABEL}={self.run}"

    def create(self) -> None:
        body = sandbox_pool(self.name, self.run)
        self.custom.create_cluster_custom_object(c.GROUP, c.VERSION, c.POOL_PLURAL, body)
        deployment = pool_deployment(
            load_template(), self.name, self.run, self.pods, self.max_sandboxes
        )
        self.apps.create_namespaced_deployment(SYSTEM, deployment)  # type: ignore[arg-type]

    def listed(self) -> list[dict[str, Any]]:
        found = self.core.list_namespaced_pod(SYSTEM, label_selector=self.selector)
        items: list[dict[str, Any]] = self.api.sanitize_for_serialization(found)["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    def wait_ready(self, timeout: float) -> list[str]:
        """Names of the pods once all `pods` are Ready (both containers)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = self.listed()
            if len(live) == self.pods and all(ready(p) for p in live):
                return sorted(p["metadata"]["name"] for p in live)
            time.sleep(1)  # polling pod readiness, bounded by the deadline
        up = sum(ready(p) for p in self.listed())
        raise RuntimeError(f"scale pool: {up}/{self.pods} pods Ready after {timeout:.0f}s")

    def delete(self, timeout: float = 300) -> None:
        """Delete the Deployment and the SandboxPool, and wait until no pod of it is left (its
        pods hold node requests and 127.0.0.x addresses the next benchmark may want)."""
        try:
            with _absent_is_fine():
                self.apps.delete_namespaced_deployment(
                    self.name, SYSTEM, propagation_policy="Foreground"
                )
        finally:  # the SandboxPool goes even if the Deployment delete failed
            with _absent_is_fine():
                self.custom.delete_cluster_custom_object(
                    c.GROUP, c.VERSION, c.POOL_PLURAL, self.name
                )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.core.list_namespaced_pod(SYSTEM, label_selector=self.selector)
            if not found.items:
                return
            time.sleep(1)  # polling the deletion, bounded by the deadline
        raise RuntimeError(f"scale pool {self.name}: pods still present after {timeout:.0f}s")


def processes(pods: Sequence[str], command: str) -> list[psutil.Process]:
    """The `command` container's main process of each pod (those found on this host)."""
    found = (container_process(pod, command) for pod in pods)
    return [p for p in found if p is not None]


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system + times.children_user + times.children_system)


class ProcessMeter:
    """CPU seconds and peak (summed) RSS of a set of processes over a window, sampled from a
    thread every `period` s. A process that dies is counted up to its last sample (`lost`
    says how many did: a restart in the window is a finding, not noise)."""

    def __init__(self, procs: Sequence[psutil.Process], period: float = 0.25) -> None:
        self.procs = list(procs)
        self.period = period
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.peak_rss = 0
        self.lost: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        rss = 0
        for proc in self.procs:
            if proc.pid in self.lost:
                continue
            try:
                with proc.oneshot():
                    cpu, rss = cpu_seconds(proc), rss + proc.memory_info().rss
            except psutil.Error:
                self.lost.add(proc.pid)
                continue
            self.first.setdefault(proc.pid, cpu)
            self.last[proc.pid] = cpu
        self.peak_rss = max(self.peak_rss, rss)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.sample()

    def __enter__(self) -> ProcessMeter:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def cpu(self) -> float:
        return sum(self.last[pid] - self.first[pid] for pid in self.last)


def host_process(name: str) -> list[psutil.Process]:
    """The control plane's own process (etcd, kube-apiserver) on this host."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if cmdline and os.path.basename(cmdline[0]) == name:
            found.append(proc)
    return found


def busy(before: Any, after: Any) -> float:
    """Fraction of all cores busy between two psutil.cpu_times() readings."""
    idle = (after.idle + after.iowait) - (before.idle + before.iowait)
    total = sum(after) - sum(before)
    return 1 - idle / total if total > 0 else 0.0
