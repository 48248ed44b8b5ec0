"""SandboxReplicaSet math: how many sandboxes to create, which to delete, and the status.

Why: this is kube-controller-manager's ReplicaSet controller (`pkg/controller/replicaset`)
reduced to its decisions, so they are tested without a cluster and the kopf handler only lists,
creates, deletes and patches. The one Nest-specific rule is the scale-down order: after
unscheduled and not-ready sandboxes, remove those on the least-packed pods, because emptying a
pod entirely is what lets the pool shrink (density), and only then prefer the newest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from crds.sandbox import PERMANENT_FAILURE_REASONS
from nest_operator.conditions import TRUE, Condition, remove_condition, set_condition

# Sandboxes in these phases are finished: they no longer count, and are replaced — except a
# sandbox Failed for a permanent reason (its code is broken), which a replacement would only
# repeat: it keeps counting, not ready, until a new revision replaces it.
FINISHED_PHASES = frozenset({"Succeeded", "Failed"})
# kube-controller-manager's burstReplicas: at most this many creations or deletions per sync,
# so one huge scale does not flood the API server in a single pass.
BURST_REPLICAS = 500
REPLICA_FAILURE = "ReplicaFailure"


@dataclass(frozen=True, slots=True)
class OwnedSandbox:
    """A sandbox owned by the replica set, reduced to what the controller decides on."""

    name: str
    phase: str
    ready: bool
    pod_uid: str | None  # None while unscheduled
    created_at: float  # seconds since the epoch
    deleting: bool = False  # metadata.deletionTimestamp is set
    labels: Mapping[str, str] = field(default_factory=dict)
    reason: str | None = None  # status.reason

    @property
    def finished(self) -> bool:
        """Will not run again and is to be replaced (and cleaned up)."""
        if self.phase not in FINISHED_PHASES:
            return False
        return self.phase != "Failed" or self.reason not in PERMANENT_FAILURE_REASONS

    @property
    def active(self) -> bool:
        """Counts towards replicas: neither being deleted nor finished (FilterActivePods)."""
        return not self.deleting and not self.finished


@dataclass(frozen=True, slots=True)
class ReplicaSetDecision:
    """What the shell must do now: create `create` sandboxes, delete `delete` (by name)."""

    create: int = 0
    delete: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ReplicaSetStatus:
    """SandboxReplicaSet status, as apps/v1 ReplicaSetStatus."""

    replicas: int
    fully_labeled_replicas: int
    ready_replicas: int
    available_replicas: int
    observed_generation: int
    conditions: tuple[Condition, ...] = ()


def pod_load(sandboxes: Sequence[OwnedSandbox]) -> dict[str, int]:
    """Sandboxes per pod among `sandboxes`: the packing to use when the cache's is unknown."""
    load: dict[str, int] = {}
    for sandbox in sandboxes:
        if sandbox.pod_uid is not None and sandbox.active:
            load[sandbox.pod_uid] = load.get(sandbox.pod_uid, 0) + 1
    return load


def deletion_order(
    sandboxes: Sequence[OwnedSandbox], load: Mapping[str, int]
) -> list[OwnedSandbox]:
    """`sandboxes`, the first to delete first.

    Unscheduled, then not ready, then on the pods holding the fewest sandboxes (`load`: all
    sandboxes per pod uid, of every replica set), then newest; the name settles the rest.
    """

    def key(s: OwnedSandbox) -> tuple[bool, bool, int, float, str]:
        packed = load.get(s.pod_uid, 0) if s.pod_uid is not None else 0
        return (s.pod_uid is not None, s.ready, packed, -s.created_at, s.name)

    return sorted(sandboxes, key=key)


def reconcile(
    desired: int,
    sandboxes: Sequence[OwnedSandbox],
    load: Mapping[str, int] | None = None,
    burst: int = BURST_REPLICAS,
) -> ReplicaSetDecision:
    """Create or delete so that exactly `desired` active sandboxes remain (at most `burst`).

    `load` is how many sandboxes each pod holds overall (from the scheduler cache); without
    it the replica set's own sandboxes are counted, which still frees its own pods first.
    """
    active = [s for s in sandboxes if s.active]
    diff = len(active) - desired
    if diff < 0:
        return ReplicaSetDecision(create=min(-diff, burst))
    if diff > 0:
        order = deletion_order(active, pod_load(active) if load is None else load)
        return ReplicaSetDecision(delete=tuple(s.name for s in order[: min(diff, burst)]))
    return ReplicaSetDecision()


def status(
    sandboxes: Sequence[OwnedSandbox],
    template_labels: Mapping[str, str],
    generation: int,
    conditions: Sequence[Condition],
    now: float,
    failure: str | None = None,
    failure_reason: str = "FailedCreate",
) -> ReplicaSetStatus:
    """The status to write after a sync; `failure` says why creating (or deleting) just failed.

    Nest has no minReadySeconds, so available equals ready.
    """
    active = [s for s in sandboxes if s.active]
    labeled = sum(
        1 for s in active if all(s.labels.get(k) == v for k, v in template_labels.items())
    )
    ready = sum(1 for s in active if s.ready)
    if failure is None:
        new_conditions = remove_condition(conditions, REPLICA_FAILURE)
    else:
        condition = Condition(REPLICA_FAILURE, TRUE, failure_reason, failure)
        new_conditions = set_condition(conditions, condition, now)
    return ReplicaSetStatus(
        replicas=len(active),
        fully_labeled_replicas=labeled,
        ready_replicas=ready,
        available_replicas=ready,
        observed_generation=generation,
        conditions=new_conditions,
    )
