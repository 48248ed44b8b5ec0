"""The scheduler's filter and score plugins, one small named class each, with their hints.

Why: like kube-scheduler's framework, each concern (pool, health, capacity, isolation, tenancy,
packing, spread, code locality) is a plugin that can be tested alone, reordered, weighted or
left out, instead of one scoring function nobody can reason about. A filter returns None when
the pod fits, else a `Status` naming it, with a code: Unschedulable when a change of what the
pod holds may let the sandbox in, UnschedulableAndUnresolvable when only a change of the pod or
the pool can. Its statuses are constants where the reason is fixed, so a refusal allocates
nothing. Scores return 0..100, higher is better. A filter may also check, once per decision,
what holds for every pod of the pool alike (`pre_filter`, kube-scheduler's PreFilter).

Each filter also says which cluster events may undo its refusals (`events`) and, for one event
and one sandbox, whether this one may (`hint`, kube's QueueingHint): a Lease renewal that only
moves renewTime matters to PodReady alone, and only when the Lease had expired. Every hint is
cheap and pure: the queue asks it for each waiting sandbox the plugin refused.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

from crds.sandbox import canonical_name
from nest_operator.scheduler.cache import SchedulerCache
from nest_operator.scheduler.interface import (
    ClusterEvent,
    EventKind,
    Status,
    unresolvable,
    unschedulable,
)
from nest_operator.scheduler.snapshot import NAMESPACE_MODE, PodInfo, PoolPod, SandboxRequest

MAX_SCORE = 100

POOL_MATCH = "PoolMatch"
POD_READY = "PodReady"
POD_DRAINING = "PodDraining"
ISOLATION_SUPPORTED = "IsolationSupported"
TENANT_ISOLATION = "TenantIsolation"
NATIVE_DEPENDENCIES = "NativeDependencies"
RESOURCES_FIT = "ResourcesFit"

NOT_IN_POOL = unresolvable(POOL_MATCH, "in another pool")
NOT_READY = unresolvable(POD_READY, "not ready")
LEASE_EXPIRED = unresolvable(POD_READY, "lease expired")
CORDONED = unresolvable(POD_READY, "cordoned")
ISOLATION_UNSUPPORTED = unresolvable(ISOLATION_SUPPORTED, "isolation unsupported")
TOO_MANY_SANDBOXES = unschedulable(RESOURCES_FIT, "too many sandboxes")
INSUFFICIENT_MEMORY = unschedulable(RESOURCES_FIT, "insufficient memory")
INSUFFICIENT_CPU = unschedulable(RESOURCES_FIT, "insufficient cpu")
# More than the pod has when empty: no sandbox leaving will make room.
TAKES_NO_SANDBOXES = unresolvable(RESOURCES_FIT, "takes no sandboxes")
MEMORY_ABOVE_CAPACITY = unresolvable(RESOURCES_FIT, "memory above the pod's capacity")
CPU_ABOVE_CAPACITY = unresolvable(RESOURCES_FIT, "cpu above the pod's capacity")
HOLDS_OTHER_NAMESPACE_MODE = unschedulable(
    TENANT_ISOLATION, "holds another namespace's namespace-mode sandboxes"
)
HOLDS_OTHER_NAMESPACE = unschedulable(
    TENANT_ISOLATION, "holds another namespace's sandboxes (namespace mode)"
)
DEDICATED_TO_OTHER = unschedulable(TENANT_ISOLATION, "dedicated to another namespace")


def mode_not_offered(pool: str, isolation: str) -> Status:
    return unresolvable(
        TENANT_ISOLATION, f"SandboxPool {pool} does not offer {isolation} isolation"
    )


def namespace_not_allowed(pool: str, namespace: str) -> Status:
    return unresolvable(TENANT_ISOLATION, f"namespace {namespace} may not use SandboxPool {pool}")


def _in_pool(request: SandboxRequest, event: ClusterEvent) -> bool:
    return event.pool == request.pool


class PoolMatch:
    """Only pods of the sandbox's pool: a pre-filter, since the cache already indexes by pool.

    Every refusal also means "no pod of my pool could take it", so the framework counts this
    plugin among the refusers of every unschedulable sandbox: a pod joining its pool re-queues
    it, whichever filter refused the others."""

    name = POOL_MATCH
    outside = NOT_IN_POOL
    events = frozenset({EventKind.POD_ADDED})

    def candidates(self, request: SandboxRequest, cache: SchedulerCache) -> Sequence[PodInfo]:
        return cache.pool(request.pool)

    def hint(self, request: SandboxRequest, event: ClusterEvent) -> bool:
        return _in_pool(request, event)


class PodReady:
    """The pod is Ready, its sidecar's Lease is fresh and nobody cordoned it."""

    name = POD_READY
    events = frozenset({EventKind.POD_UPDATED, EventKind.LEASE_RENEWED})

    def __init__(self, lease_ttl: float = 40.0) -> None:
        self.lease_ttl = lease_ttl

    def filter(self, request: SandboxRequest, info: PodInfo, now: float) -> Status | None:
        return self._check(info.pod, now)

    def _check(self, pod: PoolPod, now: float) -> Status | None:
        if not pod.ready:
            return NOT_READY
        if pod.lease_renewed_at is None or now - pod.lease_renewed_at > self.lease_ttl:
            return LEASE_EXPIRED
        if pod.cordoned:
            return CORDONED
        return None

    def hint(self, request: SandboxRequest, event: ClusterEvent) -> bool:
        """Only a pod that was unusable and is usable now: a renewal of a fresh Lease is not."""
        new, old = event.new, event.old
        if new is None or not _in_pool(request, event) or self._check(new, event.at) is not None:
            return False
        return old is None or self._check(old, event.at) is not None


