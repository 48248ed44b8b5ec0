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

The contract with the sidecar: the sidecar alone writes status and releases the finalizer of a
sandbox while its pod lives; this controller does both only for pods it judged dead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from crds import constants as c
from crds.sandbox import EVICTED_REASON
from nest_kube import ApiError
from nest_operator import adapters
from nest_operator.kube import JSON_PATCH, Kube
from nest_operator.store import Kind, Obj, Store, key_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Grace:
    """How long a pool pod may look unhealthy before its sandboxes are evicted."""

    not_ready_seconds: float = 30.0
    lease_expired_seconds: float = 0.0  # beyond the Lease's own leaseDurationSeconds


def why_dead(
    pod: Obj | None, lease: Obj | None, now: float, grace: Grace, not_a_node: str | None = None
) -> str | None:
    """Why a pool pod can no longer run sandboxes, or None while it can: a pure decision.

    `not_a_node` is why the pod is not (any more) a node of its SandboxPool, if it is not.
    """
    if pod is None:
        return "its pool pod was deleted"
    if pod["metadata"].get("deletionTimestamp"):
        return "its pool pod is being deleted"
    if not_a_node is not None:
        return f"its pod is not a node of its pool: {not_a_node}"
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready" and cond.get("status") != "True":
            since = adapters.timestamp(cond.get("lastTransitionTime"))
            if since and now - since > grace.not_ready_seconds:
                return f"its pool pod has been NotReady for {now - since:.0f}s"
    spec = (lease or {}).get("spec") or {}
    renewed = adapters.timestamp(spec.get("renewTime"))
    duration = float(spec.get("leaseDurationSeconds") or 0)
    if renewed and now - renewed > duration + grace.lease_expired_seconds:
        return f"its pool pod's Lease expired {now - renewed - duration:.0f}s ago"
    return None


class LifecycleController:
    """Evicts the sandboxes of dead pool pods; keyed by pod UID."""

    def __init__(
        self,
        store: Store,
        kube: Kube,
        grace: Grace,
        membership: Callable[[Obj], str | None] | None = None,
    ) -> None:
        """`membership(pod)`: why a pod is not a node of its pool, None when it is."""
        self.store = store
        self.kube = kube
        self.grace = grace
        self.membership = membership

    async def reconcile(self, pod_uid: str, now: float) -> None:
        pod = self.store.by_uid(Kind.POD, pod_uid)
        lease = self.store.get(Kind.LEASE, key_of(pod)) if pod is not None else None
        not_a_node = None
        if pod is not None and self.membership is not None and self.store.on_pod(pod_uid):
            not_a_node = self.membership(pod)
        reason = why_dead(pod, lease, now, self.grace, not_a_node)
        if reason is None:
            return
        for sandbox in self.store.on_pod(pod_uid):
            await self._evict(sandbox, reason, now)

    async def _evict(self, sandbox: Obj, why: str, now: float) -> None:
        meta = sandbox["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        finalizers = list(meta.get("finalizers") or [])
        mark = (
            not meta.get("deletionTimestamp")
            and (sandbox.get("status") or {}).get("reason") != EVICTED_REASON
        )
        release = c.SIDECAR_FINALIZER in finalizers
        if not (mark or release):
            return  # evicted already; its replica set deletes it
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
        log.info("evicted sandbox %s/%s: %s", namespace, name, why)
