"""scale: 500, 2,000 and 5,000 namespace-mode sandboxes over 25 pool pods, apply to all Ready.

Why: one size says what Nest costs; only a curve says how the cost grows with the work, which is
what decides whether a cluster can hold ten times as many functions. Each size N is applied as
users would (`kubectl apply` of N/100 SandboxDeployments of 100 replicas, each its own trivial
function, one tenant namespace) on a pool of the benchmark's own (bench.scale_pool), and
measured from the apply until the sum of `availableReplicas` is N:

- all_ready_s_N (and half_ready_s_N: the tail is where a stall shows);
- object_writes_per_sandbox_N: every API write request that is not an Event (sandboxes and
  their status and binding, replica sets, endpoints, Leases, ...), from the API server's own
  `apiserver_request_total` (bench.e2e.writes_by_resource), per sandbox; event_writes_per_sandbox_N
  the Event writes; sandbox_writes_per_sandbox_N the writes to Sandboxes alone (e2e's figure);
- operator_cpu_s_N (user+system of the leader's process over the window, psutil on this host)
  and operator_rss_kb_per_sandbox_N: (peak RSS in the window - RSS before the first size) / N.
  CPython seldom returns freed memory, so the peak starts from whatever the operator held before
  (an earlier run's high-water mark hides a small size's growth);
  `operator_rss_kb_per_extra_sandbox_<largest>_vs_<smallest>`, the slope between two sizes'
  peaks, is the marginal memory of one sandbox free of that history;
- sidecar_cpu_s_N summed over the pool's sidecars, apiserver_cpu_s_N, etcd_cpu_s_N, and
  host_cpu_busy_N (fraction of both cores busy: a stall at 1.0 is the machine, not Nest);
- etcd_db_bytes_N (`etcd_mvcc_db_total_size_in_bytes`, which only grows until a defrag) and
  etcd_db_in_use_bytes_N after all Ready.

The cost per sandbox is the operator's CPU seconds per sandbox (the component whose work grows
with the number of objects it watches); `cost_per_sandbox_<largest>_over_<smallest>` divides the
largest size's by the smallest's (goal at most 1.3). Goals as issue 14 states them are ratios
`*_over_goal_*` (at most 1 meets the goal). Baseline, same run, after the sizes (so that bare
Sandboxes never sit in the operator's memory while it is measured): creating N bare Sandboxes of
an unserved pool straight through the API (16 threads), the floor of any controller's writes of
N objects (a creation the webhook timed out is tried again, raw_create_webhook_retries_N times).
Between sizes every object is deleted and the namespace waited empty.

A size that does not finish (no sandbox became Ready for NEST_SCALE_STALL_S, or its deadline,
60 s + 100 ms per sandbox, passed) is reported with `stalled_N` = 1, where its sandboxes stood
(created, bound, Running), and the larger sizes are not tried. NEST_SCALE_SIZES, NEST_SCALE_PODS,
NEST_SCALE_PER_DEPLOYMENT change the sizes, the pool and the spread.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psutil
import yaml
from kubernetes.client.exceptions import ApiException

from bench import scale_pool
from bench.chaos_faults import container_process, operator_leader
from bench.cluster import BenchCluster
from bench.common import Report
from bench.e2e import _events_by_source, writes_by_resource
from crds import constants as c
from nest_cluster import ports as portmod
from nest_cluster.control_plane import ControlPlane

HANDLER = "def handler(event, context):\n    return {{'function': {index}, 'event': event}}\n"
STALL_S = float(os.environ.get("NEST_SCALE_STALL_S", "60"))
RAW_CREATE_ATTEMPTS = 3  # per bare Sandbox of the baseline (raw_creates)
POLL_S = 0.25  # resolution of all_ready_s; a list of N/100 SandboxDeployments per poll
ETCD_METRICS = (
    "etcd_mvcc_db_total_size_in_bytes",
    "etcd_mvcc_db_total_size_in_use_in_bytes",
    "etcd_debugging_mvcc_keys_total",
)
GOALS = {
    "all_ready_s": 60.0,
    "cost_growth": 1.3,
    "object_writes": 3.0,
    "event_writes": 0.5,
    "operator_rss_kb": 10.0,
}


def parse_sizes(text: str) -> list[int]:
    """ "500,2000,5000" as sorted distinct positive sizes."""
    sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    if not sizes or sizes[0] <= 0:
        raise ValueError(f"NEST_SCALE_SIZES wants positive sizes, got {text!r}")
    return sizes


def split(n: int, per: int) -> list[int]:
    """N replicas as SandboxDeployments of at most `per` each, as even as can be."""
    count = -(-n // per)
    base, extra = divmod(n, count)
    return [base + (i < extra) for i in range(count)]


def deadline_s(n: int) -> float:
    return 60 + 0.1 * n


def deployments(namespace: str, pool: str, n: int, per: int) -> list[dict[str, Any]]:
    """The SandboxDeployments of one size: `fn-<n>-<i>`, each a function of its own."""
    docs = []
    for index, replicas in enumerate(split(n, per)):
        name = f"fn-{n}-{index:03d}"
        labels = {"app": name}
        function = {
            "handler": "main:handler",
            "isolation": "namespace",
            "resources": {
                "memory": f"{scale_pool.SANDBOX_MEMORY_MI}Mi",
                "cpu": f"{scale_pool.SANDBOX_CPU_M}m",
            },
            "source": {"inline": {"main.py": HANDLER.format(index=index)}},
        }
        docs.append(
            {
                "apiVersion": c.API_VERSION,
                "kind": "SandboxDeployment",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {"function": function, "pool": pool},
                    },
                },
            }
        )
    return docs


def parse_metrics(text: str, names: Sequence[str] = ETCD_METRICS) -> dict[str, float]:
    """Unlabelled samples of `names` from a Prometheus text exposition."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*) (\S+)$", line)
        if match and match[1] in names:
            found[match[1]] = float(match[2])
    return found