class PodDraining:
    """The pod is not leaving its pool: a pod being deleted is cordoned while it drains.

    Like `kubectl drain`'s cordon, a pool pod with a deletionTimestamp takes no new sandbox
    while its replica sets move theirs elsewhere; a replacement placed on it would only have
    to move again. Unresolvable, and no event undoes it: a deletion is never taken back.
    """

    name = POD_DRAINING
    events: frozenset[EventKind] = frozenset()

    def filter(self, request: SandboxRequest, info: PodInfo, now: float) -> Status | None:
        leaving = info.pod.leaving
        return None if leaving is None else draining(leaving)

    def hint(self, request: SandboxRequest, event: ClusterEvent) -> bool:
        return False


@functools.lru_cache(maxsize=8)
def draining(why: str) -> Status:
    """The refusal of a pod leaving its pool (cached: the reasons are few and fixed)."""
    return unresolvable(POD_DRAINING, f"cordoned, draining: {why}")


class IsolationSupported:
    """The pod's runtime offers the sandbox's isolation mode."""

    name = ISOLATION_SUPPORTED
    events = frozenset({EventKind.POD_UPDATED})

    def filter(self, request: SandboxRequest, info: PodInfo, now: float) -> Status | None:
        return None if request.isolation in info.pod.isolation else ISOLATION_UNSUPPORTED

    def hint(self, request: SandboxRequest, event: ClusterEvent) -> bool:
        new, old = event.new, event.old
        return (
            new is not None and _in_pool(request, event) and request.isolation in new.isolation
            and (old is None or request.isolation not in old.isolation)
        )  # fmt: skip


