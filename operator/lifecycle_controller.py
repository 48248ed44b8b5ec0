"""The pod-lifecycle controller: sandboxes of a pool pod that is gone are evicted.

A pool pod that was deleted, has been NotReady longer than a grace period, or whose Lease expired
(its sidecar stopped renewing) can no longer run its sandboxes, and its sidecar may never release
their finalizers. A pod that stops being a node of its SandboxPool (the pool was edited or
deleted, or the pod's labels changed) is treated the same, at once: the pool owner said those
pods are not for the pool's tenants any more, and a sandbox left there would run outside every
tenancy rule the scheduler keeps. Changes that only narrow who may be *scheduled* (the pool's
namespaceSelector, isolation modes or tenancy, a namespace's labels) evict nothing, as a node
affinity is IgnoredDuringExecution: delete the sandboxes to have them rescheduled under the
new rules. So, like the node-lifecycle controller's eviction, this marks them Failed with
reason Evicted and releases the sidecar's finalizer on their behalf; their replica sets then
replace them on other pods. Sandboxes bound to pods that vanished while the operator was down are
found by the periodic sweep, since no event will ever mention their pod again.

An outage is not a node death: a stale Lease or a NotReady pod may be the control plane's fault
(nobody could write them), so eviction for health waits out a grace after the operator starts or
its watches recover, evicts nothing while most pool pods look unhealthy at once, and goes at a
limited rate (`lifecycle_logic` has the rules; this module only gathers their inputs and acts).

A pod being deleted whose containers still run is drained instead (`drain_logic`): its replica
sets' sandboxes are marked with its deadline, for their replica sets to replace first and take
out second; only stand-alone ones are evicted, and what is left once its grace nearly ends.

The contract with the sidecar: the sidecar alone writes status and releases the finalizer of a
sandbox while its pod lives; this controller does both only for pods it judged dead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from crds import constants as c
from crds.sandbox import EVICTED_REASON
from nest_kube import ApiError
from nest_operator import adapters
from nest_operator.drain_logic import DRAIN_ANNOTATION
from nest_operator.kube import JSON_PATCH, Kube
from nest_operator.lifecycle_logic import (
    Action,
    Calm,
    Decision,
    Grace,
    Hold,
    PodHealth,
    Policy,
    Snapshot,
    calm_since,
    decide,
    disruption,
    pod_health,
    rate_window,
    remember,
)
from nest_operator.lifecycle_logic import why_dead as why_dead  # re-exported: tests, callers
from nest_operator.store import Kind, Obj, Store, controller_uid, key_of

log = logging.getLogger(__name__)
SUSPENDED_REASON = "EvictionSuspended"  # the Event on a pool pod whose eviction is held
# The watches whose failure means the operator cannot see Leases being renewed.
WATCHED_KINDS = (Kind.POD, Kind.LEASE, Kind.SANDBOX)
__all__ = ["WATCHED_KINDS", "Grace", "LifecycleController", "Policy", "why_dead"]


class Watched(Protocol):
    """An informer, as far as eviction cares: since when its list+watch has been working."""

    @property
    def healthy_since(self) -> float | None: ...


def watches_healthy_since(watches: Iterable[Watched]) -> float | None:
    """The latest recovery of any of `watches` (monotonic), None while any of them fails."""
    latest = float("-inf")
    for watch in watches:
        since = watch.healthy_since
        if since is None:
            return None
        latest = max(latest, since)
    return latest


def needs_eviction(sandbox: Obj) -> bool:
    """Whether evicting `sandbox` still has something to write (mark it, or free it)."""
    meta = sandbox["metadata"]
    return _marks(sandbox) or c.SIDECAR_FINALIZER in (meta.get("finalizers") or [])


def _marks(sandbox: Obj) -> bool:
    return (
        not sandbox["metadata"].get("deletionTimestamp")
        and (sandbox.get("status") or {}).get("reason") != EVICTED_REASON
    )


class LifecycleController:
    """Evicts the sandboxes of dead pool pods; keyed by pod UID."""

    def __init__(
        self,
        store: Store,
        kube: Kube,
        grace: Grace,
        membership: Callable[[Obj], str | None] | None = None,
        *,
        policy: Policy | None = None,
        watches: Iterable[Watched] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`membership(pod)`: why a pod is not a node of its pool, None when it is. `watches`:
        the informers feeding the store (their clock is `clock`'s)."""
        self.store = store
        self.kube = kube
        self.grace = grace
        self.membership = membership
        self.policy = policy or Policy()
        self.watches = list(watches)
        self.clock = clock
        self._calm: Calm | None = None
        self._admitted: dict[str, float] = {}  # pod uid -> when admitted to eviction
        self._recent: list[float] = []  # admission times inside the rate window
        self._holds: dict[str, Hold] = {}  # pod uid -> why its eviction was last held

    async def reconcile(self, pod_uid: str, now: float) -> None:
        """Decide for one pod at wall-clock `now` (Leases and conditions carry wall time)."""
        mono = self.clock()
        pool = self._pool_health(now)
        self._note(disruption(pool.values(), self.policy), mono)
        self._prune(pool, mono)
        sandboxes = [s for s in self.store.on_pod(pod_uid) if needs_eviction(s)]
        if not sandboxes:
            return  # nothing to evict; and a pod without sandboxes must not use up the rate
        pod = self.store.by_uid(Kind.POD, pod_uid)
        health = pool.get(pod_uid) or pod_health(pod_uid, None, None, now, self.grace)
        if pod is not None and self.membership is not None:
            not_a_node = self.membership(pod)
            if not_a_node is not None:
                health = pod_health(pod_uid, pod, None, now, self.grace, not_a_node)
        decision = decide(health, self._snapshot(mono), self.policy)
        if decision.action is Action.KEEP:
            self._holds.pop(pod_uid, None)
            return
        if decision.action is Action.HOLD:
            self._held(pod_uid, pod, decision)
            return
        if decision.admit:
            self._admitted[pod_uid] = mono
            self._recent.append(mono)
        self._holds.pop(pod_uid, None)
        if decision.action is Action.DRAIN:
            assert health.draining is not None
            await self._drain(sandboxes, health.draining, now)
            return
        for sandbox in sandboxes:
            await self._evict(sandbox, decision.why, now)

    async def _drain(self, sandboxes: list[Obj], deadline: float, now: float) -> None:
        """A pod being deleted: its replica sets' sandboxes are marked with its deadline (their
        replica sets replace them, then take them out: `drain_logic`); the rest is evicted."""
        stamp = adapters.rfc3339(deadline)
        for sandbox in sandboxes:
            meta = sandbox["metadata"]
            if meta.get("deletionTimestamp"):
                continue  # its sidecar, still running, stops it and frees it
            if not self._replaced(sandbox):
                await self._evict(sandbox, "its pool pod is being deleted", now)
                continue
            if (meta.get("annotations") or {}).get(DRAIN_ANNOTATION) == stamp:
                continue
            patch = {"metadata": {"annotations": {DRAIN_ANNOTATION: stamp}}}
            try:
                await self.kube.patch(Kind.SANDBOX, meta["namespace"], meta["name"], patch)
            except ApiError as exc:
                if exc.status != 404:
                    raise
                continue
            log.info(
                "draining sandbox %s/%s: its pool pod is being deleted (until %s)",
                meta["namespace"], meta["name"], stamp,
            )  # fmt: skip

    def _replaced(self, sandbox: Obj) -> bool:
        """Whether a replica set will replace `sandbox` before it goes: it controls it, and is
        not itself going away."""
        if not _marks(sandbox):
            return False  # evicted already: only its finalizer is left to free
        owner = controller_uid(sandbox)
        rs = self.store.by_uid(Kind.REPLICASET, owner) if owner else None
        return rs is not None and not rs["metadata"].get("deletionTimestamp")

    # -- the snapshot --------------------------------------------------------------------------

    def _pool_health(self, now: float) -> dict[str, PodHealth]:
        """Every pool pod's health (membership aside: a sidecar's Lease tells of the control
        plane whichever pool its pod is in)."""
        health = {}
        for pod in self.store.all(Kind.POD):
            uid = pod["metadata"]["uid"]
            lease = self.store.get(Kind.LEASE, key_of(pod))
            health[uid] = pod_health(uid, pod, lease, now, self.grace)
        return health

    def _snapshot(self, mono: float) -> Snapshot:
        assert self._calm is not None
        return Snapshot(
            now=mono,
            calm_since=calm_since(self._calm, watches_healthy_since(self.watches)),
            disrupted=self._calm.disrupted,
            admitted=frozenset(self._admitted),
            recent=tuple(self._recent),
        )

    def _note(self, disrupted: str | None, mono: float) -> None:
        """Remember the mass staleness, logging when it begins and ends."""
        before = self._calm or Calm(started=mono)
        self._calm = remember(before, disrupted, mono)
        if disrupted is not None and before.disrupted is None:
            log.warning(
                "evicting no pool pod for its health: %s (a control-plane outage)", disrupted
            )
        elif disrupted is None and before.disrupted is not None:
            log.warning(
                "pool pods are no longer unhealthy all at once (%s); every sidecar gets %.0fs "
                "to renew before its pod is judged", before.disrupted, self.policy.startup_grace,
            )  # fmt: skip

    def _prune(self, pool: dict[str, PodHealth], mono: float) -> None:
        """Admissions end when their pod is healthy or gone; old ones stop counting."""
        for uid in list(self._admitted):
            health = pool.get(uid)
            if health is None or health.unhealthy is None:
                del self._admitted[uid]
        window = rate_window(self.policy)
        self._recent = [t for t in self._recent if mono - t < window]
        for uid in list(self._holds):
            if uid not in pool or pool[uid].unhealthy is None:
                del self._holds[uid]

    def _held(self, pod_uid: str, pod: Obj | None, decision: Decision) -> None:
        """Say once per change of reason why a pod's eviction waits (log, and an Event)."""
        if self._holds.get(pod_uid) == decision.hold:
            return
        self._holds[pod_uid] = decision.hold
        what = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}" if pod else pod_uid
        log.warning("not evicting the sandboxes of %s: %s", what, decision.why)
        if pod is not None:
            self.kube.event(pod, "Warning", SUSPENDED_REASON, f"{decision.hold}: {decision.why}")

    # -- the writes ----------------------------------------------------------------------------

    async def _evict(self, sandbox: Obj, why: str, now: float) -> None:
        meta = sandbox["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        finalizers = list(meta.get("finalizers") or [])
        mark = _marks(sandbox)
        release = c.SIDECAR_FINALIZER in finalizers
        try:
            if mark:
                status: dict[str, Any] = {
                    "phase": "Failed",
                    "reason": EVICTED_REASON,
                    "message": f"evicted: {why}",
                    "conditions": [
                        {"type": "Ready", "status": "False", "reason": EVICTED_REASON,
                         "message": why, "lastTransitionTime": adapters.rfc3339(now)}
                    ],
                }  # fmt: skip
                await self.kube.patch_status(Kind.SANDBOX, namespace, name, status)
                self.kube.event(sandbox, "Warning", EVICTED_REASON, f"Evicted: {why}")
            if release:
                path = f"/metadata/finalizers/{finalizers.index(c.SIDECAR_FINALIZER)}"
                patch = [
                    {"op": "test", "path": path, "value": c.SIDECAR_FINALIZER},
                    {"op": "remove", "path": path},
                ]
                await self.kube.patch(Kind.SANDBOX, namespace, name, patch, JSON_PATCH)
        except ApiError as exc:
            if exc.status != 404:
                raise
            # Gone, and its deletion never reached the store (a watch event lost): forget it
            # now, or every sweep would evict it again.
            self.kube.gone(Kind.SANDBOX, sandbox)
            log.info("sandbox %s/%s is gone already", namespace, name)
            return
        log.info("evicted sandbox %s/%s: %s", namespace, name, why)
