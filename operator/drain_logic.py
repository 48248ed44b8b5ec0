"""Draining a pool pod that is being deleted: replacements first, then the old sandboxes go.

Why: evicting every sandbox of a pool pod the moment it is deleted (a rolling update of the pool,
a scale-down, a drain) failed the calls in flight and left each function short of a replica
until its replacement started: a fault study counted 17 failed requests for one graceful pod
delete. Kubernetes moves a node's pods the other way round (`kubectl drain`): cordon the node,
evict within the disruption budget so that replacements run first, then stop the node. Nest
does the same per replica set, as pure decisions over a snapshot so they are tested as tables:

- The pool pod is cordoned (the scheduler's PodDraining filter) and keeps serving until its
  grace period nearly ends (the sidecar and the runtime do not stop on SIGTERM while they
  hold sandboxes).
- The lifecycle controller marks each sandbox of a replica set on the pod with the pod's
  deadline (`DRAIN_ANNOTATION`): a fact the replica set controller reads without the pod, and a
  sandbox event that wakes it. Stand-alone sandboxes have nobody to replace them: evicted at once.
- The replica set creates a surge replacement for each (within maxSurge, at least one at a
  time), and takes an old sandbox out of the endpoints only while enough others are Ready
  (`OUT_ANNOTATION`; the endpoints controller omits it, so the gateway stops routing to it);
  then it deletes it once its in-flight calls had time to end (`drain_seconds`).
- When the deadline is near every leaving sandbox is deleted whatever is Ready: the pod stops
  anyway, and a deleted sandbox is stopped by its sidecar, in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from crds import RollingUpdate
from crds import constants as c
from nest_operator.deployment_logic import resolve_int_or_percent

# The CRD's default, from the model that declares it.
DEFAULT_MAX_SURGE = RollingUpdate.model_fields["max_surge"].default

# On a replica set's sandbox of a pod being deleted: the pod's deadline (its deletionTimestamp,
# which the API server sets to the moment its grace period ends), RFC 3339.
DRAIN_ANNOTATION = f"{c.GROUP}/drain-deadline"
# On a leaving sandbox the replica set took out of the endpoints: since when, RFC 3339.
OUT_ANNOTATION = f"{c.GROUP}/drained-since"
# The least time between leaving the endpoints and being deleted: the gateways watch the
# endpoints and must see the change before the sandbox stops answering.
MIN_DRAIN_SECONDS = 3.0
# The most a sandbox waits for its in-flight calls: a function's timeout may be 15 minutes,
# more than any pool pod's grace period.
MAX_DRAIN_SECONDS = 30.0
# How long before the pod's deadline every leaving sandbox is deleted regardless, so that its
# sidecar stops it and releases it before the pod is killed.
DEADLINE_MARGIN = 8.0


@dataclass(frozen=True, slots=True)
class Leaving:
    """An active sandbox of the replica set on a pool pod being deleted."""

    name: str
    ready: bool
    deadline: float  # seconds since the epoch: when its pod's grace period ends
    out_since: float | None = None  # when it was taken out of the endpoints, if it was
    timeout: float = 30.0  # its function's timeoutSeconds: the longest call in flight


@dataclass(frozen=True, slots=True)
class DrainDecision:
    """What the replica set controller does about its leaving sandboxes now."""

    create_cap: int | None = None  # at most this many creations now (None: no cap)
    take_out: tuple[str, ...] = ()  # out of the endpoints now
    delete: tuple[str, ...] = ()  # drained: delete now
    wake_in: float | None = None  # decide again in this many seconds (a drain wait ends)


def surge(max_surge: int | str | None, desired: int) -> int:
    """Sandboxes the replica set may run above `desired` while it drains (maxSurge of its
    deployment's rolling update, rounded up as kube does; at least one: with maxSurge 0 a
    drain still moves one sandbox at a time, or it would never move any)."""
    value = DEFAULT_MAX_SURGE if max_surge is None else max_surge
    return max(1, resolve_int_or_percent(value, desired, round_up=True))


def drain_seconds(leaving: Leaving) -> float:
    """When (epoch) a sandbox taken out of the endpoints may be deleted: its function's timeout
    (bounded), never before the gateways saw it leave, never past the margin before its
    pod's deadline."""
    assert leaving.out_since is not None
    wait = min(max(leaving.timeout, MIN_DRAIN_SECONDS), MAX_DRAIN_SECONDS)
    return min(leaving.out_since + wait, leaving.deadline - DEADLINE_MARGIN)


def plan(
    desired: int,
    staying: int,
    staying_ready: int,
    leaving: Sequence[Leaving],
    max_surge: int,
    now: float,
) -> DrainDecision:
    """The drain of one replica set at wall-clock `now`.

    `staying`/`staying_ready`: its active sandboxes not on a leaving pod, and how many of them
    are Ready; `leaving`: its active sandboxes on pods being deleted; `max_surge` from `surge()`.
    Creations replace leaving sandboxes (the ordinary reconcile counts only the staying ones),
    capped so that no more than `desired + max_surge` are in service. A leaving sandbox leaves the
    endpoints when it is not Ready (it serves nothing) or when enough others are Ready without
    it; it is deleted once drained, or when its pod's deadline is near.
    """
    if not leaving:
        return DrainDecision()
    inside = [s for s in leaving if s.out_since is None]
    cap = max(0, desired + max_surge - staying - len(inside))
    delete: list[str] = []
    take_out: list[str] = []
    wake: list[float] = []
    spare = staying_ready + sum(1 for s in inside if s.ready) - desired
    for s in sorted(leaving, key=lambda s: (s.out_since is None, not s.ready, s.deadline, s.name)):
        late = now >= s.deadline - DEADLINE_MARGIN
        if s.out_since is not None:
            at = drain_seconds(s)
            if late or now >= at:
                delete.append(s.name)
            else:
                wake.append(at - now)
        elif late:
            delete.append(s.name)  # no time is left to wait for a replacement
        elif not s.ready:
            take_out.append(s.name)
        elif spare > 0:
            take_out.append(s.name)
            spare -= 1
        else:
            wake.append(s.deadline - DEADLINE_MARGIN - now)
    if take_out:  # drained ones are deleted on a later pass: the endpoints change first
        wake.append(MIN_DRAIN_SECONDS)
    return DrainDecision(
        create_cap=cap,
        take_out=tuple(take_out),
        delete=tuple(delete),
        wake_in=min(wake) if wake else None,
    )
