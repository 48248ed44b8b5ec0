"""versus-pods: Nest against what users do without it, a Deployment + Service per function.

Why: every other benchmark compares Nest with a piece of itself; this one says what it buys. N
functions (NEST_VERSUS_N, default 50) are deployed on the same control plane, one after the
other, each setup alone on the cluster while it is measured: (a) one apps/v1 Deployment of one
minimal aiohttp pod plus a Service per function (the baseline); (b) Nest subprocess sandboxes;
(c) Nest namespace sandboxes, one SandboxDeployment of 1 replica per function. For each:

- memory per function: summed PSS (psutil memory_full_info) of every process involved. Pods:
  each pod's processes, its shim (the local node's containerd-shim) included. Nest: every
  process of each pool pod that hosts our sandboxes (runtime, zygote, sandboxes, sidecar, shims)
  split evenly over the sandboxes it hosts; the marginal figure (pool pods' PSS growth per
  function) is reported beside it. The operator and gateway are reported apart, not amortised:
  they serve every function of the cluster, as kube-controller-manager does for pods.
- apply to all answering: `kubectl apply` of the N objects until each answers an HTTP request.
  The local cluster has no kube-proxy, so pods are reached at their pod IP:port directly (what a
  Service would route to); Nest functions through the gateway, as users call them.
- API writes from the API server's request metrics, successful ones only, heartbeats (Leases,
  Node status) left out, counted until the writes settle.
- first response from zero, interleaved trials: the Deployment scaled 0 -> 1 until its
  Service's EndpointSlice lists the pod ready (its readiness probe passed) and it answers,
  against a Nest function at 0 replicas invoked through the gateway (the activator), as
  bench.coldstart does. (EndpointSlices, not Endpoints: see `_endpoint`.)
Everything is created in the benchmark's own namespaces, deleted at the end.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil
import requests
import yaml
from kubernetes import client

from bench import versus_pods_specs as specs
from bench.cluster import POOL_SELECTOR, BenchCluster
from bench.coldstart import _at_zero, _invoke
from bench.common import MB, Report, ms, percentile
from bench.gateway import ECHO, Gateway, connect
from crds.constants import GROUP, SANDBOX_PLURAL, VERSION

N = int(os.environ.get("NEST_VERSUS_N", "50"))
ZERO_TRIALS = int(os.environ.get("NEST_VERSUS_ZERO_TRIALS", "7"))
TIMEOUT = 300.0  # apply to all answering, either side
NODE_MARKER = "NEST_LOCAL_NODE"  # nest_cluster.runner.env: set on every container process
CONTROL_SELECTORS = ("app.kubernetes.io/name=nest-operator", "app.kubernetes.io/name=nest-gateway")

Figures = dict[str, float]


def _processes(pod_names: Iterable[str]) -> dict[str, list[psutil.Process]]:
    """Every live process of the named pods on this node: those the runner started for them
    (HOSTNAME is the pod name, NEST_LOCAL_NODE marks the runner's) and all their descendants
    (sandboxes may run with an environment of their own)."""
    wanted = set(pod_names)
    found: dict[str, dict[int, psutil.Process]] = {name: {} for name in wanted}
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
            pod = env.get("HOSTNAME", "")
            if pod not in wanted or NODE_MARKER not in env:
                continue
            found[pod][proc.pid] = proc
            for child in proc.children(recursive=True):
                found[pod][child.pid] = child
        except (psutil.Error, OSError):
            continue
    return {name: list(procs.values()) for name, procs in found.items()}


def _pss(procs: Iterable[psutil.Process]) -> int:
    total = 0
    for proc in procs:
        try:
            total += proc.memory_full_info().pss
        except (psutil.Error, OSError):  # exited between listing and reading: holds nothing
            continue
    return total


def _pod_names(bench: BenchCluster, namespace: str, selector: str) -> list[str]:
    listed: Any = bench.core.list_namespaced_pod(namespace, label_selector=selector)
    return [str(p.metadata.name) for p in listed.items if not p.metadata.deletion_timestamp]


def _apply(bench: BenchCluster, objects: list[dict[str, Any]]) -> None:
    bench.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(objects))


def _until_all_answer(names: list[str], answers: Callable[[str], bool], started: float) -> float:
    """Seconds from `started` until every function has answered once (one waiter each)."""
    deadline = started + TIMEOUT

    def wait(name: str) -> float:
        while not answers(name):
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{name} did not answer within {TIMEOUT:.0f}s")
            time.sleep(0.05)  # polling the outcome being measured, bounded by the deadline
        return time.perf_counter()

    with ThreadPoolExecutor(min(len(names), 32)) as pool:
        return max(pool.map(wait, names)) - started


def _get(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


class PodIPs:
    """Function name -> its pod's IP, refreshed from one pod list every 0.2 s while it runs
    (one list for everybody, not one per waiter: the pollers must not load the API server)."""

    def __init__(self, bench: BenchCluster) -> None:
        self.bench = bench
        self.ips: dict[str, str] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.done.is_set():
            listed: Any = self.bench.core.list_namespaced_pod(
                self.bench.namespace, label_selector=f"app={specs.APP_LABEL}"
            )
            for pod in listed.items:
                if pod.status.pod_ip and not pod.metadata.deletion_timestamp:
                    self.ips[pod.metadata.labels["function"]] = pod.status.pod_ip
            self.done.wait(0.2)

    def answers(self, name: str) -> bool:
        ip = self.ips.get(name)
        return bool(ip) and _get(f"http://{ip}:{specs.PORT}/")


def writes_by_resource(bench: BenchCluster) -> dict[str, float]:
    return specs.successful_writes(bench.kubectl("get", "--raw", "/metrics"))


def _settled_writes(bench: BenchCluster, before: dict[str, float]) -> dict[str, float]:
    """Workload writes since `before`, once they have stopped moving for 2 s (status updates
    trail the answers on both sides), or after 20 s."""
    last = specs.workload_writes(before, writes_by_resource(bench))
    deadline, quiet = time.monotonic() + 20, 0
    while time.monotonic() < deadline and quiet < 2:
        time.sleep(1)  # sampling the counters once a second, bounded by the deadline
        now = specs.workload_writes(before, writes_by_resource(bench))
        quiet = quiet + 1 if now == last else 0
        last = now
    return last


def _writes_figures(prefix: str, writes: dict[str, float], n: int) -> Figures:
    figures = {f"{prefix}_api_writes_per_function": sum(writes.values()) / n}
    for resource, count in sorted(writes.items()):
        figures[f"{prefix}_writes_per_function {resource}"] = count / n
    return figures


def _pods_phase(n: int) -> Figures:
    with BenchCluster() as bench:
        names = specs.function_names(n)
        objects = [o for name in names for o in specs.pod_objects(bench.namespace, name)]
        ips = PodIPs(bench)
        before = writes_by_resource(bench)
        started = time.perf_counter()
        ips.thread.start()
        _apply(bench, objects)
        answering = _until_all_answer(names, ips.answers, started)
        ips.done.set()
        writes = _settled_writes(bench, before)
        refused = _refused_endpoint_events(bench)
        writes["events"] = writes.get("events", 0.0) - refused
        pods = _pod_names(bench, bench.namespace, f"app={specs.APP_LABEL}")
        procs = _processes(pods)
        pss = sum(_pss(p) for p in procs.values())
        return {
            "pods_apply_to_answering_s": answering,
            "pods_memory_per_function_mb": pss / n / MB,
            "pods_processes_per_function": sum(len(p) for p in procs.values()) / n,
            **_writes_figures("pods", writes, n),
            "pods_refused_endpoints_event_writes_per_function": refused / n,
        }


def _refused_endpoint_events(bench: BenchCluster) -> float:
    """Event writes (a create, then one patch per repeat) of the endpoints controller saying
    the API server refused loopback addresses: an artefact of the local cluster, not a cost of
    pods anywhere else, so taken out of the pods' writes (and reported apart)."""
    listed: Any = bench.core.list_namespaced_event(bench.namespace)
    return float(sum(e.count or 1 for e in listed.items if e.reason == "FailedToUpdateEndpoint"))


def _pool_pods(bench: BenchCluster) -> list[str]:
    return _pod_names(bench, "nest-system", POOL_SELECTOR)


def _bound_counts(bench: BenchCluster, namespace: str) -> tuple[dict[str, int], dict[str, int]]:
    """Sandboxes per pool pod: ours (in `namespace`) and everybody's."""
    listed: Any = bench.custom.list_cluster_custom_object(GROUP, VERSION, SANDBOX_PLURAL)
    mine: dict[str, int] = {}
    hosted: dict[str, int] = {}
    for sbx in listed["items"]:
        pod = (sbx.get("spec") or {}).get("podName")
        if pod:
            hosted[pod] = hosted.get(pod, 0) + 1
            if sbx["metadata"]["namespace"] == namespace:
                mine[pod] = mine.get(pod, 0) + 1
    return mine, hosted


def _nest_phase(n: int, isolation: str) -> Figures:
    with BenchCluster() as bench:
        gw = connect(bench)
        names = specs.function_names(n)
        objects = [specs.sandbox_deployment(bench.namespace, name, isolation) for name in names]
        pool = _pool_pods(bench)
        pss_before = {pod: _pss(p) for pod, p in _processes(pool).items()}
        before = writes_by_resource(bench)
        started = time.perf_counter()
        _apply(bench, objects)
        answering = _until_all_answer(names, lambda name: _invokes(gw, name), started)
        writes = _settled_writes(bench, before)
        mine, hosted = _bound_counts(bench, bench.namespace)
        pss_after = {pod: _pss(p) for pod, p in _processes(pool).items()}
        pods = [specs.PoolPod(pss_after[p], mine.get(p, 0), hosted.get(p, 0)) for p in pool]
        grown = sum(pss_after[p] - pss_before.get(p, 0) for p in pool if mine.get(p))
        control = sum(_pss(procs) for procs in _processes(_control_pods(bench)).values())
        return {
            f"{isolation}_apply_to_answering_s": answering,
            f"{isolation}_memory_per_function_mb": specs.amortised_bytes(pods) / n / MB,
            f"{isolation}_marginal_memory_per_function_mb": grown / n / MB,
            f"{isolation}_pool_pods_used": float(len(mine)),
            f"{isolation}_bound_functions": float(sum(mine.values())),
            "nest_operator_and_gateway_pss_mb": control / MB,
            **_writes_figures(isolation, writes, n),
        }


def _control_pods(bench: BenchCluster) -> list[str]:
    return [pod for sel in CONTROL_SELECTORS for pod in _pod_names(bench, "nest-system", sel)]


def _invokes(gw: Gateway, name: str) -> bool:
    try:
        return gw.call("POST", f"/{name}:invoke", data=b'{"hello":"nest"}').status_code == 200
    except requests.RequestException:
        return False


def _pod_at_zero(bench: BenchCluster, apps: client.AppsV1Api, name: str) -> None:
    apps.patch_namespaced_deployment_scale(name, bench.namespace, {"spec": {"replicas": 0}})
    deadline = time.monotonic() + 120
    while _pod_names(bench, bench.namespace, f"function={name}") or _endpoint(bench, name):
        if time.monotonic() > deadline:
            raise RuntimeError(f"deployment {name} did not reach zero within 120s")
        time.sleep(0.05)  # polling the scale-down (not measured), bounded by the deadline


def _endpoint(bench: BenchCluster, name: str) -> str | None:
    """The first ready address the Service's EndpointSlices list: where kube-proxy routes.
    (Not Endpoints: the API server refuses loopback addresses there, so on the local cluster
    they stay empty; EndpointSlices, which kube-proxy reads since 1.19, accept them.)"""
    listed: Any = bench.custom.list_namespaced_custom_object(
        "discovery.k8s.io", "v1beta1", bench.namespace, "endpointslices",
        label_selector=f"kubernetes.io/service-name={name}",
    )  # fmt: skip
    for eps in listed["items"]:
        for endpoint in eps.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") and endpoint.get("addresses"):
                return str(endpoint["addresses"][0])
    return None


def _pod_from_zero(bench: BenchCluster, apps: client.AppsV1Api, name: str) -> float:
    started = time.perf_counter()
    apps.patch_namespaced_deployment_scale(name, bench.namespace, {"spec": {"replicas": 1}})
    deadline = started + 120
    while True:
        ip = _endpoint(bench, name)
        if ip and _get(f"http://{ip}:{specs.PORT}/"):
            return time.perf_counter() - started
        if time.perf_counter() > deadline:
            raise RuntimeError(f"deployment {name} not answering 120s after scaling to 1")
        time.sleep(0.02)  # polling the outcome being measured, bounded by the deadline


def _zero_phase(trials: int) -> tuple[list[float], list[float]]:
    """Interleaved from-zero trials, a pod then a Nest function, so noise hits both alike."""
    with BenchCluster() as bench:
        apps = client.AppsV1Api(bench.api)
        gw = connect(bench)
        gw.create("zero", ECHO, replicas=0, concurrency=16)
        _apply(bench, specs.pod_objects(bench.namespace, "zero", replicas=0))
        _invoke(gw, "zero")  # first-ever starts (code fetch, caches): not measured
        _pod_from_zero(bench, apps, "zero")
        pods, nest = [], []
        for _ in range(trials):
            _pod_at_zero(bench, apps, "zero")
            pods.append(_pod_from_zero(bench, apps, "zero"))
            _at_zero(gw, "zero")
            nest.append(_invoke(gw, "zero"))
        return pods, nest


def _distribution(prefix: str, samples: list[float]) -> Figures:
    figures = {
        f"{prefix}_p50_ms": ms(percentile(samples, 50)),
        f"{prefix}_p90_ms": ms(percentile(samples, 90)),
        f"{prefix}_min_ms": ms(min(samples)),
        f"{prefix}_max_ms": ms(max(samples)),
    }
    for i, sample in enumerate(samples):  # the distribution itself, for the report's plot
        figures[f"{prefix}_ms sample {i:02d}"] = ms(sample)
    return figures


def measure(n: int = N, trials: int = ZERO_TRIALS) -> Report:
    report = Report("versus-pods")
    report.baselines.update(_pods_phase(n))
    for isolation in ("subprocess", "namespace"):
        report.results.update(_nest_phase(n, isolation))
    pods, nest = _zero_phase(trials)
    report.baselines.update(_distribution("pods_from_zero", pods))
    report.results.update(_distribution("from_zero", nest))
    report.results["functions"] = n
    report.results["from_zero_trials"] = trials
    report.ratios.update(specs.ratios(report.results, report.baselines))
    report.ratios["operator_and_gateway_over_pods_total"] = specs.safe_ratio(
        report.results["nest_operator_and_gateway_pss_mb"],
        report.baselines["pods_memory_per_function_mb"] * n,
    )
    return report


async def run() -> Report:
    return await asyncio.to_thread(measure)