@dataclass
class SizeFigures:
    """What one size measured, raw; `size_results` turns it into report keys."""

    n: int
    all_ready_s: float | None = None  # None: it stalled
    half_ready_s: float | None = None
    ready: int = 0
    window_s: float = 0.0
    writes_before: dict[str, float] = field(default_factory=dict)
    writes_after: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # operator, sidecar, apiserver, etcd
    host_busy: float = 0.0
    operator_peak_rss: int = 0
    operator_base_rss: int = 0
    lost_processes: dict[str, float] = field(default_factory=dict)  # died in the window, by who
    etcd: dict[str, float] = field(default_factory=dict)
    census: dict[str, float] = field(default_factory=dict)
    events: dict[str, float] = field(default_factory=dict)  # Event objects by source, new ones
    event_occurrences: dict[str, float] = field(default_factory=dict)  # their `count`s: writes


def write_delta(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    """Writes in the window by key, zero ones dropped."""
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    return {k: v for k, v in delta.items() if v}


def size_results(f: SizeFigures) -> dict[str, float]:
    """One size's figures as `results` keys suffixed with the size."""
    n, out = f.n, {}
    delta = write_delta(f.writes_after, f.writes_before)
    by_resource = {k: v for k, v in delta.items() if " " not in k}
    events = by_resource.get("events", 0.0)
    if f.all_ready_s is not None:
        out["all_ready_s"] = f.all_ready_s
    else:
        out["stalled"] = 1.0
    if f.half_ready_s is not None:
        out["half_ready_s"] = f.half_ready_s
    out["ready"] = float(f.ready)
    out["window_s"] = f.window_s
    out["object_writes_per_sandbox"] = (sum(by_resource.values()) - events) / n
    out["event_writes_per_sandbox"] = events / n
    out["sandbox_writes_per_sandbox"] = by_resource.get(c.SANDBOX_PLURAL, 0.0) / n
    for who, seconds in f.cpu.items():
        out[f"{who}_cpu_s"] = seconds
    out["operator_cpu_ms_per_sandbox"] = 1000 * f.cpu.get("operator", 0.0) / n
    out["operator_peak_rss_kb"] = f.operator_peak_rss / 1024
    out["operator_rss_kb_per_sandbox"] = (f.operator_peak_rss - f.operator_base_rss) / 1024 / n
    out["host_cpu_busy"] = f.host_busy
    for who, lost in f.lost_processes.items():
        if lost:
            out[f"{who}_processes_lost"] = lost
    if "etcd_mvcc_db_total_size_in_bytes" in f.etcd:
        out["etcd_db_bytes"] = f.etcd["etcd_mvcc_db_total_size_in_bytes"]
    if "etcd_mvcc_db_total_size_in_use_in_bytes" in f.etcd:
        out["etcd_db_in_use_bytes"] = f.etcd["etcd_mvcc_db_total_size_in_use_in_bytes"]
    out.update(f.census)
    results = {f"{key}_{n}": value for key, value in out.items()}
    for key, value in sorted(delta.items()):  # where the writes go: "writes_per_sandbox_N VERB r"
        if " " in key:
            results[f"writes_per_sandbox_{n} {key}"] = value / n
    for key, value in sorted(f.events.items()):
        results[f"objects_per_sandbox_{n} {key}"] = value / n
    for key, value in sorted(f.event_occurrences.items()):  # whose Events they are
        results[f"occurrences_per_sandbox_{n} {key}"] = value / n
    return results


def ratios(
    results: Mapping[str, float], baselines: Mapping[str, float], sizes: Sequence[int]
) -> dict[str, float]:
    """Growth of the cost per sandbox, each size against its baseline, and the goals."""
    out: dict[str, float] = {}
    done = [n for n in sizes if f"all_ready_s_{n}" in results]
    for n in done:
        raw = baselines.get(f"raw_create_s_{n}")
        if raw:
            out[f"all_ready_over_raw_create_{n}"] = results[f"all_ready_s_{n}"] / raw
    if len(done) >= 2:
        small, large = done[0], done[-1]
        before = results[f"operator_cpu_s_{small}"] / small
        if before > 0:
            growth = results[f"operator_cpu_s_{large}"] / large / before
            out[f"cost_per_sandbox_{large}_over_{small}"] = growth
            out["cost_per_sandbox_growth_over_goal_1_3x"] = growth / GOALS["cost_growth"]
        # The peak RSS only grows, from whatever the operator held before: the slope between
        # two sizes is the marginal memory of a sandbox, free of that history.
        extra = results[f"operator_peak_rss_kb_{large}"] - results[f"operator_peak_rss_kb_{small}"]
        out[f"operator_rss_kb_per_extra_sandbox_{large}_vs_{small}"] = extra / (large - small)
    if done:
        large = done[-1]
        out[f"all_ready_s_{large}_over_goal_60s"] = results[f"all_ready_s_{large}"] / 60.0
        for key, goal, label in (
            ("object_writes_per_sandbox", GOALS["object_writes"], "3"),
            ("event_writes_per_sandbox", GOALS["event_writes"], "0_5"),
            ("operator_rss_kb_per_sandbox", GOALS["operator_rss_kb"], "10kb"),
        ):
            out[f"{key}_{large}_over_goal_{label}"] = results[f"{key}_{large}"] / goal
    return out


def census(sandboxes: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Where the sandboxes of a size stand: created, bound to a pod, Running, the fullest pod."""
    pods = Counter(str(s["spec"].get("podName")) for s in sandboxes if s["spec"].get("podName"))
    running = sum((s.get("status") or {}).get("phase") == "Running" for s in sandboxes)
    return {
        "sandboxes_created": float(len(sandboxes)),
        "sandboxes_bound": float(sum(pods.values())),
        "sandboxes_running": float(running),
        "pods_used": float(len(pods)),
        "most_sandboxes_on_a_pod": float(max(pods.values(), default=0)),
    }


# --- I/O: the cluster and this host ---------------------------------------------------------


def etcd_port() -> int | None:
    """etcd's client port from the local cluster's record (None on another cluster)."""
    if os.environ.get("NEST_KUBECONFIG"):
        return None
    ports = portmod.recorded_ports(json.loads(ControlPlane().paths.config.read_text()))
    return ports.etcd_client if ports else None


def etcd_metrics(port: int | None) -> dict[str, float]:
    if port is None:
        return {}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return parse_metrics(answer.read().decode())


def _list(bench: BenchCluster, plural: str, **kw: Any) -> dict[str, Any]:
    listed: Any = bench.custom.list_namespaced_custom_object(
        c.GROUP, c.VERSION, bench.namespace, plural, **kw
    )
    return dict(listed)


def event_occurrences(bench: BenchCluster) -> dict[str, float]:
    """The namespace's Events' `count`s by "events source reason": how many things each source
    reported (a repeated Event is one object whose count grows; writes may batch repetitions),
    which says whose Events the Event writes are."""
    listed: Any = bench.core.list_namespaced_event(bench.namespace)
    counts: dict[str, float] = {}
    for event in listed.items:
        key = f"events {event.source.component if event.source else ''} {event.reason}"
        counts[key] = counts.get(key, 0.0) + float(event.count or 1)
    return counts


def available(bench: BenchCluster) -> int:
    items = _list(bench, c.DEPLOYMENT_PLURAL)["items"]
    return sum(int((d.get("status") or {}).get("availableReplicas") or 0) for d in items)


def clear(bench: BenchCluster, timeout: float = 900) -> None:
    """Delete every Nest object of the namespace and wait until none is left. Re-issued while
    anything remains: a replica set may re-create a sandbox before it sees its own deletion."""
    plurals = (c.DEPLOYMENT_PLURAL, c.REPLICASET_PLURAL, c.SANDBOX_PLURAL, c.ENDPOINTS_PLURAL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in plurals if _list(bench, p, limit=1)["items"]]
        if not left:
            return
        for plural in left:
            try:
                bench.custom.delete_collection_namespaced_custom_object(
                    c.GROUP, c.VERSION, bench.namespace, plural, propagation_policy="Background"
                )
            except ApiException as err:  # 504: thousands of deletes outlast the request's
                if err.status not in (500, 504):  # timeout, and go on on the server
                    raise
        time.sleep(5)  # polling the deletion (finalizers: the sidecars stop each sandbox)
    raise RuntimeError(f"namespace {bench.namespace} not empty after {timeout:.0f}s")


def raw_creates(bench: BenchCluster, n: int, unserved: str) -> tuple[float, int]:
    """Seconds to create N bare Sandboxes (never bound) through the API, 16 at a time, and how
    many creations were tried again: the API server gives up on a webhook after its 5 s
    timeout (500 "failed calling webhook"), and a baseline lost to one slow answer in thousands
    (as the session-7 run's was) measures nothing."""
    spec = deployments(bench.namespace, unserved, 1, 1)[0]["spec"]["template"]["spec"]
    retried: list[int] = []  # one item per retry (list.append is atomic across the threads)

    def create(i: int) -> None:
        body = {
            "apiVersion": c.API_VERSION,
            "kind": "Sandbox",
            "metadata": {"name": f"raw-{i}"},
            "spec": spec,
        }
        for attempt in range(RAW_CREATE_ATTEMPTS):
            try:
                bench.custom.create_namespaced_custom_object(
                    c.GROUP, c.VERSION, bench.namespace, c.SANDBOX_PLURAL, body
                )
                return
            except ApiException as err:
                webhook = err.status == 500 and "failed calling webhook" in str(err.body)
                # A retry after a timeout may find the first attempt stored after all.
                if err.status == 409 and attempt > 0:
                    return
                if not webhook or attempt == RAW_CREATE_ATTEMPTS - 1:
                    raise
                retried.append(i)

    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(create, range(n)))
    return time.perf_counter() - started, len(retried)


def wait_ready(bench: BenchCluster, f: SizeFigures, started: float) -> None:
    """Poll until N are available, or no progress for STALL_S, or the size's deadline."""
    deadline, best, progressed = started + deadline_s(f.n), -1, started
    while True:
        now = time.perf_counter()
        f.ready = available(bench)
        if f.half_ready_s is None and 2 * f.ready >= f.n:
            f.half_ready_s = now - started
        if f.ready >= f.n:
            f.all_ready_s = now - started
            return
        if f.ready > best:
            best, progressed = f.ready, now
        if now - progressed > STALL_S or now > deadline:
            return
        time.sleep(POLL_S)  # polling the outcome being measured, bounded by the deadline


def measure(
    bench: BenchCluster,
    pool: str,
    n: int,
    per: int,
    procs: Mapping[str, list[Any]],
    base_rss: int,
    port: int | None,
) -> SizeFigures:
    f = SizeFigures(n=n, operator_base_rss=base_rss)
    f.writes_before = writes_by_resource(bench)
    events_before = _events_by_source(bench)
    occurrences_before = event_occurrences(bench)
    meters = {who: scale_pool.ProcessMeter(found) for who, found in procs.items()}
    docs = deployments(bench.namespace, pool, n, per)
    for meter in meters.values():
        meter.__enter__()
    cpu_before = psutil.cpu_times()
    started = time.perf_counter()
    try:
        bench.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
        wait_ready(bench, f, started)
    finally:
        f.window_s = time.perf_counter() - started
        for meter in meters.values():
            meter.__exit__()
    f.host_busy = scale_pool.busy(cpu_before, psutil.cpu_times())
    f.writes_after = writes_by_resource(bench)
    f.cpu = {who: meter.cpu() for who, meter in meters.items()}
    f.operator_peak_rss = meters["operator"].peak_rss
    f.lost_processes = {who: float(len(meter.lost)) for who, meter in meters.items()}
    f.etcd = etcd_metrics(port)
    f.census = census(_list(bench, c.SANDBOX_PLURAL)["items"])
    f.events = write_delta(_events_by_source(bench), events_before)
    f.event_occurrences = write_delta(event_occurrences(bench), occurrences_before)
    return f


def log(message: str) -> None:
    """Progress on stderr: where a long run spends its time, and where it stops."""
    print(f"scale {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def _measure_size(
    bench: BenchCluster, report: Report, pool: str, members: Sequence[str], n: int, per: int,
    port: int | None,
) -> SizeFigures:  # fmt: skip
    leader, _ = operator_leader(bench.core)
    operator = container_process(leader["metadata"]["name"], "nest-operator")
    if operator is None:
        raise RuntimeError("no nest-operator process of the leader on this host")
    if "operator_base_rss_kb" not in report.results:  # before any sandbox of this benchmark
        report.results["operator_base_rss_kb"] = operator.memory_info().rss / 1024
    procs = {
        "operator": [operator],
        "sidecar": scale_pool.processes(members, "nest-sidecar"),
        "apiserver": scale_pool.host_process("kube-apiserver"),
        "etcd": scale_pool.host_process("etcd"),
    }
    report.results[f"sidecars_found_{n}"] = len(procs["sidecar"])
    base = int(report.results["operator_base_rss_kb"] * 1024)
    log(f"{n}: apply")
    figures = measure(bench, pool, n, per, procs, base, port)
    log(f"{n}: {figures.ready}/{n} available after {figures.window_s:.1f}s")
    report.results.update(size_results(figures))
    log(f"{n}: results so far {json.dumps(report.results)}")  # a run cut short still tells
    return figures


def _measure_all(bench: BenchCluster, report: Report, sizes: Sequence[int]) -> None:
    """Every size on a fresh pool, then the raw-create baselines (after, so that the bare
    Sandboxes never sit in the operator's memory while it is measured)."""
    pods = int(os.environ.get("NEST_SCALE_PODS", "25"))
    per = int(os.environ.get("NEST_SCALE_PER_DEPLOYMENT", "100"))
    name = f"scale-{uuid.uuid4().hex[:6]}"
    pool = scale_pool.ScalePool(bench.api, name, pods, scale_pool.per_pod_capacity(sizes[-1], pods))
    report.results["pool_pods"] = pods
    report.results["max_sandboxes_per_pod"] = pool.max_sandboxes
    port = etcd_port()
    measured = []
    try:
        log(f"pool {name}: {pods} pods")
        pool.create()
        started = time.perf_counter()
        members = pool.wait_ready(timeout=120 + 12 * pods)
        report.results["pool_ready_s"] = time.perf_counter() - started
        for n in sizes:
            figures = _measure_size(bench, report, name, members, n, per, port)
            measured.append(n)
            started = time.perf_counter()
            clear(bench)
            report.results[f"clear_s_{n}"] = time.perf_counter() - started
            log(f"{n}: cleared in {report.results[f'clear_s_{n}']:.1f}s")
            if figures.all_ready_s is None:
                break  # a larger size would stall at least as early
        unserved = bench.unserved_pool("scale-raw")
        for n in measured:
            seconds, retried = raw_creates(bench, n, unserved)
            report.baselines[f"raw_create_s_{n}"] = seconds
            report.baselines[f"raw_create_webhook_retries_{n}"] = retried
            log(f"{n}: raw creates in {report.baselines[f'raw_create_s_{n}']:.1f}s")
            clear(bench)
    finally:
        try:
            log("cleanup")
            clear(bench)
        finally:
            pool.delete()
            log("pool deleted")


async def run() -> Report:
    report = Report("scale")
    sizes = parse_sizes(os.environ.get("NEST_SCALE_SIZES", "500,2000,5000"))
    with BenchCluster() as bench:
        try:
            await asyncio.to_thread(_measure_all, bench, report, sizes)
        except Exception as err:  # the sizes measured so far are still the report
            log(f"stopped by {type(err).__name__}: {err}")
            report.results["failed"] = 1.0
    report.ratios.update(ratios(report.results, report.baselines, sizes))
    return report
