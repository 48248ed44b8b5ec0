"""SandboxReplicaSet math: how many sandboxes to create, which to delete, and the status.

Why: this is kube-controller-manager's ReplicaSet controller (`pkg/controller/replicaset`)
reduced to its decisions, so they are tested without a cluster and the kopf handler only lists,
creates, deletes and patches. The one Nest-specific rule is the scale-down order: after
unscheduled and not-ready sandboxes, remove those on the least-packed pods, because emptying a
pod entirely is what lets the pool shrink (density), and only then prefer the newest.

Controllers never multiply: a replica set whose new sandboxes its own selector would not select
creates none and says so (`ReplicaFailure`/`SelectorMismatch`: it would release each one and
create another, forever); creations it made but has not yet seen are expected before it creates
again (kube's ControllerExpectations), and at most `BURST_REPLICAS` go out per sync.

Status writes are coalesced (`status_wait`): a replica set of a hundred sandboxes becoming
ready one by one would otherwise write its status a hundred times. Only progress is held back
(counts rising, nothing else changed), and only until it amounts to a tenth of the replicas or
has waited `STATUS_REFRESH`; a status that reaches spec.replicas, any count falling (so readers
never see more available than there are: a rolling update scales the old set down by it), a new
generation, condition or selector is written at once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from crds.common import LabelSelector
from crds.sandbox import PERMANENT_FAILURE_REASONS, RUNTIME_CRASH_REASON
from crds.workloads import BINDING_LABELS, unusable_selector
from nest_operator.conditions import TRUE, Condition, remove_condition, set_condition

# Sandboxes in these phases are finished: they no longer count, and are replaced — except a
# sandbox Failed for a permanent reason (its code is broken), which a replacement would only
# repeat: it keeps counting, not ready, until a new revision replaces it.
FINISHED_PHASES = frozenset({"Succeeded", "Failed"})
# kube-controller-manager's burstReplicas: at most this many creations or deletions per sync,
# so one huge scale does not flood the API server in a single pass.
BURST_REPLICAS = 500
REPLICA_FAILURE = "ReplicaFailure"
# ReplicaFailure reasons: the API server refused a creation or deletion; the selector cannot
# select what the replica set creates; the selector itself is unusable; a sandbox crashed its
# pod's shared runtime and is kept rather than replaced.
FAILED_CREATE = "FailedCreate"
SELECTOR_MISMATCH = "SelectorMismatch"
INVALID_SELECTOR = "InvalidSelector"
RUNTIME_CRASH = RUNTIME_CRASH_REASON
# How long creations whose outcome is unknown (a timeout: the API server may still store them)
# are waited for before the replica set counts them as not made. kube waits 5 minutes, but there
# every creation is waited for; here a successful one is seen at once (the store is written
# through), so only an unknown outcome waits, and a minute short of a replica is enough margin
# for a lagging watch without leaving the replica set short for long.
EXPECTATIONS_TTL = 60.0
# Coalescing of status writes (module docstring): progress of less than this fraction of
# spec.replicas waits, at most STATUS_REFRESH seconds after the last write.
PROGRESS_STEP = 0.1
STATUS_REFRESH = 15.0
COUNT_FIELDS = ("replicas", "fullyLabeledReplicas", "readyReplicas", "availableReplicas")
SETTLED_FIELDS = ("replicas", "readyReplicas", "availableReplicas")


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
class Failure:
    """Why the replica set cannot do its job: the `ReplicaFailure` condition and its Event."""

    reason: str
    message: str


def selector_failure(
    selector: LabelSelector | None,
    invalid: str | None,
    stamped: Mapping[str, str],
    template_labels: Mapping[str, str],
) -> Failure | None:
    """Whether the replica set may create: its selector (None when it did not parse, `invalid`
    saying why) must select the labels its sandboxes are created with (`stamped`: the
    template's, plus what the operator adds, such as the function label of a deployment)."""
    if selector is None:
        why = f"spec.selector is invalid ({invalid}): no Sandbox is created or adopted"
        return Failure(INVALID_SELECTOR, why)
    unusable = unusable_selector(selector)
    if unusable is not None:
        return Failure(INVALID_SELECTOR, f"spec.selector {unusable}: no Sandbox is created")
    if selector.matches(stamped):
        return None
    shown = json.dumps(dict(stamped), sort_keys=True)
    added = sorted(f"{k}={v}" for k, v in stamped.items() if template_labels.get(k) != v)
    by_operator = f" ({', '.join(added)} set by the operator)" if added else ""
    return Failure(
        SELECTOR_MISMATCH,
        f'spec.selector "{selector.to_selector_string()}" does not match the labels its '
        f"Sandboxes are created with, {shown}{by_operator}: each would be released as soon as "
        "it was created, so none is created. Make spec.selector match "
        "spec.template.metadata.labels.",
    )


def is_stamped(labels: Mapping[str, str], stamped: Mapping[str, str]) -> bool:
    """Whether a sandbox still carries exactly the labels the replica set created it with (and
    the scheduler's binding labels): one it made, as opposed to one somebody relabelled."""
    if any(labels.get(k) != v for k, v in stamped.items()):
        return False
    return all(k in stamped or k in BINDING_LABELS for k in labels)


def runtime_crash_failure(sandboxes: Iterable[OwnedSandbox], shown: int = 3) -> Failure | None:
    """Sandboxes Failed with RuntimeCrash are kept, not replaced; the condition names them."""
    crashed = sorted(
        s.name
        for s in sandboxes
        if s.phase == "Failed" and s.reason == RUNTIME_CRASH and not s.deleting
    )
    if not crashed:
        return None
    names = ", ".join(f'"{name}"' for name in crashed[:shown])
    more = f" and {len(crashed) - shown} more" if len(crashed) > shown else ""
    subject = "Sandbox" if len(crashed) == 1 else "Sandboxes"
    return Failure(
        RUNTIME_CRASH,
        f"{subject} {names}{more} crashed the shared runtime of a pool pod (namespace isolation) "
        "and are kept Failed, not replaced: a replacement would crash the shared runtime again, "
        "taking the other sandboxes of its pod down with it. Run this function with isolation: "
        "subprocess, which contains a crash to its own process.",
    )


@dataclass(slots=True)
class _Expected:
    adds: int  # creations not yet seen
    known: frozenset[str]  # UIDs it controlled when it created: no evidence of a new one
    deadline: float
    seen: set[str] = field(default_factory=set)


class Expectations:
    """kube's ControllerExpectations for creations: after creating, a replica set creates again
    only once the store shows the sandboxes it made, or `ttl` has passed.

    Keyed by replica set key; `now` is injected. A successful creation is in the store at once
    (write-through), so what is waited for in practice is a creation whose outcome is unknown.
    """

    def __init__(self, ttl: float = EXPECTATIONS_TTL) -> None:
        self.ttl = ttl
        self._by_key: dict[str, _Expected] = {}

    def expect(self, key: str, adds: int, known: Iterable[str], now: float) -> None:
        """`adds` creations are about to be made; `known` are the UIDs it controls now."""
        self._by_key[key] = _Expected(adds, frozenset(known), now + self.ttl)

    def lower(self, key: str, count: int = 1) -> None:
        """`count` of the expected creations will never be seen (refused, or never attempted)."""
        expected = self._by_key.get(key)
        if expected is not None:
            expected.adds -= count

    def observe(self, key: str, controlled: Iterable[str]) -> None:
        """The UIDs the store shows the replica set controlling now."""
        expected = self._by_key.get(key)
        if expected is not None:
            expected.seen.update(uid for uid in controlled if uid not in expected.known)

    def pending(self, key: str, now: float) -> float:
        """Seconds until the expectation expires, or 0 when it is satisfied (or expired)."""
        expected = self._by_key.get(key)
        if expected is None:
            return 0.0
        if len(expected.seen) >= expected.adds or now >= expected.deadline:
            del self._by_key[key]
            return 0.0
        return expected.deadline - now

    def forget(self, key: str) -> None:
        self._by_key.pop(key, None)


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
    may_create: bool = True,
) -> ReplicaSetDecision:
    """Create or delete so that exactly `desired` active sandboxes remain (at most `burst`).

    `load` is how many sandboxes each pod holds overall (from the scheduler cache); without
    it the replica set's own sandboxes are counted, which still frees its own pods first.
    Without `may_create` (its selector would not select what it creates) it only deletes.
    """
    active = [s for s in sandboxes if s.active]
    diff = len(active) - desired
    if diff < 0:
        return ReplicaSetDecision(create=min(-diff, burst) if may_create else 0)
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
    """The status to write after a sync; `failure` says why the replica set falls short (its
    `failure_reason`: creating or deleting just failed, its selector, a runtime crash).

    Nest has no minReadySeconds, so available equals ready; a sandbox kept Failed (broken code,
    a runtime crash) counts as a replica but is never ready, whatever its conditions say.
    """
    active = [s for s in sandboxes if s.active]
    labeled = sum(
        1 for s in active if all(s.labels.get(k) == v for k, v in template_labels.items())
    )
    ready = sum(1 for s in active if s.ready and s.phase != "Failed")
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


def status_wait(
    written: Mapping[str, object],
    new: Mapping[str, object],
    desired: int,
    since_write: float | None,
) -> float:
    """Seconds to hold the status `new` back (0: write it now), given the one `written` and
    the seconds `since_write` this process wrote it (None: it has not, since it started).

    Held back only while it is mere progress: every count at least the written one, nothing
    else different, spec.replicas not reached, and less than a PROGRESS_STEP of it gained."""
    if since_write is None or any(
        written.get(k) != v for k, v in new.items() if k not in COUNT_FIELDS
    ):
        return 0.0
    gained = [_count(new, k) - _count(written, k) for k in COUNT_FIELDS]
    if min(gained) < 0 or all(_count(new, k) == desired for k in SETTLED_FIELDS):
        return 0.0
    if max(gained) >= max(1, math.ceil(desired * PROGRESS_STEP)):
        return 0.0
    return max(0.0, STATUS_REFRESH - since_write)


def _count(status_: Mapping[str, object], field_: str) -> int:
    value = status_.get(field_)
    return value if isinstance(value, int) else 0
