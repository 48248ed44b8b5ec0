"""The pod-lifecycle controller: sandboxes of a pool pod that is gone are evicted.

A pool pod that was deleted, has been NotReady longer than a grace period, or whose Lease expired
(its sidecar stopped renewing) can no longer run its sandboxes, and its sidecar may never release
their finalizers. So, like the node-lifecycle controller's eviction, this marks them Failed with
reason Evicted and releases the sidecar's finalizer on their behalf; their replica sets then
replace them on other pods. Sandboxes bound to pods that vanished while the operator was down are
found by the periodic sweep, since no event will ever mention their pod again.

The contract with the sidecar: the sidecar alone writes status and releases the finalizer of a
sandbox while its pod lives; this controller does both only for pods it judged dead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from crds import constants as c
from crds.sandbox import EVICTED_REASON
from nest_operator import adapters
from nest_operator.kube import JSON_PATCH, Kube
from nest_operator.store import Kind, Obj, Store, key_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Grace:
    """How long a pool pod may look unhealthy before its sandboxes are evicted."""

    not_ready_seconds: float = 30.0
    lease_expired_seconds: float = 0.0  # beyond the Lease's own leaseDurationSeconds


def why_dead(pod: Obj | None, lease: Obj | None, now: float, grace: Grace) -> str | None:
    """Why a pool pod can no longer run sandboxes, or None while it can: a pure decision."""
    if pod is None:
        return "its pool pod was deleted"
    if pod["metadata"].get("deletionTimestamp"):
        return "its pool pod is being deleted"
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

    def __init__(self, store: Store, kube: Kube, grace: Grace) -> None:
        self.store = store
        self.kube = kube
        self.grace = grace

    async def reconcile(self, pod_uid: str, now: float) -> None:
        pod = self.store.by_uid(Kind.POD, pod_uid)
        lease = self.store.get(Kind.LEASE, key_of(pod)) if pod is not None else None
        reason = why_dead(pod, lease, now, self.grace)
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
        except ApiException as exc:
            if exc.status != 404:
                raise
        log.info("evicted sandbox %s/%s: %s", namespace, name, why)
