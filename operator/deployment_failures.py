"""What a SandboxDeployment shows when its replica sets fail, and how it backs off.

Why a module of its own: `deployment_logic.sync` decides a rollout as if every write succeeds.
Two things it cannot see make a deployment look healthy while nothing happens: the API server
refusing the new replica set (a quota, admission, a request too large for etcd), and a replica
set that cannot keep its sandboxes (`ReplicaFailure` on it: a refused creation, a selector that
does not match, a sandbox that crashed a shared runtime). Kubernetes' Deployment controller
shows both on the Deployment (`pkg/controller/deployment/sync.go` getNewReplicaSet: Progressing
False `ReplicaSetCreateError` and a Warning Event; `progress.go`: the replica sets'
`ReplicaFailure` copied up, the new set's first), and so does this, with the API server's own
message, at the first failed attempt.

A refused creation is retried with an exponential back-off per deployment and per replica set
name, so a deployment the API server keeps refusing costs one request per back-off period, not
one per watch event; a new template (a new name) is tried at once. Pure: `now` is injected and
the shell keeps the `CreateFailure` between syncs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from nest_operator.conditions import (
    FALSE,
    TRUE,
    Condition,
    find,
    remove_condition,
    set_condition,
)
from nest_operator.deployment_logic import (
    AVAILABLE,
    PROGRESSING,
    DeploymentInfo,
    DeploymentPlan,
    DeploymentStatus,
    ReplicaSetInfo,
    find_new_and_old,
    sync,
)

REPLICA_FAILURE = "ReplicaFailure"
FAILED_CREATE = "FailedCreate"
# kube's FailedRSCreateReason, on the Progressing condition.
CREATE_ERROR = "ReplicaSetCreateError"
# First retry after a second, doubling up to five minutes: a cause that goes away (a quota
# raised) is picked up quickly, one that stays costs little.
BACKOFF_BASE = 1.0
BACKOFF_MAX = 300.0


@dataclass(frozen=True, slots=True)
class CreateFailure:
    """The API server refused to create replica set `name`; try again at `retry_at`."""

    name: str
    message: str  # the API server's message
    attempts: int
    retry_at: float


def backoff(attempts: int) -> float:
    """Seconds to wait after `attempts` refused creations in a row."""
    return float(min(BACKOFF_MAX, BACKOFF_BASE * 2.0 ** max(0, attempts - 1)))


def refused(previous: CreateFailure | None, name: str, message: str, now: float) -> CreateFailure:
    """The failure to remember after the API server refused `name` (again)."""
    again = previous is not None and previous.name == name
    attempts = previous.attempts + 1 if again and previous is not None else 1
    return CreateFailure(name, message, attempts, now + backoff(attempts))


def create_error_message(failure: CreateFailure) -> str:
    """The Event's and Progressing condition's message, as kube words it."""
    return f'Failed to create new replica set "{failure.name}": {failure.message}'


def failed_status(
    d: DeploymentInfo, planned: DeploymentStatus, failure: CreateFailure, now: float
) -> DeploymentStatus:
    """The status while the new replica set cannot be created: the counts and Available as
    planned, Progressing False (`ReplicaSetCreateError`) and `ReplicaFailure` (`FailedCreate`)
    with the API server's message; the conditions are based on the ones last written, so
    repeating the same failure does not change them."""
    conditions = tuple(d.status.conditions)
    available = find(planned.conditions, AVAILABLE)
    if available is not None:
        conditions = set_condition(conditions, available, now)
    progressing = Condition(PROGRESSING, FALSE, CREATE_ERROR, create_error_message(failure))
    conditions = set_condition(conditions, progressing, now)
    failed = Condition(REPLICA_FAILURE, TRUE, FAILED_CREATE, failure.message)
    conditions = set_condition(conditions, failed, now)
    return replace(planned, conditions=conditions)


def replica_failure(d: DeploymentInfo, replica_sets: Sequence[ReplicaSetInfo]) -> Condition | None:
    """The `ReplicaFailure` to show (kube's getReplicaFailures): the new set's, else any old
    set's, else none."""
    new, olds = find_new_and_old(d.template, replica_sets)
    for rs in ([new] if new is not None else []) + sorted(olds, key=lambda r: r.name):
        failed = find(rs.conditions, REPLICA_FAILURE)
        if failed is not None and failed.status == TRUE:
            return Condition(REPLICA_FAILURE, TRUE, failed.reason, failed.message)
    return None


def plan(
    d: DeploymentInfo,
    replica_sets: Sequence[ReplicaSetInfo],
    now: float,
    failure: CreateFailure | None = None,
) -> tuple[DeploymentPlan, float]:
    """`sync`, with the replica sets' failures shown, and a creation the API server refused
    held back until its back-off has passed: (plan, seconds until the retry, or 0).

    While held, nothing else is done either (kube's sync stops at a failed creation too): the
    old replica sets stay as they are, so a rollout never scales down for a set that is not
    there.
    """
    planned = sync(d, replica_sets, now)
    create = planned.create
    holding = failure is not None and create is not None and failure.name == create.name
    if failure is not None and holding and now < failure.retry_at:
        held = failed_status(d, planned.status, failure, now)
        return DeploymentPlan(None, (), (), (), held), failure.retry_at - now
    shown = replica_failure(d, replica_sets)
    conditions = planned.status.conditions
    if shown is not None:
        conditions = set_condition(conditions, shown, now)
    else:
        conditions = remove_condition(conditions, REPLICA_FAILURE)
    return replace(planned, status=replace(planned.status, conditions=conditions)), 0.0
