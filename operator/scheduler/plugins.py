"""The scheduler's filter and score plugins, one small named class each.

Why: like kube-scheduler's framework, each concern (pool, health, capacity, isolation, tenancy,
packing, spread, code locality) is a plugin that can be tested alone, reordered, weighted or
left out, instead of one scoring function nobody can reason about. Filters return None when the
pod fits or a short reason ("insufficient memory") that the framework counts into the
unschedulable message; scores return 0..100, higher is better. A filter may also check, once per
decision, what holds for every pod of the pool alike (`pre_filter`, kube-scheduler's PreFilter):
that costs one call instead of one per pod.

TenantIsolation is the one place that decides who may share a pod; its reasons start with its
name ("TenantIsolation: ...") so a FailedScheduling message says which rule kept a sandbox out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

from nest_operator.scheduler.cache import SchedulerCache
from nest_operator.scheduler.snapshot import NAMESPACE_MODE, PodInfo, SandboxRequest

MAX_SCORE = 100

NOT_IN_POOL = "in another pool"
NOT_READY = "not ready"
LEASE_EXPIRED = "lease expired"
CORDONED = "cordoned"
INSUFFICIENT_MEMORY = "insufficient memory"
INSUFFICIENT_CPU = "insufficient cpu"
TOO_MANY_SANDBOXES = "too many sandboxes"
ISOLATION_UNSUPPORTED = "isolation unsupported"
TENANT_ISOLATION = "TenantIsolation"
HOLDS_OTHER_NAMESPACE_MODE = (
    f"{TENANT_ISOLATION}: holds another namespace's namespace-mode sandboxes"
)
HOLDS_OTHER_NAMESPACE = f"{TENANT_ISOLATION}: holds another namespace's sandboxes (namespace mode)"
DEDICATED_TO_OTHER = f"{TENANT_ISOLATION}: dedicated to another namespace"


def mode_not_offered(pool: str, isolation: str) -> str:
    return f"{TENANT_ISOLATION}: SandboxPool {pool} does not offer {isolation} isolation"


def namespace_not_allowed(pool: str, namespace: str) -> str:
    return f"{TENANT_ISOLATION}: namespace {namespace} may not use SandboxPool {pool}"


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


@runtime_checkable
class PoolCheck(Protocol):
    """The once-per-decision part of a filter: a reason that holds for every pod of the pool."""

    def pre_filter(self, request: SandboxRequest, cache: SchedulerCache) -> str | None:
        """None when the pool's pods may be looked at for `request`, else why none fits."""
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


class TenantIsolation:
    """Who may share a pod: tenants are Kubernetes namespaces, the rules are the SandboxPool's.

    Once per decision: the pool offers the sandbox's mode and its namespaceSelector admits the
    sandbox's namespace. Per pod, whatever the pool says, a namespace-mode sandbox shares a pod
    only with sandboxes of its own namespace (in one interpreter the tenant is the boundary),
    and no sandbox joins a pod holding another namespace's namespace-mode sandboxes; in a
    Dedicated pool a pod holds one namespace at a time. Reads only PodInfo's per-namespace
    counts, so a pod costs the same whatever it holds; pods holding nothing or only the
    sandbox's own namespace (the common case) are decided in two lookups.
    """

    name = TENANT_ISOLATION

    def pre_filter(self, request: SandboxRequest, cache: SchedulerCache) -> str | None:
        policy = cache.policy(request.pool)
        if policy is None:  # no SandboxPool known: its pods are no nodes (the operator's rule)
            return None
        if request.isolation not in policy.isolation:
            return mode_not_offered(policy.name, request.isolation)
        allows = policy.allows_namespace
        if allows is not None and not allows(cache.namespace_labels(request.namespace)):
            return namespace_not_allowed(policy.name, request.namespace)
        return None

    def filter(self, request: SandboxRequest, info: PodInfo, now: float) -> str | None:
        namespaces = info.namespaces
        if not namespaces:
            return None
        namespace = request.namespace
        if len(namespaces) == 1 and namespace in namespaces:
            return None
        # The pod holds sandboxes of another namespace.
        modes = info.namespace_mode
        if len(modes) > 1 or (modes and namespace not in modes):
            return HOLDS_OTHER_NAMESPACE_MODE
        if request.isolation == NAMESPACE_MODE:
            return HOLDS_OTHER_NAMESPACE
        policy = info.policy
        if policy is not None and policy.dedicated:
            return DEDICATED_TO_OTHER
        return None


NATIVE_DEPENDENCIES = "NativeDependencies"


def _natives(specs: Iterable[str]) -> dict[str, str]:
    """`name==version` entries as {PEP 503 name: version}; malformed ones are ignored."""
    out = {}
    for spec in specs:
        name, sep, version = spec.partition("==")
        if sep and name.strip() and version.strip():
            out[re.sub(r"[-_.]+", "-", name.strip()).lower()] = version.strip()
    return out


def native_conflict(wanted: Iterable[str], held: Iterable[str]) -> tuple[str, str, str] | None:
    """The first (name, wanted version, held version) where `held` has another version."""
    have = _natives(held)
    for name, version in sorted(_natives(wanted).items()):
        other = have.get(name)
        if other is not None and other != version:
            return name, version, other
    return None


class NativeDependencies:
    """A namespace-mode sandbox goes only where no compiled distribution it needs is loaded
    (by the pod's runtime, per its Lease) or promised (to a namespace-mode sandbox bound there)
    at another version: one interpreter loads one version of an extension, and the sandbox
    would fail there with DependencyConflict. Subprocess sandboxes have interpreters of their
    own: always fine."""

    name = NATIVE_DEPENDENCIES

    def filter(self, request: SandboxRequest, info: PodInfo, now: float) -> str | None:
        wanted = request.native_distributions
        if request.isolation != NAMESPACE_MODE or not wanted:
            return None
        held = info.pod.native_distributions
        if not held and not info.natives:
            return None
        conflict = native_conflict(wanted, [*held, *info.natives])
        if conflict is None:
            return None
        name, version, other = conflict
        return f"{NATIVE_DEPENDENCIES}: its runtime holds {name}=={other}, not {version}"


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
