"""The SandboxDeployment controller: one SandboxReplicaSet per template, rolled like apps/v1.

`deployment_logic.sync` decides (which set is new, how far to scale each during a rolling update
or a recreate, which old sets to prune, the status); this module only applies the plan in its
order — create, revisions, scale, delete, status — and handles a name collision the way the
Deployment controller does, by bumping `collisionCount` so the next hash differs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from kubernetes.client.exceptions import ApiException

from crds import constants as c
from crds.common import LabelSelector
from nest_operator import adapters
from nest_operator.deployment_logic import DeploymentPlan, DeploymentStatus, sync
from nest_operator.kube import Kube
from nest_operator.replicaset_controller import owner_reference
from nest_operator.store import Kind, Obj, Store, controller_uid, key_of

log = logging.getLogger(__name__)


def status_body(status: DeploymentStatus, selector: str) -> dict[str, Any]:
    return {
        "observedGeneration": status.observed_generation,
        "replicas": status.replicas,
        "updatedReplicas": status.updated_replicas,
        "readyReplicas": status.ready_replicas,
        "availableReplicas": status.available_replicas,
        "unavailableReplicas": status.unavailable_replicas,
        "conditions": adapters.conditions_to(status.conditions),
        "collisionCount": status.collision_count,
        "selector": selector,
    }


class DeploymentController:
    """Reconciles one SandboxDeployment key ("namespace/name") at a time."""

    def __init__(self, store: Store, kube: Kube) -> None:
        self.store = store
        self.kube = kube

    def key_for_replicaset(self, rs: Obj) -> str | None:
        owner = controller_uid(rs)
        deployment = self.store.by_uid(Kind.DEPLOYMENT, owner) if owner else None
        return key_of(deployment) if deployment is not None else None

    async def reconcile(self, key: str) -> None:
        d = self.store.get(Kind.DEPLOYMENT, key)
        if d is None or d["metadata"].get("deletionTimestamp"):
            return
        selector = LabelSelector.model_validate(d["spec"].get("selector") or {})
        owned = self.store.owned(Kind.REPLICASET, d["metadata"]["uid"])
        info = adapters.deployment_info(d, adapters.conditions_from(d.get("status") or {}))
        plan = sync(info, [adapters.replicaset_info(rs) for rs in owned], time.time())
        namespace = d["metadata"]["namespace"]
        if plan.create is not None and not await self._create(d, selector, plan):
            collided = replace(plan.status, collision_count=plan.status.collision_count + 1)
            body = status_body(collided, selector.to_selector_string())
            await self.kube.patch_status(Kind.DEPLOYMENT, namespace, d["metadata"]["name"], body)
            return  # the status change brings us back with a new hash
        for name, revision in plan.revisions:
            patch = {"metadata": {"annotations": {c.REVISION_ANNOTATION: str(revision)}}}
            await self.kube.patch(Kind.REPLICASET, namespace, name, patch)
        by_name = {rs["metadata"]["name"]: rs for rs in owned}
        for name, replicas in plan.scale:
            if name in by_name and by_name[name]["spec"].get("replicas") == replicas:
                continue
            await self.kube.patch(
                Kind.REPLICASET, namespace, name, {"spec": {"replicas": replicas}}
            )
        for name in plan.delete:
            if name in by_name:
                await self.kube.delete(Kind.REPLICASET, by_name[name])
        body = status_body(plan.status, selector.to_selector_string())
        current = d.get("status") or {}
        if any(current.get(k) != v for k, v in body.items()):
            await self.kube.patch_status(Kind.DEPLOYMENT, namespace, d["metadata"]["name"], body)

    async def _create(self, d: Obj, selector: LabelSelector, plan: DeploymentPlan) -> bool:
        """Create the new replica set; False on a name collision with another template."""
        new = plan.create
        assert new is not None
        labels = dict((new.template.get("metadata") or {}).get("labels") or {})
        match = dict(selector.match_labels)
        match[c.TEMPLATE_HASH_LABEL] = new.template_hash
        spec_selector = selector.model_dump(by_alias=True, exclude_none=True)
        spec_selector["matchLabels"] = match
        body = {
            "apiVersion": c.API_VERSION,
            "kind": c.REPLICASET_KIND,
            "metadata": {
                "name": new.name,
                "namespace": d["metadata"]["namespace"],
                "labels": labels,
                "annotations": {c.REVISION_ANNOTATION: str(new.revision)},
                "ownerReferences": [owner_reference(d)],
            },
            "spec": {"replicas": new.replicas, "selector": spec_selector, "template": new.template},
        }
        try:
            created = await self.kube.create(Kind.REPLICASET, d["metadata"]["namespace"], body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            existing = self.store.get(Kind.REPLICASET, f"{d['metadata']['namespace']}/{new.name}")
            # Ours from before a restart (the next sync sees it), or a genuine collision.
            return existing is not None and controller_uid(existing) == d["metadata"]["uid"]
        message = f"Scaled up replica set {new.name} to {new.replicas}"
        self.kube.event(d, "Normal", "ScalingReplicaSet", message)
        log.info(
            "%s: created %s (revision %s)", key_of(d), created["metadata"]["name"], new.revision
        )
        return True
