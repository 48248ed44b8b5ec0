"""SandboxDeployment rollout math, after kube-controller-manager's Deployment controller.

Why: rollouts are where controllers go wrong (overshooting surge, dropping below availability,
losing revision history), so the decisions are pure functions tested against invariants, and
the kopf handler only creates, scales, deletes and patches what `sync` returns. The steps follow
`pkg/controller/deployment` (`rolling.go`, `recreate.go`, `sync.go`, `progress.go`,
`util/deployment_util.go`) so their behaviour is the one Kubernetes users expect.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from crds.constants import TEMPLATE_HASH_LABEL
from nest_operator.conditions import FALSE, TRUE, UNKNOWN, Condition, find, set_condition
from nest_operator.errors import InvalidRolloutStrategy

ROLLING_UPDATE = "RollingUpdate"
RECREATE = "Recreate"
AVAILABLE = "Available"
PROGRESSING = "Progressing"
# Kubernetes' rand.SafeEncodeString alphabet: no vowels (no words), no confusable characters.
_SAFE_ALPHANUMS = "bcdfghjklmnpqrstvwxz2456789"


@dataclass(frozen=True, slots=True)
class ReplicaSetInfo:
    """One SandboxReplicaSet of the deployment, as the rollout sees it."""

    name: str
    revision: int
    replicas: int  # spec.replicas
    template: Mapping[str, Any]  # spec.template, including the template-hash label
    created_at: float
    status_replicas: int = 0
    ready_replicas: int = 0
    available_replicas: int = 0
    conditions: tuple[Condition, ...] = ()  # status.conditions (its ReplicaFailure shows above)


@dataclass(frozen=True, slots=True)
class DeploymentStatus:
    observed_generation: int = 0
    replicas: int = 0
    updated_replicas: int = 0
    ready_replicas: int = 0
    available_replicas: int = 0
    unavailable_replicas: int = 0
    conditions: tuple[Condition, ...] = ()
    collision_count: int = 0


@dataclass(frozen=True, slots=True)
class DeploymentInfo:
    """The SandboxDeployment's spec and its last written status."""

    name: str
    generation: int
    replicas: int
    template: Mapping[str, Any]
    strategy: str = ROLLING_UPDATE
    max_surge: int | str = "25%"
    max_unavailable: int | str = "25%"
    revision_history_limit: int = 10
    paused: bool = False
    progress_deadline_seconds: int = 600
    status: DeploymentStatus = field(default_factory=DeploymentStatus)


@dataclass(frozen=True, slots=True)
class NewReplicaSet:
    """A SandboxReplicaSet to create: `template` already carries the template-hash label."""

    name: str
    template_hash: str
    revision: int
    replicas: int
    template: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class DeploymentPlan:
    """What the shell applies, in this order: create, revisions, scale, delete, status."""

    create: NewReplicaSet | None
    revisions: tuple[tuple[str, int], ...]  # (replica set, revision annotation to set)
    scale: tuple[tuple[str, int], ...]  # (replica set, new spec.replicas)
    delete: tuple[str, ...]  # old replica sets beyond revisionHistoryLimit
    status: DeploymentStatus


def _canonical(template: Mapping[str, Any]) -> str:
    return json.dumps(template, sort_keys=True, separators=(",", ":"), default=str)


def template_hash(template: Mapping[str, Any], collision_count: int = 0) -> str:
    """Short stable hash of a template, as pod-template-hash: fnv32a, then safe-encoded.

    `collision_count` salts it (little-endian, as Kubernetes) when a replica set of the same
    name but another template already exists; the shell bumps it on such a conflict.
    """
    data = _canonical(without_hash(template)).encode()
    if collision_count:
        data += collision_count.to_bytes(4, "little")
    value = 0x811C9DC5
    for byte in data:
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return "".join(_SAFE_ALPHANUMS[b % len(_SAFE_ALPHANUMS)] for b in str(value).encode())


def without_hash(template: Mapping[str, Any]) -> dict[str, Any]:
    """`template` without the template-hash label: what templates are compared by."""
    metadata = dict(template.get("metadata") or {})
    labels = {k: v for k, v in (metadata.get("labels") or {}).items() if k != TEMPLATE_HASH_LABEL}
    return {**template, "metadata": {**metadata, "labels": labels}}


