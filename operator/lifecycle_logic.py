"""The pod-lifecycle controller's decisions: which pool pods' sandboxes are evicted, and when.

Why a module of pure functions: evicting is the operator's most destructive act (every sandbox
of a pod is failed and replaced elsewhere), and its worst failure mode is not a bug in one
branch but a wrong reading of the whole picture. A fault study found it: after a control-plane
outage longer than the pool Lease (40 s) every healthy sandbox was evicted at once, because the
Leases had not been renewed *while nobody could write them*, and the operator judged them on its
first check after reconnecting. So the rules below follow Kubernetes' node lifecycle controller,
and they are decided over a snapshot (every pool pod's health, how long the control plane has
looked reachable, recent evictions) with a table of tests, not inside the I/O loop:

- **Facts evict at once**: a pod deleted, or no node of its pool any more. No outage makes a
  deleted pod come back.
- **A pod being deleted drains** (`drain_logic`): while its containers run and its grace
  period is not nearly over, the sandboxes of replica sets are left to their replica sets,
  which replace them first and then take them out; stand-alone sandboxes (nobody would replace
  them) are evicted at once. Once the grace is nearly over (`DEADLINE_MARGIN`), or its
  containers have stopped, it is a fact like any deletion: everything left is evicted.
- **Health is judged only after a grace** (`--startup-grace`, and at least the Lease's own
  duration): after the operator starts, after its watches fail and recover, and after a mass
  staleness ends, every sidecar gets a full Lease period to renew before its pod is judged by
  its Lease or its Ready condition (the node controller's startup grace and its reset of probe
  timestamps when leaving full disruption).
- **No mass eviction** (`--unhealthy-threshold`): when every counted pool pod is unhealthy, or
  at least `min_unhealthy` (3) and a fraction of at least the threshold (0.55, the node
  controller's `--unhealthy-zone-threshold`) are unhealthy at once, it is taken for the
  control plane's outage, not the pods', and no pod is evicted for its health. Evicting would
  gain nothing anyway when no healthy pod is left to take the sandboxes. A pod counts once it
  has a Lease and is not going away.
- **A rate limit** (`--eviction-rate`, pods per second, like `--node-eviction-rate`): pods are
  admitted to eviction one at a time; a pod once admitted stays admitted while unhealthy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from nest_operator import adapters
from nest_operator.drain_logic import DEADLINE_MARGIN

Obj = Mapping[str, Any]


@dataclass(frozen=True)
class Grace:
    """How long a pool pod may look unhealthy before it counts as unhealthy."""

    not_ready_seconds: float = 30.0
    lease_expired_seconds: float = 0.0  # beyond the Lease's own leaseDurationSeconds


@dataclass(frozen=True)
class Policy:
    """When unhealthy pods are evicted (the flags of the same names)."""

    startup_grace: float = 50.0  # > the 40 s Lease plus a 10 s renewal period
    eviction_rate: float = 0.1  # pods per second; 0: no limit
    eviction_burst: int = 1
    unhealthy_threshold: float = 0.55
    min_unhealthy: int = 3


@dataclass(frozen=True)
class PodHealth:
    """What a pool pod looks like to the lifecycle controller."""

    uid: str
    gone: str | None = None  # deleted, stopped, not a node: a fact, evicted at once
    draining: float | None = None  # being deleted and still running: its deadline (epoch)
    unhealthy: str | None = None  # Lease expired, NotReady too long: maybe the control plane's
    lease_seconds: float = 0.0  # its Lease's duration: the least grace before judging it
    counted: bool = False  # has a Lease and is not going: judged together with the others


def pod_health(
    uid: str,
    pod: Obj | None,
    lease: Obj | None,
    now: float,
    grace: Grace,
    not_a_node: str | None = None,
) -> PodHealth:
    """A pool pod's health at wall-clock `now`; `not_a_node` is why it left its pool, if it did."""
    if pod is None:
        return PodHealth(uid, gone="its pool pod was deleted")
    deleting = pod["metadata"].get("deletionTimestamp")
    if deleting:
        deadline = adapters.timestamp(deleting)
        if now >= deadline - DEADLINE_MARGIN or not still_running(pod):
            return PodHealth(uid, gone="its pool pod is being deleted")
        return PodHealth(uid, draining=deadline)
    if not_a_node is not None:
        return PodHealth(uid, gone=f"its pod is not a node of its pool: {not_a_node}")
    spec = (lease or {}).get("spec") or {}
    renewed = adapters.timestamp(spec.get("renewTime"))
    duration = float(spec.get("leaseDurationSeconds") or 0)
    unhealthy = None
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready" and cond.get("status") != "True":
            since = adapters.timestamp(cond.get("lastTransitionTime"))
            if since and now - since > grace.not_ready_seconds:
                unhealthy = f"its pool pod has been NotReady for {now - since:.0f}s"
    if unhealthy is None and renewed and now - renewed > duration + grace.lease_expired_seconds:
        unhealthy = f"its pool pod's Lease expired {now - renewed - duration:.0f}s ago"
    return PodHealth(uid, unhealthy=unhealthy, lease_seconds=duration, counted=bool(renewed))


def still_running(pod: Obj) -> bool:
    """Whether a pod's containers still run (a pod being deleted that still serves)."""
    status = pod.get("status") or {}
    if status.get("phase") not in (None, "Running"):
        return False
    containers = status.get("containerStatuses") or []
    return bool(containers) and all("running" in (cs.get("state") or {}) for cs in containers)


