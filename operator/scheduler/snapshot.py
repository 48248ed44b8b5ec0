"""Snapshot types of the scheduler: what it knows about pool pods and about the sandbox to place.

Why: the scheduler is a pure function over these small frozen records, not over API objects, so
it is fast, testable without a cluster and independent of how the API types evolve. The I/O
shell adapts Pods, Leases and Sandboxes into them (`parse_memory`/`parse_cpu` turn Kubernetes
quantities into the integers used here). `PodInfo` is the kube-scheduler's NodeInfo: the
per-pod aggregates every plugin reads, kept up to date incrementally so that one decision costs
O(pods looked at), never O(pods x sandboxes). `PoolPolicy` is a SandboxPool as the scheduler
needs it: the modes it offers, its tenancy and which namespaces may use it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from kubernetes.utils.quantity import parse_quantity


def parse_memory(quantity: str | int) -> int:
    """A memory quantity (`64Mi`, `1G`, `1048576`) in bytes, rounded up."""
    value: Decimal = parse_quantity(quantity)
    return math.ceil(value)


def parse_cpu(quantity: str | int) -> int:
    """A CPU quantity (`100m`, `0.5`, `2`) in millicores, rounded up."""
    value: Decimal = parse_quantity(quantity)
    return math.ceil(value * 1000)


@dataclass(frozen=True, slots=True)
class PoolPod:
    """A pool pod as a node: identity, health and declared capacity."""

    name: str
    namespace: str
    uid: str
    pool: str
    ready: bool
    # Seconds since the epoch of the Lease's renewTime; None when the pod has no Lease yet.
    lease_renewed_at: float | None
    cordoned: bool
    memory: int  # bytes
    cpu: int  # millicores
    max_sandboxes: int
    isolation: frozenset[str]
    # Digests of code the pod's sidecar already holds in its content-addressed cache.
    cached_digests: frozenset[str] = frozenset()
    # Compiled distributions its shared runtime loaded, "name==version" (from its Lease).
    native_distributions: frozenset[str] = frozenset()
    # Why the pod is leaving its pool (being deleted: drained), None while it stays.
    leaving: str | None = None


NAMESPACE_MODE = "namespace"


@dataclass(frozen=True, slots=True)
class PoolPolicy:
    """A SandboxPool's rules: what its pods offer and to which tenants."""

    name: str
    isolation: frozenset[str]
    # Dedicated: a pod holds sandboxes of one Kubernetes namespace at a time.
    dedicated: bool = False
    # Whether a namespace with these labels may use the pool; None: every namespace may.
    allows_namespace: Callable[[Mapping[str, str]], bool] | None = None


@dataclass(frozen=True, slots=True)
class BoundSandbox:
    """A sandbox bound (or assumed bound) to a pod, reduced to what scheduling needs."""

    uid: str
    pod_uid: str
    memory: int
    cpu: int
    replica_set: str | None
    code_digest: str | None
    namespace: str = ""  # the sandbox's Kubernetes namespace: its tenant
    isolation: str = "subprocess"
    native_distributions: frozenset[str] = frozenset()  # "name==version" it needs


@dataclass(frozen=True, slots=True)
class SandboxRequest:
    """The sandbox to place."""

    name: str
    namespace: str
    uid: str
    pool: str
    memory: int
    cpu: int
    isolation: str
    code_digest: str | None = None
    replica_set: str | None = None
    # Compiled distributions it needs, "name==version" (its template's annotation).
    native_distributions: frozenset[str] = frozenset()

    def bound_to(self, pod_uid: str) -> BoundSandbox:
        """This sandbox as bound to `pod_uid`."""
        return BoundSandbox(
            self.uid, pod_uid, self.memory, self.cpu, self.replica_set, self.code_digest,
            self.namespace, self.isolation, self.native_distributions,
        )  # fmt: skip


@dataclass(slots=True)
class PodInfo:
    """One pool pod with the aggregates of its sandboxes, maintained on every add and remove."""

    pod: PoolPod
    sandboxes: dict[str, BoundSandbox] = field(default_factory=dict)
    memory_requested: int = 0
    cpu_requested: int = 0
    # Sandboxes per owning replica set, and per code digest (code that is or will be on the pod).
    replica_sets: dict[str, int] = field(default_factory=dict)
    digests: dict[str, int] = field(default_factory=dict)
    # Sandboxes per Kubernetes namespace, and namespace-mode sandboxes per namespace: tenancy.
    namespaces: dict[str, int] = field(default_factory=dict)
    namespace_mode: dict[str, int] = field(default_factory=dict)
    # Native distributions ("name==version") of its namespace-mode sandboxes, bound or assumed:
    # the runtime loads them once it starts them, before its Lease says so.
    natives: dict[str, int] = field(default_factory=dict)
    # The pod's SandboxPool, kept current by the cache; None when none is known.
    policy: PoolPolicy | None = None

    @property
    def count(self) -> int:
        return len(self.sandboxes)

    def add(self, sandbox: BoundSandbox) -> None:
        self.sandboxes[sandbox.uid] = sandbox
        self.memory_requested += sandbox.memory
        self.cpu_requested += sandbox.cpu
        if sandbox.replica_set is not None:
            self.replica_sets[sandbox.replica_set] = (
                self.replica_sets.get(sandbox.replica_set, 0) + 1
            )
        if sandbox.code_digest is not None:
            self.digests[sandbox.code_digest] = self.digests.get(sandbox.code_digest, 0) + 1
        namespace = sandbox.namespace
        self.namespaces[namespace] = self.namespaces.get(namespace, 0) + 1
        if sandbox.isolation == NAMESPACE_MODE:
            self.namespace_mode[namespace] = self.namespace_mode.get(namespace, 0) + 1
            for native in sandbox.native_distributions:
                self.natives[native] = self.natives.get(native, 0) + 1

    def remove(self, uid: str) -> BoundSandbox | None:
        sandbox = self.sandboxes.pop(uid, None)
        if sandbox is None:
            return None
        self.memory_requested -= sandbox.memory
        self.cpu_requested -= sandbox.cpu
        _decrement(self.replica_sets, sandbox.replica_set)
        _decrement(self.digests, sandbox.code_digest)
        _decrement(self.namespaces, sandbox.namespace)
        if sandbox.isolation == NAMESPACE_MODE:
            _decrement(self.namespace_mode, sandbox.namespace)
            for native in sandbox.native_distributions:
                _decrement(self.natives, native)
        return sandbox

    def holds_code(self, digest: str) -> bool:
        return digest in self.pod.cached_digests or digest in self.digests


def _decrement(counts: dict[str, int], key: str | None) -> None:
    if key is None:
        return
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]
