"""The SandboxReplicaSet controller: keeps `replicas` active Sandboxes for each replica set.

Decisions come from `replicaset_logic`; this module reads the store, adopts and releases
sandboxes by selector (as the ReplicaSet controller adopts pods), creates and deletes through
`Kube`, and writes status only when it changed. Creations go out in doubling batches (kube's
slow start), so a broken template fails on one sandbox, not on five hundred.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from typing import Any

from kubernetes.client.exceptions import ApiException

from crds import constants as c
from crds.common import LabelSelector
from nest_operator import adapters
from nest_operator.kube import Kube
from nest_operator.replicaset_logic import ReplicaSetStatus, reconcile, status
from nest_operator.scheduler import SchedulerCache
from nest_operator.store import Kind, Obj, Store, controller_uid, key_of

log = logging.getLogger(__name__)
SLOW_START_INITIAL = 4


def owner_reference(owner: Obj) -> dict[str, Any]:
    return {
        "apiVersion": owner.get("apiVersion", c.API_VERSION),
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def sandbox_from_template(rs: Obj) -> dict[str, Any]:
    """A new Sandbox of `rs`, labelled with its function and revision when a deployment owns it."""
    template = rs["spec"]["template"]
    meta = template.get("metadata") or {}
    labels = dict(meta.get("labels") or {})
    annotations = dict(meta.get("annotations") or {})
    for ref in rs["metadata"].get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == c.DEPLOYMENT_KIND:
            labels[c.FUNCTION_LABEL] = ref["name"]
    revision = (rs["metadata"].get("annotations") or {}).get(c.REVISION_ANNOTATION)
    if revision:
        annotations[c.REVISION_ANNOTATION] = revision
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.SANDBOX_KIND,
        "metadata": {
            "generateName": f"{rs['metadata']['name']}-",
            "namespace": rs["metadata"]["namespace"],
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner_reference(rs)],
        },
        "spec": copy.deepcopy(template["spec"]),
    }


def status_body(result: ReplicaSetStatus, selector: str) -> dict[str, Any]:
    return {
        "replicas": result.replicas,
        "fullyLabeledReplicas": result.fully_labeled_replicas,
        "readyReplicas": result.ready_replicas,
        "availableReplicas": result.available_replicas,
        "observedGeneration": result.observed_generation,
        "conditions": adapters.conditions_to(result.conditions),
        "selector": selector,
    }


class ReplicaSetController:
    """Reconciles one SandboxReplicaSet key ("namespace/name") at a time."""

    def __init__(self, store: Store, kube: Kube, cache: SchedulerCache) -> None:
        self.store = store
        self.kube = kube
        self.cache = cache

    def keys_for_sandbox(self, sandbox: Obj) -> list[str]:
        owner = controller_uid(sandbox)
        if owner is None:  # an orphan may be adopted by any replica set of its namespace
            namespace = sandbox["metadata"]["namespace"]
            return [key_of(rs) for rs in self.store.in_namespace(Kind.REPLICASET, namespace)]
        rs = self.store.by_uid(Kind.REPLICASET, owner)
        return [key_of(rs)] if rs is not None else []

    async def reconcile(self, key: str) -> None:
        rs = self.store.get(Kind.REPLICASET, key)
        if rs is None or rs["metadata"].get("deletionTimestamp"):
            return  # the garbage collector removes what it owned
        selector = LabelSelector.model_validate(rs["spec"].get("selector") or {})
        owned = await self._claim(rs, selector)
        snapshots = [adapters.owned_sandbox(s) for s in owned]
        load = {info.pod.uid: info.count for info in self.cache.pods()}
        decision = reconcile(int(rs["spec"].get("replicas", 1)), snapshots, load)
        failure = None
        try:
            await self._create(rs, decision.create)
            by_name = {s["metadata"]["name"]: s for s in owned}
            finished = [s for s, snap in zip(owned, snapshots, strict=True) if snap.finished]
            doomed = [by_name[name] for name in decision.delete] + finished
            await asyncio.gather(*(self.kube.delete(Kind.SANDBOX, s) for s in doomed))
        except ApiException as exc:
            failure = f"{exc.status} {exc.reason}: {(exc.body or '')[:200]}"
            self.kube.event(rs, "Warning", "FailedCreate", failure)
        await self._write_status(rs, selector, failure)
        if failure is not None:
            raise RuntimeError(failure)

    async def _claim(self, rs: Obj, selector: LabelSelector) -> list[Obj]:
        """Owned sandboxes after adopting matching orphans and releasing non-matching ones."""
        uid = rs["metadata"]["uid"]
        owned = []
        for sandbox in self.store.in_namespace(Kind.SANDBOX, rs["metadata"]["namespace"]):
            owner = controller_uid(sandbox)
            labels = sandbox["metadata"].get("labels") or {}
            matches = selector.matches(labels)
            deleting = bool(sandbox["metadata"].get("deletionTimestamp"))
            if owner == uid and matches:
                owned.append(sandbox)
            elif owner == uid and not deleting:
                patch: dict[str, Any] = {"metadata": {"ownerReferences": None}}
                await self.kube.patch(Kind.SANDBOX, *_ns_name(sandbox), patch)
            elif owner is None and matches and not deleting:
                patch = {"metadata": {"ownerReferences": [owner_reference(rs)]}}
                owned.append(await self.kube.patch(Kind.SANDBOX, *_ns_name(sandbox), patch))
        return owned

    async def _create(self, rs: Obj, count: int) -> None:
        body = sandbox_from_template(rs)
        namespace = rs["metadata"]["namespace"]
        batch = SLOW_START_INITIAL
        while count > 0:
            size = min(batch, count)
            await asyncio.gather(
                *(
                    self.kube.create(Kind.SANDBOX, namespace, copy.deepcopy(body))
                    for _ in range(size)
                )
            )
            count -= size
            batch *= 2

    async def _write_status(self, rs: Obj, selector: LabelSelector, failure: str | None) -> None:
        current = rs.get("status") or {}
        owned = self.store.owned(Kind.SANDBOX, rs["metadata"]["uid"])
        template_labels = ((rs["spec"].get("template") or {}).get("metadata") or {}).get("labels")
        result = status(
            [adapters.owned_sandbox(s) for s in owned],
            template_labels or {},
            int(rs["metadata"].get("generation", 1)),
            adapters.conditions_from(current),
            time.time(),
            failure,
        )
        body = status_body(result, selector.to_selector_string())
        if any(current.get(k) != v for k, v in body.items()):
            await self.kube.patch_status(Kind.REPLICASET, *_ns_name(rs), body)


def _ns_name(obj: Obj) -> tuple[str, str]:
    return obj["metadata"]["namespace"], obj["metadata"]["name"]