def why_dead(
    pod: Obj | None, lease: Obj | None, now: float, grace: Grace, not_a_node: str | None = None
) -> str | None:
    """Why a pool pod can no longer run sandboxes, or None while it can (before any grace)."""
    uid = str(pod["metadata"].get("uid") or "") if pod is not None else ""
    health = pod_health(uid, pod, lease, now, grace, not_a_node)
    if health.draining is not None:
        return "its pool pod is being deleted"  # draining: it takes no new sandbox
    return health.gone or health.unhealthy


def disruption(pods: Iterable[PodHealth], policy: Policy) -> str | None:
    """Why so many pool pods are unhealthy at once that the control plane is to blame, or None."""
    counted = [pod for pod in pods if pod.counted]
    bad = sum(1 for pod in counted if pod.unhealthy)
    if not bad:
        return None
    if bad == len(counted):
        return f"all {bad} pool pods with a Lease are unhealthy at once"
    if bad >= policy.min_unhealthy and bad / len(counted) >= policy.unhealthy_threshold:
        return (
            f"{bad} of {len(counted)} pool pods are unhealthy at once "
            f"(at least {policy.unhealthy_threshold:.0%})"
        )
    return None


@dataclass(frozen=True)
class Calm:
    """What the controller remembers between decisions about the control plane's state."""

    started: float  # monotonic: when the controller first decided
    disrupted: str | None = None  # the mass staleness under way, if any
    disruption_ended: float | None = None  # monotonic: when the last one ended


def remember(calm: Calm, disrupted: str | None, now: float) -> Calm:
    """`calm` after observing `disrupted` at monotonic `now`."""
    if calm.disrupted is not None and disrupted is None:
        return Calm(calm.started, None, now)
    return Calm(calm.started, disrupted, calm.disruption_ended)


def calm_since(calm: Calm, watches_healthy_since: float | None) -> float | None:
    """Since when (monotonic) the control plane has looked healthy to the operator; None while
    its watches fail. The latest of: the controller's start, its watches' recovery, the end of
    the last mass staleness."""
    if watches_healthy_since is None:
        return None
    ended = calm.disruption_ended if calm.disruption_ended is not None else calm.started
    return max(calm.started, watches_healthy_since, ended)


def rate_allows(recent: Iterable[float], now: float, policy: Policy) -> bool:
    """Whether one more pod may be admitted to eviction at monotonic `now` (a sliding window of
    `burst / rate` seconds holding at most `burst` admissions)."""
    if policy.eviction_rate <= 0:
        return True
    window = policy.eviction_burst / policy.eviction_rate
    return sum(1 for t in recent if now - t < window) < policy.eviction_burst


def rate_window(policy: Policy) -> float:
    """How long an admission counts against the rate (0: not at all)."""
    return policy.eviction_burst / policy.eviction_rate if policy.eviction_rate > 0 else 0.0


class Action(StrEnum):
    KEEP = "keep"  # healthy: nothing to do
    EVICT = "evict"
    DRAIN = "drain"  # being deleted: replica sets move theirs, the rest is evicted
    HOLD = "hold"  # unhealthy, but not evicted now (`Decision.why`)


class Hold(StrEnum):
    """Why an unhealthy pod is not evicted now (one log line and Event per change of it)."""

    NONE = ""
    WATCHES = "WatchesFailing"
    GRACE = "ControlPlaneGrace"
    DISRUPTION = "MassUnhealthy"
    RATE = "EvictionRateLimited"


@dataclass(frozen=True)
class Snapshot:
    """Everything beyond the pod itself that an eviction decision depends on."""

    now: float  # monotonic
    calm_since: float | None  # `calm_since()`: None while the watches fail
    disrupted: str | None = None  # `disruption()` over every pool pod
    admitted: frozenset[str] = frozenset()  # pods admitted to eviction, still unhealthy
    recent: tuple[float, ...] = ()  # monotonic times of recent admissions


@dataclass(frozen=True)
class Decision:
    action: Action
    why: str = ""  # the eviction's reason, or why it is held
    hold: Hold = Hold.NONE
    admit: bool = False  # a new admission: counts against the rate


def decide(pod: PodHealth, snap: Snapshot, policy: Policy) -> Decision:
    """Evict, hold or keep one pool pod's sandboxes."""
    if pod.gone is not None:
        return Decision(Action.EVICT, pod.gone)
    if pod.draining is not None:
        return Decision(Action.DRAIN, "its pool pod is being deleted")
    if pod.unhealthy is None:
        return Decision(Action.KEEP)
    if snap.calm_since is None:
        why = f"{pod.unhealthy}, but the operator's watches of the API server are failing"
        return Decision(Action.HOLD, why, Hold.WATCHES)
    calm = snap.now - snap.calm_since
    wait = max(policy.startup_grace, pod.lease_seconds)
    if calm < wait:
        why = (
            f"{pod.unhealthy}, but the control plane has looked healthy for only {calm:.0f}s "
            f"of the {wait:.0f}s its sidecar is given to renew after an outage or a restart"
        )
        return Decision(Action.HOLD, why, Hold.GRACE)
    if snap.disrupted is not None:
        why = f"{pod.unhealthy}, but {snap.disrupted}: taken for a control-plane outage"
        return Decision(Action.HOLD, why, Hold.DISRUPTION)
    if pod.uid in snap.admitted:
        return Decision(Action.EVICT, pod.unhealthy)
    if rate_allows(snap.recent, snap.now, policy):
        return Decision(Action.EVICT, pod.unhealthy, admit=True)
    why = f"{pod.unhealthy}, but pods are evicted at most {policy.eviction_rate:g} per second"
    return Decision(Action.HOLD, why, Hold.RATE)
