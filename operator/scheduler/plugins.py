"""The scheduler's filter and score plugins, one small named class each.

Why: like kube-scheduler's framework, each concern (pool, health, capacity, isolation,
packing, spread, code locality) is a plugin that can be tested alone, reordered, weighted or
left out, instead of one scoring function nobody can reason about. Filters return None when the
pod fits or a short reason ("insufficient memory") that the framework counts into the
unschedulable message; scores return 0..100, higher is better.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from nest_operator.scheduler.cache import SchedulerCache
from nest_operator.scheduler.snapshot import PodInfo, SandboxRequest

MAX_SCORE = 100

NOT_IN_POOL = "in another pool"
NOT_READY = "not ready"
LEASE_EXPIRED = "lease expired"
CORDONED = "cordoned"
INSUFFICIENT_MEMORY = "insufficient memory"
INSUFFICIENT_CPU = "insufficient cpu"
TOO_MANY_SANDBOXES = "too many sandboxes"
ISOLATION_UNSUPPORTED = "isolation unsupported"


class PreFilterPlugin(Protocol):
    """Narrows the pods worth looking at before any per-pod filter runs."""

    name: str

    def candidates(self, request: SandboxRequest, cache: SchedulerCache) -> Sequence[PodInfo]:
        """The pods that may run `request`, sorted by name; the others fail with `reason`."""
        ...

    reason: str


class FilterPlugin(Protocol):
    name: str

    def filter(self, request: SandboxRequest, info: PodInfo, now: float) -> str | None:
        """None when `info` can run `request`, else why not."""
        ...


class ScorePlugin(Protocol):
    name: str

    def score(self, request: SandboxRequest, info: PodInfo) -> int:
        """0..MAX_SCORE: how good `info` is for `request`."""
        ...


class PoolMatch:
    """Only pods of the sandbox's pool: a pre-filter, since the cache already indexes by pool."""

    name = "PoolMatch"
    reason = NOT_IN_POOL

    def candidates(self, request: SandboxRequest, cache: SchedulerCache) -> Sequence[PodInfo]:
        return cache.pool(request.pool)


class PodReady:
    """The pod is Ready, its sidecar's Lease is fresh and nobody cordoned it."""

    name = "PodReady"

    def __init__(self, lease_ttl: float = 40.0) -> None:
        self.lease_ttl = lease_ttl

    def filter(self, request: SandboxRequest, info: PodInfo, now: float) -> str | None:
        pod = info.pod
        if not pod.ready:
            return NOT_READY
        if pod.lease_renewed_at is None or now - pod.lease_renewed_at > self.lease_ttl:
            return LEASE_EXPIRED
        if pod.cordoned:
            return CORDONED
        return None


class IsolationSupported:
    """The pod's runtime offers the sandbox's isolation mode."""

    name = "IsolationSupported"

    def filter(self, request: SandboxRequest, info: PodInfo, now: float) -> str | None:
        return None if request.isolation in info.pod.isolation else ISOLATION_UNSUPPORTED


class ResourcesFit:
    """Memory, CPU and the sandbox count still fit the pod's declared capacity."""

    name = "ResourcesFit"

    def filter(self, request: SandboxRequest, info: PodInfo, now: float) -> str | None:
        pod = info.pod
        if len(info.sandboxes) >= pod.max_sandboxes:
            return TOO_MANY_SANDBOXES
        if info.memory_requested + request.memory > pod.memory:
            return INSUFFICIENT_MEMORY
        if info.cpu_requested + request.cpu > pod.cpu:
            return INSUFFICIENT_CPU
        return None


class MostAllocated:
    """Prefer the fullest pod (after placing the sandbox): bin-packing frees whole pods."""

    name = "MostAllocated"

    def score(self, request: SandboxRequest, info: PodInfo) -> int:
        pod = info.pod
        memory = (info.memory_requested + request.memory) * MAX_SCORE // max(pod.memory, 1)
        cpu = (info.cpu_requested + request.cpu) * MAX_SCORE // max(pod.cpu, 1)
        slots = (len(info.sandboxes) + 1) * MAX_SCORE // max(pod.max_sandboxes, 1)
        return min(MAX_SCORE, (memory + cpu + slots) // 3)


class ReplicaSpread:
    """Prefer pods holding fewer sandboxes of the same replica set: one pod loss hurts less."""

    name = "ReplicaSpread"

    def score(self, request: SandboxRequest, info: PodInfo) -> int:
        if request.replica_set is None:
            return MAX_SCORE
        return MAX_SCORE // (1 + info.replica_sets.get(request.replica_set, 0))


class CodeLocality:
    """Prefer pods that already hold (or are about to hold) the sandbox's code."""

    name = "CodeLocality"

    def score(self, request: SandboxRequest, info: PodInfo) -> int:
        if request.code_digest is not None and info.holds_code(request.code_digest):
            return MAX_SCORE
        return 0