def with_hash(template: Mapping[str, Any], hash_: str) -> dict[str, Any]:
    stripped = without_hash(template)
    metadata = stripped["metadata"]
    return {
        **stripped,
        "metadata": {**metadata, "labels": {**metadata["labels"], TEMPLATE_HASH_LABEL: hash_}},
    }


def find_new_and_old(
    template: Mapping[str, Any], replica_sets: Sequence[ReplicaSetInfo]
) -> tuple[ReplicaSetInfo | None, list[ReplicaSetInfo]]:
    """The replica set of the current template (the oldest if several) and all the others."""
    wanted = _canonical(without_hash(template))
    new = None
    for rs in sorted(replica_sets, key=lambda r: (r.created_at, r.name)):
        if new is None and _canonical(without_hash(rs.template)) == wanted:
            new = rs
    return new, [rs for rs in replica_sets if rs is not new]


def max_revision(replica_sets: Sequence[ReplicaSetInfo]) -> int:
    return max((rs.revision for rs in replica_sets), default=0)


def resolve_int_or_percent(value: int | str, total: int, round_up: bool) -> int:
    """An absolute count from `3` or `"25%"` of `total`."""
    if isinstance(value, int):
        return value
    scaled = int(value.rstrip("%")) * total / 100
    return math.ceil(scaled) if round_up else math.floor(scaled)