class TenantIsolation:
    """Who may share a pod: tenants are Kubernetes namespaces, the rules are the SandboxPool's.

    Once per decision: the pool offers the sandbox's mode and its namespaceSelector admits the
    sandbox's namespace (unresolvable but by a pool or namespace change). Per pod, whatever the
    pool says, a namespace-mode sandbox shares a pod only with sandboxes of its own namespace
    (in one interpreter the tenant is the boundary), and no sandbox joins a pod holding another
    namespace's namespace-mode sandboxes; in a Dedicated pool a pod holds one namespace at a
    time (all resolved when the other tenant's sandboxes leave). Reads only PodInfo's
    per-namespace counts, so a pod costs the same whatever it holds; pods holding nothing or
    only the sandbox's own namespace (the common case) are decided in two lookups.
    """

    name = TENANT_ISOLATION
    events = frozenset({EventKind.CAPACITY_FREED, EventKind.NAMESPACE_CHANGED})

    def pre_filter(self, request: SandboxRequest, cache: SchedulerCache) -> Status | None:
        policy = cache.policy(request.pool)
        if policy is None:  # no SandboxPool known: its pods are no nodes (the operator's rule)
            return None
        if request.isolation not in policy.isolation:
            return mode_not_offered(policy.name, request.isolation)
        allows = policy.allows_namespace
        if allows is not None and not allows(cache.namespace_labels(request.namespace)):
            return namespace_not_allowed(policy.name, request.namespace)
        return None

    def filter(self, request: SandboxRequest, info: PodInfo, now: float) -> Status | None:
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

    def hint(self, request: SandboxRequest, event: ClusterEvent) -> bool:
        if event.kind == EventKind.NAMESPACE_CHANGED:
            return event.namespace == request.namespace
        freed = event.freed
        return (
            _in_pool(request, event)
            and freed is not None
            and (freed.namespace != request.namespace)
        )


@functools.lru_cache(maxsize=4096)
def _native(spec: str) -> tuple[str, str] | None:
    """One `name==version` entry as (PEP 503 name, version), None when malformed; cached: the
    filter sees the same few Lease entries for every pod of every decision."""
    name, sep, version = spec.partition("==")
    if sep and name.strip() and version.strip():
        return canonical_name(name.strip()), version.strip()
    return None


def _natives(specs: Iterable[str]) -> dict[str, str]:
    """`name==version` entries as {PEP 503 name: version}; malformed ones are ignored."""
    return dict(parsed for spec in specs if (parsed := _native(spec)) is not None)


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
    own: always fine. Resolved when the promising sandbox leaves or the runtime restarts."""

    name = NATIVE_DEPENDENCIES
    events = frozenset({EventKind.CAPACITY_FREED, EventKind.POD_UPDATED})

    def filter(self, request: SandboxRequest, info: PodInfo, now: float) -> Status | None:
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
        return unschedulable(self.name, f"its runtime holds {name}=={other}, not {version}")

    def hint(self, request: SandboxRequest, event: ClusterEvent) -> bool:
        if not _in_pool(request, event):
            return False
        if event.kind == EventKind.CAPACITY_FREED:
            freed = event.freed
            return (
                freed is not None
                and freed.isolation == NAMESPACE_MODE
                and bool(freed.native_distributions)
            )
        old, new = event.old, event.new
        return (
            old is not None
            and new is not None
            and bool(old.native_distributions - new.native_distributions)
        )


class ResourcesFit:
    """Memory, CPU and the sandbox count still fit the pod's declared capacity."""

    name = RESOURCES_FIT
    events = frozenset({EventKind.CAPACITY_FREED, EventKind.POD_UPDATED})

    def filter(self, request: SandboxRequest, info: PodInfo, now: float) -> Status | None:
        pod = info.pod
        if len(info.sandboxes) >= pod.max_sandboxes:
            status = TOO_MANY_SANDBOXES
        elif info.memory_requested + request.memory > pod.memory:
            status = INSUFFICIENT_MEMORY
        elif info.cpu_requested + request.cpu > pod.cpu:
            status = INSUFFICIENT_CPU
        else:
            return None
        return _never_fits(request, pod) or status

    def hint(self, request: SandboxRequest, event: ClusterEvent) -> bool:
        """Freed capacity in the pool, or a pod's declared capacity grew to hold the sandbox
        (the queue asks about freed capacity only when some refusal was not unresolvable)."""
        if not _in_pool(request, event):
            return False
        if event.kind == EventKind.CAPACITY_FREED:
            return True
        old, new = event.old, event.new
        if old is None or new is None or _never_fits(request, new) is not None:
            return False
        return new.memory > old.memory or new.cpu > old.cpu or new.max_sandboxes > old.max_sandboxes


def _never_fits(request: SandboxRequest, pod: PoolPod) -> Status | None:
    if pod.max_sandboxes < 1:
        return TAKES_NO_SANDBOXES
    if request.memory > pod.memory:
        return MEMORY_ABOVE_CAPACITY
    if request.cpu > pod.cpu:
        return CPU_ABOVE_CAPACITY
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
