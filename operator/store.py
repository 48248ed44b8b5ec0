"""The operator's view of the cluster: the informer caches every controller decides on.

Why one store: controllers must decide on the same snapshot the watches built, and must act only
once it is complete — after a restart the operator lists every kind before any controller runs,
so it never deletes or re-creates what it simply has not seen yet. Writes go through the store
too (write-through), so a decision already counts the sandbox it just created or deleted before
the watch reports it: that, not timing, is what prevents duplicates. Events older than what the
store holds (by resourceVersion) are ignored, and deleted objects leave a tombstone so a late
event cannot resurrect them; a deletion itself is never stale (the object is gone, whichever
version of it the deleting event carries).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

from crds import constants as c

Obj = dict[str, Any]


class Kind(StrEnum):
    POD = "pods"
    LEASE = "leases"
    SANDBOX = c.SANDBOX_PLURAL
    REPLICASET = c.REPLICASET_PLURAL
    DEPLOYMENT = c.DEPLOYMENT_PLURAL
    ENDPOINTS = c.ENDPOINTS_PLURAL
    # Cluster-scoped (keys "/<name>"): which pods are nodes, and the namespaces' labels that
    # SandboxPools select tenants by.
    POOL = c.POOL_PLURAL
    NAMESPACE = "namespaces"
    # SandboxDeployments' build Jobs (label nest.sandbox.dev/build), owned by their deployment.
    JOB = "jobs"


def key_of(obj: Mapping[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


def controller_uid(obj: Mapping[str, Any]) -> str | None:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref["uid"])
    return None


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    """The controller reference an object `owner` creates puts on it (garbage collection, and
    how `controller_uid` finds the owner again)."""
    return {
        "apiVersion": owner.get("apiVersion", c.API_VERSION),
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _version(obj: Mapping[str, Any]) -> int:
    try:
        return int(obj["metadata"].get("resourceVersion") or 0)
    except ValueError:  # opaque on other storage backends; then every event is news
        return 0


class Store:
    """Objects by kind and key, with owner and pod indexes kept up to date on every change."""

    def __init__(self) -> None:
        self._objects: dict[Kind, dict[str, Obj]] = {kind: {} for kind in Kind}
        self._owned: dict[Kind, dict[str, set[str]]] = {k: defaultdict(set) for k in Kind}
        self._on_pod: dict[str, set[str]] = defaultdict(set)  # pod uid -> sandbox keys
        self._uids: dict[Kind, dict[str, str]] = {kind: {} for kind in Kind}  # uid -> key
        self._tombstones: dict[str, int] = {}  # uid -> resourceVersion at deletion

    def apply(self, kind: Kind, event: str, obj: Obj) -> bool:
        """Record a watch event (ADDED/MODIFIED/DELETED); False when it was stale."""
        key, uid, version = key_of(obj), obj["metadata"].get("uid"), _version(obj)
        old = self._objects[kind].get(key)
        # Another object of the same name is never the one this event is about.
        other = old is not None and uid and old["metadata"].get("uid") != uid
        same = None if other else old
        if event == "DELETED":
            return self._delete(kind, key, uid, version, same)
        if uid in self._tombstones and version <= self._tombstones[uid]:
            return False
        if same is not None and _version(same) > version:
            return False
        if old is not None:
            self._unindex(kind, key, old)
        self._objects[kind][key] = obj
        self._index(kind, key, obj)
        return True

    def _delete(self, kind: Kind, key: str, uid: str | None, version: int, old: Obj | None) -> bool:
        """A deletion is final whatever its resourceVersion: a relist reports it with the last
        state its informer saw, which may be older than what a write put here since (client-go's
        DeletedFinalStateUnknown); taken for stale, it left a deleted Sandbox here for good."""
        if old is not None:
            self._unindex(kind, key, old)
            del self._objects[kind][key]
            version = max(version, _version(old))
        elif uid in self._tombstones and version <= self._tombstones[uid]:
            return False
        if uid:
            self._tombstones[uid] = max(version, self._tombstones.get(uid, 0))
        return True

    def replace_all(self, kind: Kind, objects: Iterable[Obj]) -> None:
        """The result of a full LIST: what is not in it is gone."""
        listed = {key_of(o): o for o in objects}
        for key, obj in list(self._objects[kind].items()):
            if key not in listed:
                self.apply(kind, "DELETED", obj)
        for obj in listed.values():
            self.apply(kind, "ADDED", obj)

    def _index(self, kind: Kind, key: str, obj: Obj) -> None:
        self._uids[kind][obj["metadata"]["uid"]] = key
        owner = controller_uid(obj)
        if owner is not None:
            self._owned[kind][owner].add(key)
        if kind == Kind.SANDBOX:
            pod_uid = (obj["metadata"].get("labels") or {}).get(c.POD_UID_LABEL)
            if pod_uid:
                self._on_pod[pod_uid].add(key)

    def _unindex(self, kind: Kind, key: str, obj: Obj) -> None:
        self._uids[kind].pop(obj["metadata"]["uid"], None)
        owner = controller_uid(obj)
        if owner is not None:
            self._owned[kind][owner].discard(key)
        if kind == Kind.SANDBOX:
            pod_uid = (obj["metadata"].get("labels") or {}).get(c.POD_UID_LABEL)
            if pod_uid:
                self._on_pod[pod_uid].discard(key)

    def get(self, kind: Kind, key: str) -> Obj | None:
        return self._objects[kind].get(key)

    def all(self, kind: Kind) -> list[Obj]:
        return list(self._objects[kind].values())

    def labelled(self, kind: Kind, key: str, value: str) -> list[Obj]:
        """Objects of `kind` whose label `key` is `value` (a scan: pool pods are few)."""
        return [
            o for o in self._objects[kind].values()
            if (o["metadata"].get("labels") or {}).get(key) == value
        ]  # fmt: skip

    def in_namespace(self, kind: Kind, namespace: str) -> list[Obj]:
        prefix = f"{namespace}/"
        return [o for k, o in self._objects[kind].items() if k.startswith(prefix)]

    def owned(self, kind: Kind, owner_uid: str) -> list[Obj]:
        objects = self._objects[kind]
        return [objects[k] for k in sorted(self._owned[kind].get(owner_uid, ())) if k in objects]

    def on_pod(self, pod_uid: str) -> list[Obj]:
        objects = self._objects[Kind.SANDBOX]
        return [objects[k] for k in sorted(self._on_pod.get(pod_uid, ())) if k in objects]

    def by_uid(self, kind: Kind, uid: str) -> Obj | None:
        key = self._uids[kind].get(uid)
        return self._objects[kind].get(key) if key is not None else None

    def bound_pod_uids(self) -> list[str]:
        """Pod UIDs that bound sandboxes name, whether or not those pods still exist."""
        return [uid for uid, keys in self._on_pod.items() if keys]
