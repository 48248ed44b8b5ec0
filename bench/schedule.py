"""schedule: pure scheduler decisions per second over 1,000 pool pods, assume step included.

Why: the operator schedules every sandbox itself; the target is 10,000 decisions/s over 1,000
pods in pure Python (kube-scheduler manages ~100-300 pods/s). Baseline, on the same input: a
naive scheduler that filters and scores by scanning every pod and every bound sandbox for each
decision, without aggregates or a scoring window, i.e. what one writes first. `pods_used` shows
what the window costs in density (fewer pods used is better).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from bench.common import Report, percentile
from nest_operator.scheduler import PoolPod, SandboxRequest, Scheduler, SchedulerCache

PODS = 1_000
SANDBOXES = 10_000
REPLICA_SETS = 200
MI = 1024 * 1024
LEASE_TTL = 40.0
NOW = 1_000_000.0


def _pods() -> list[PoolPod]:
    return [
        PoolPod(
            name=f"pool-{i:04d}",
            namespace="nest",
            uid=f"pod-uid-{i}",
            pool="default",
            ready=True,
            lease_renewed_at=NOW - 5,
            cordoned=False,
            memory=2048 * MI,
            cpu=2000,
            max_sandboxes=32,
            isolation=frozenset({"subprocess", "namespace"}),
        )
        for i in range(PODS)
    ]


def _requests() -> list[SandboxRequest]:
    rng = random.Random(7)  # fixed seed: the same input on every run
    requests = []
    for i in range(SANDBOXES):
        rs = i % REPLICA_SETS
        requests.append(
            SandboxRequest(
                name=f"sbx-{i}",
                namespace="default",
                uid=f"sbx-uid-{i}",
                pool="default",
                memory=rng.choice((32, 64, 128, 256)) * MI,
                cpu=rng.choice((25, 50, 100, 200)),
                isolation=rng.choice(("subprocess", "namespace")),
                code_digest=f"digest-{rs}",
                replica_set=f"rs-{rs}",
            )
        )
    return requests


def _fast(pods: list[PoolPod], requests: list[SandboxRequest]) -> tuple[list[float], int]:
    cache = SchedulerCache()
    for pod in pods:
        cache.set_pod(pod)
    scheduler = Scheduler()
    samples = []
    clock = time.perf_counter
    for request in requests:
        started = clock()
        decision = scheduler.schedule_and_assume(request, cache, NOW)
        samples.append(clock() - started)
        assert decision.scheduled, decision.message
    return samples, sum(1 for info in cache.pods() if info.count)


@dataclass
class _NaivePod:
    pod: PoolPod
    sandboxes: list[SandboxRequest] = field(default_factory=list)


def _naive_choose(request: SandboxRequest, pods: list[_NaivePod]) -> _NaivePod | None:
    best, best_score = None, -1
    for entry in pods:
        pod = entry.pod
        if pod.pool != request.pool or not pod.ready or pod.cordoned:
            continue
        if pod.lease_renewed_at is None or NOW - pod.lease_renewed_at > LEASE_TTL:
            continue
        if request.isolation not in pod.isolation:
            continue
        memory = sum(s.memory for s in entry.sandboxes)
        cpu = sum(s.cpu for s in entry.sandboxes)
        count = len(entry.sandboxes)
        if count >= pod.max_sandboxes or memory + request.memory > pod.memory:
            continue
        if cpu + request.cpu > pod.cpu:
            continue
        packing = (
            (memory + request.memory) * 100 // pod.memory
            + (cpu + request.cpu) * 100 // pod.cpu
            + (count + 1) * 100 // pod.max_sandboxes
        ) // 3
        same = sum(1 for s in entry.sandboxes if s.replica_set == request.replica_set)
        local = any(s.code_digest == request.code_digest for s in entry.sandboxes)
        score = min(100, packing) + 2 * (100 // (1 + same)) + (100 if local else 0)
        if score > best_score or (score == best_score and best and pod.name < best.pod.name):
            best, best_score = entry, score
    return best


def _naive(pods: list[PoolPod], requests: list[SandboxRequest]) -> tuple[list[float], int]:
    entries = [_NaivePod(pod) for pod in pods]
    samples = []
    clock = time.perf_counter
    for request in requests:
        started = clock()
        chosen = _naive_choose(request, entries)
        assert chosen is not None
        chosen.sandboxes.append(request)
        samples.append(clock() - started)
    return samples, sum(1 for entry in entries if entry.sandboxes)


async def run() -> Report:
    report = Report("schedule")
    pods, requests = _pods(), _requests()
    fast, fast_pods_used = _fast(pods, requests)
    naive, naive_pods_used = _naive(pods, requests)
    fast_rate = len(fast) / sum(fast)
    naive_rate = len(naive) / sum(naive)
    report.results = {
        "decisions_per_s": fast_rate,
        "p50_decision_us": percentile(fast, 50) * 1e6,
        "p99_decision_us": percentile(fast, 99) * 1e6,
        "pods_used": float(fast_pods_used),
        "pods": float(PODS),
        "sandboxes": float(SANDBOXES),
    }
    report.baselines = {
        "naive_decisions_per_s": naive_rate,
        "naive_p99_decision_us": percentile(naive, 99) * 1e6,
        "naive_pods_used": float(naive_pods_used),
    }
    report.ratios = {
        "decisions_per_s_over_naive": fast_rate / naive_rate,
        "pods_used_over_naive": fast_pods_used / naive_pods_used,
        "decisions_per_s_over_target": fast_rate / 10_000,
    }
    return report
