"""The endpoints controller: one SandboxEndpoints per SandboxDeployment, listing its addresses.

The gateway and downstream platforms route from this one small object per function instead of
watching every Sandbox, as kube-proxy reads Endpoints rather than Pods. The address list is a
pure function of the deployment's sandboxes; the object is written only when it changed. A
sandbox its replica set took out while draining a pool pod (`drain_logic.OUT_ANNOTATION`) is
listed not ready, as an EndpointSlice lists a terminating pod: the gateway sends it nothing new.
"""

from __future__ import annotations

from typing import Any

from crds import constants as c
from nest_kube import ApiError
from nest_operator import adapters
from nest_operator.drain_logic import OUT_ANNOTATION
from nest_operator.kube import Kube
from nest_operator.store import Kind, Obj, Store, controller_uid, key_of, owner_reference


def addresses(sandboxes: list[tuple[Obj, int]]) -> dict[str, Any]:
    """Endpoints status from (sandbox, revision) pairs: ready ones and the rest, by name."""
    ready: list[dict[str, Any]] = []
    not_ready: list[dict[str, Any]] = []
    for sandbox, revision in sorted(sandboxes, key=lambda pair: pair[0]["metadata"]["name"]):
        meta, spec, status = (
            sandbox["metadata"],
            sandbox.get("spec") or {},
            sandbox.get("status") or {},
        )
        if meta.get("deletionTimestamp") or not spec.get("podName"):
            continue  # unbound sandboxes have no address yet, ready or not
        address: dict[str, Any] = {
            "sandbox": meta["name"],
            "uid": meta["uid"],
            "revision": revision,
        }
        if spec.get("podName"):
            address["podName"] = spec["podName"]
        if status.get("podIP"):
            address["podIP"] = status["podIP"]
        if status.get("port"):
            address["port"] = status["port"]
        drained = OUT_ANNOTATION in (meta.get("annotations") or {})
        is_ready = (
            not drained  # leaving a pod being deleted: no new call, the ones in flight end
            and status.get("phase") == "Running"
            and adapters.condition_true(sandbox, "Ready")
            and "podIP" in address
            and "port" in address
        )
        (ready if is_ready else not_ready).append(address)
    return {
        "ready": ready,
        "notReady": not_ready,
        "readyCount": len(ready),
        "notReadyCount": len(not_ready),
    }


class EndpointsController:
    """Keeps each deployment's SandboxEndpoints current; keyed like the deployment."""

    def __init__(self, store: Store, kube: Kube) -> None:
        self.store = store
        self.kube = kube

    def key_for_sandbox(self, sandbox: Obj) -> str | None:
        rs_uid = controller_uid(sandbox)
        rs = self.store.by_uid(Kind.REPLICASET, rs_uid) if rs_uid else None
        d_uid = controller_uid(rs) if rs is not None else None
        d = self.store.by_uid(Kind.DEPLOYMENT, d_uid) if d_uid else None
        return key_of(d) if d is not None else None

    async def reconcile(self, key: str) -> None:
        d = self.store.get(Kind.DEPLOYMENT, key)
        if d is None or d["metadata"].get("deletionTimestamp"):
            return  # owned by the deployment: the garbage collector removes it
        pairs = []
        for rs in self.store.owned(Kind.REPLICASET, d["metadata"]["uid"]):
            revision = int(
                (rs["metadata"].get("annotations") or {}).get(c.REVISION_ANNOTATION) or 0
            )
            pairs += [(s, revision) for s in self.store.owned(Kind.SANDBOX, rs["metadata"]["uid"])]
        desired = addresses(pairs)
        namespace, name = d["metadata"]["namespace"], d["metadata"]["name"]
        endpoints = self.store.get(Kind.ENDPOINTS, key)
        if endpoints is None:
            body = {
                "apiVersion": c.API_VERSION,
                "kind": c.ENDPOINTS_KIND,
                "metadata": {"name": name, "namespace": namespace,
                             "ownerReferences": [owner_reference(d)]},
            }  # fmt: skip
            try:
                endpoints = await self.kube.create(Kind.ENDPOINTS, namespace, body)
            except ApiError as exc:
                if exc.status != 409:
                    raise
                return  # created meanwhile; its watch event brings us back
        current = endpoints.get("status") or {}
        if any(current.get(k) != v for k, v in desired.items()):
            await self.kube.patch_status(Kind.ENDPOINTS, namespace, name, desired)