def resolve_fenceposts(
    max_surge: int | str, max_unavailable: int | str, replicas: int
) -> tuple[int, int]:
    """(surge, unavailable) for `replicas`: surge rounds up, unavailable down, never both 0.

    Both given as zero is invalid; percentages that merely round to zero get unavailable 1.
    """
    if max_surge in (0, "0%") and max_unavailable in (0, "0%"):
        raise InvalidRolloutStrategy("maxSurge and maxUnavailable must not both be zero")
    surge = resolve_int_or_percent(max_surge, replicas, round_up=True)
    unavailable = resolve_int_or_percent(max_unavailable, replicas, round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def max_unavailable(d: DeploymentInfo) -> int:
    """How many sandboxes may be unavailable for the deployment to count as Available."""
    if d.strategy != ROLLING_UPDATE or d.replicas == 0:
        return 0
    return min(resolve_fenceposts(d.max_surge, d.max_unavailable, d.replicas)[1], d.replicas)


def new_replicas_for_rolling(d: DeploymentInfo, specs: Mapping[str, int], new_name: str) -> int:
    """NewRSNewReplicas: grow the new set as far as maxSurge allows, never past replicas."""
    surge, _ = resolve_fenceposts(d.max_surge, d.max_unavailable, d.replicas)
    current = sum(specs.values())
    new_now = specs[new_name]
    if current >= d.replicas + surge:
        return new_now
    return new_now + min(d.replicas + surge - current, d.replicas - new_now)


def scale_down_old_for_rolling(
    d: DeploymentInfo, new: ReplicaSetInfo, olds: Sequence[ReplicaSetInfo], specs: dict[str, int]
) -> None:
    """reconcileOldReplicaSets: shrink old sets in `specs` without breaching maxUnavailable.

    Unhealthy old sandboxes go first (they cost no availability), then available ones, oldest
    replica set first, down to replicas - maxUnavailable available in total.
    """
    if sum(specs[rs.name] for rs in olds) == 0:
        return
    _, unavailable = resolve_fenceposts(d.max_surge, d.max_unavailable, d.replicas)
    min_available = d.replicas - unavailable
    new_unavailable = specs[new.name] - new.available_replicas
    max_scaled_down = sum(specs.values()) - min_available - new_unavailable
    if max_scaled_down <= 0:
        return
    by_age = sorted(olds, key=lambda rs: (rs.created_at, rs.name))
    cleaned = 0
    for rs in by_age:
        unhealthy = specs[rs.name] - rs.available_replicas
        if cleaned >= max_scaled_down or specs[rs.name] == 0 or unhealthy <= 0:
            continue
        step = min(max_scaled_down - cleaned, unhealthy)
        specs[rs.name] -= step
        cleaned += step
    available = new.available_replicas + sum(
        min(rs.available_replicas, specs[rs.name]) for rs in olds
    )
    budget = available - min_available
    for rs in by_age:
        if budget <= 0:
            break
        step = min(specs[rs.name], budget)
        specs[rs.name] -= step
        budget -= step


def _find_active_or_latest(
    new: ReplicaSetInfo | None, olds: Sequence[ReplicaSetInfo]
) -> ReplicaSetInfo | None:
    every = ([new] if new is not None else []) + list(olds)
    active = [rs for rs in every if rs.replicas > 0]
    if len(active) == 1:
        return active[0]
    if not active:
        return (
            new
            if new is not None
            else max(olds, key=lambda rs: (rs.created_at, rs.name), default=None)
        )
    return None


def _scale_paused(
    d: DeploymentInfo,
    new: ReplicaSetInfo | None,
    olds: Sequence[ReplicaSetInfo],
    specs: dict[str, int],
) -> None:
    """While paused only replicas changes apply: to the one active set, or the saturated new one."""
    target = _find_active_or_latest(new, olds)
    if target is not None:
        specs[target.name] = d.replicas
    elif new is not None and specs[new.name] == d.replicas and new.available_replicas == d.replicas:
        for rs in olds:
            specs[rs.name] = 0


def history_to_delete(
    olds: Sequence[ReplicaSetInfo], specs: Mapping[str, int], limit: int
) -> tuple[str, ...]:
    """The oldest revisions beyond `limit`, if fully scaled down (sets still running stay)."""
    excess = len(olds) - limit
    if excess <= 0:
        return ()
    oldest = sorted(olds, key=lambda rs: (rs.revision, rs.name))[:excess]
    return tuple(rs.name for rs in oldest if specs[rs.name] == 0 and rs.status_replicas == 0)


def sync(d: DeploymentInfo, replica_sets: Sequence[ReplicaSetInfo], now: float) -> DeploymentPlan:
    """One reconciliation of a SandboxDeployment: the changes to make and the status to write."""
    new, olds = find_new_and_old(d.template, replica_sets)
    specs = {rs.name: rs.replicas for rs in replica_sets}
    conditions = _paused_condition(d, now)
    revisions: tuple[tuple[str, int], ...] = ()
    if new is not None and new.revision <= max_revision(olds):
        revisions = ((new.name, max_revision(olds) + 1),)
    create = None
    if d.paused:
        _scale_paused(d, new, olds, specs)
    else:
        if new is None and (d.strategy == ROLLING_UPDATE or not _old_running(olds)):
            hash_ = template_hash(d.template, d.status.collision_count)
            new = ReplicaSetInfo(
                f"{d.name}-{hash_}", max_revision(olds) + 1, 0, with_hash(d.template, hash_), now
            )
            specs[new.name] = 0
            specs[new.name] = _first_size(d, specs, new.name)
            create = NewReplicaSet(new.name, hash_, new.revision, specs[new.name], new.template)
            message = f'Created new replica set "{new.name}"'
            conditions = set_condition(
                conditions, Condition(PROGRESSING, TRUE, "NewReplicaSetCreated", message), now, True
            )
        if d.strategy == RECREATE:
            _recreate(d, new, olds, specs)
        elif new is not None and create is None:
            _rolling(d, new, olds, specs)
        elif new is not None:
            # Created at its first size already; kube scales old sets down in the same sync.
            scale_down_old_for_rolling(d, new, olds, specs)
    return _plan(d, new, olds, specs, create, revisions, conditions, now)


def _first_size(d: DeploymentInfo, specs: Mapping[str, int], name: str) -> int:
    return d.replicas if d.strategy == RECREATE else new_replicas_for_rolling(d, specs, name)


def _old_running(olds: Sequence[ReplicaSetInfo]) -> bool:
    return any(rs.status_replicas > 0 for rs in olds)


def _recreate(
    d: DeploymentInfo,
    new: ReplicaSetInfo | None,
    olds: Sequence[ReplicaSetInfo],
    specs: dict[str, int],
) -> None:
    """Old sets to zero first; the new one grows only once no old sandbox exists any more."""
    if any(specs[rs.name] > 0 for rs in olds):
        for rs in olds:
            specs[rs.name] = 0
        return
    if new is not None and not _old_running(olds):
        specs[new.name] = d.replicas


def _rolling(
    d: DeploymentInfo, new: ReplicaSetInfo, olds: Sequence[ReplicaSetInfo], specs: dict[str, int]
) -> None:
    """reconcileNewReplicaSet, and only if that changed nothing, reconcileOldReplicaSets."""
    if specs[new.name] > d.replicas:
        specs[new.name] = d.replicas
        return
    if specs[new.name] < d.replicas:
        grown = new_replicas_for_rolling(d, specs, new.name)
        if grown != specs[new.name]:
            specs[new.name] = grown
            return
    scale_down_old_for_rolling(d, new, olds, specs)


def _paused_condition(d: DeploymentInfo, now: float) -> tuple[Condition, ...]:
    """Progressing turns Unknown while paused, so a pause never reads as a timed-out rollout."""
    current = find(d.status.conditions, PROGRESSING)
    reason = current.reason if current is not None else None
    if d.paused and reason != "DeploymentPaused":
        paused = Condition(PROGRESSING, UNKNOWN, "DeploymentPaused", "Deployment is paused")
        return set_condition(d.status.conditions, paused, now)
    if not d.paused and reason == "DeploymentPaused":
        resumed = Condition(PROGRESSING, UNKNOWN, "DeploymentResumed", "Deployment is resumed")
        return set_condition(d.status.conditions, resumed, now)
    return d.status.conditions


def _progressed(old: DeploymentStatus, new: DeploymentStatus) -> bool:
    """DeploymentProgressing: more updated, ready or available sandboxes, or fewer old ones."""
    return (
        new.updated_replicas > old.updated_replicas
        or new.replicas - new.updated_replicas < old.replicas - old.updated_replicas
        or new.ready_replicas > old.ready_replicas
        or new.available_replicas > old.available_replicas
    )


def _progressing(
    d: DeploymentInfo,
    status: DeploymentStatus,
    new: ReplicaSetInfo | None,
    conditions: tuple[Condition, ...],
    now: float,
) -> tuple[Condition, ...]:
    current = find(conditions, PROGRESSING)
    already_complete = current is not None and current.reason == "NewReplicaSetAvailable"
    if already_complete and status.replicas == status.updated_replicas:
        return conditions
    subject = f'ReplicaSet "{new.name}"' if new is not None else f'Deployment "{d.name}"'
    if _complete(d, status):
        done = Condition(
            PROGRESSING, TRUE, "NewReplicaSetAvailable", f"{subject} has successfully progressed."
        )
        return set_condition(conditions, done, now)
    if _progressed(d.status, status):
        going = Condition(PROGRESSING, TRUE, "ReplicaSetUpdated", f"{subject} is progressing.")
        return set_condition(conditions, going, now, touch=True)
    if (
        current is not None
        and current.reason not in ("NewReplicaSetAvailable", "ProgressDeadlineExceeded")
        and current.last_update_time + d.progress_deadline_seconds < now
    ):
        late = Condition(
            PROGRESSING,
            FALSE,
            "ProgressDeadlineExceeded",
            f"{subject} has timed out progressing.",
        )
        return set_condition(conditions, late, now)
    return conditions


def _complete(d: DeploymentInfo, status: DeploymentStatus) -> bool:
    return status.updated_replicas == status.replicas == status.available_replicas == d.replicas


def _plan(
    d: DeploymentInfo,
    new: ReplicaSetInfo | None,
    olds: Sequence[ReplicaSetInfo],
    specs: Mapping[str, int],
    create: NewReplicaSet | None,
    revisions: tuple[tuple[str, int], ...],
    conditions: tuple[Condition, ...],
    now: float,
) -> DeploymentPlan:
    every = ([new] if new is not None else []) + list(olds)
    available = sum(rs.available_replicas for rs in every)
    status = DeploymentStatus(
        observed_generation=d.generation,
        replicas=sum(rs.status_replicas for rs in every),
        updated_replicas=new.status_replicas if new is not None else 0,
        ready_replicas=sum(rs.ready_replicas for rs in every),
        available_replicas=available,
        unavailable_replicas=max(0, sum(specs.values()) - available),
        collision_count=d.status.collision_count,
    )
    if available >= d.replicas - max_unavailable(d):
        availability = Condition(
            AVAILABLE, TRUE, "MinimumReplicasAvailable", "Deployment has minimum availability."
        )
    else:
        availability = Condition(
            AVAILABLE,
            FALSE,
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
        )
    conditions = set_condition(conditions, availability, now)
    if not d.paused:
        conditions = _progressing(d, status, new, conditions, now)
    status = replace(status, conditions=conditions)
    delete: tuple[str, ...] = ()
    if d.paused or _complete(d, status):
        delete = history_to_delete(olds, specs, d.revision_history_limit)
    scale = tuple(
        (rs.name, specs[rs.name])
        for rs in sorted(every, key=lambda r: r.name)
        if rs.replicas != specs[rs.name] and (create is None or rs.name != create.name)
    )
    return DeploymentPlan(create, revisions, scale, delete, status)
