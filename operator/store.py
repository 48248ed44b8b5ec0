"""The operator's view of the cluster: the informer caches every controller decides on.

Why one store: controllers must decide on the same snapshot the watches built, and must act only
once it is complete — after a restart the operator lists every kind before any controller runs,
so it never deletes or re-creates what it simply has not seen yet. Writes go through the store
too (write-through), so a decision already counts the sandbox it just created or deleted before
the watch reports it: that, not timing, is what prevents duplicates. Events older than what the
store holds (by resourceVersion) are ignored, and deleted objects leave a tombstone so a late
event cannot resurrect them; a deletion itself is never stale (the object is gone, whichever
version of it the deleting event carries).

What is kept is what the controllers read: `strip` drops, where objects enter (watch events and
write-through alike), what no controller reads and what only grows with the number of writers
(managedFields, kubectl's last-applied copy of the whole object), and makes equal strings of
all objects one (interned: a watch event is decoded alone, so each object came with its own
"metadata", "lastTransitionTime", labels, source and messages; an interned string still goes
with its last object): a Sandbox of the scale benchmark held 10.8 KB, now 2.1 KB. Nothing the
operator writes is built from a stored object as a whole (it patches, never replaces: no PUT
of a stored object), so nothing dropped is written back. Objects are indexed by namespace, by
controller and, without one, as their namespace's orphans, so a replica set's claim costs what
it owns or could adopt, not what its namespace holds. Tombstones are the newest MAX_TOMBSTONES
deletions: a late event is one in flight while its object was deleted (the watch's lag), not
ten thousand deletions later; were one that late, its object would show until its deletion's
own event, which is never refused.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

from crds import constants as c

Obj = dict[str, Any]
# Metadata no controller reads: the server's per-writer field ownership, and the whole object
# again in the annotation `kubectl apply` keeps.
UNREAD_METADATA = ("managedFields",)
UNREAD_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)
# Deletions remembered against late events (uid, resourceVersion: about 200 bytes each).
MAX_TOMBSTONES = 10_000


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


def strip(obj: Obj) -> Obj:
    """`obj` without what no controller reads, its strings shared (module docstring).

    In place, the top-level dict kept: the informer's own cache holds this very dict, so it
    keeps the stripped copy too instead of a second, whole one."""
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        for field in UNREAD_METADATA:
            meta.pop(field, None)
        annotations = meta.get("annotations")
        if isinstance(annotations, dict):
            for name in UNREAD_ANNOTATIONS:
                annotations.pop(name, None)
    shared = [(sys.intern(key), _shared(value)) for key, value in obj.items()]
    obj.clear()
    obj.update(shared)
    return obj


def _shared(value: Any) -> Any:
    """`value` with every string interned: equal strings of different objects are one (sandboxes
    of a replica set repeat labels, source, condition messages; uids are merely not copied)."""
    kind = type(value)
    if kind is str:
        return sys.intern(value)
    if kind is dict:
        return {sys.intern(k): _shared(v) for k, v in value.items()}
    if kind is list:
        return [_shared(v) for v in value]
    return value


class _Index:
    """Keys by a value (an owner's uid, a namespace), with no empty set left behind: owners and
    namespaces come and go, and their index must not outlive them."""

    def __init__(self) -> None:
        self._keys: dict[str, set[str]] = {}

    def add(self, value: str, key: str) -> None:
        self._keys.setdefault(value, set()).add(key)

    def discard(self, value: str, key: str) -> None:
        keys = self._keys.get(value)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._keys[value]

    def get(self, value: str) -> list[str]:
        return sorted(self._keys.get(value, ()))

    def values(self) -> list[str]:
        return list(self._keys)


class Store:
    """Objects by kind and key, with namespace, owner, orphan and pod indexes kept up to date on
    every change."""

    def __init__(self, max_tombstones: int = MAX_TOMBSTONES) -> None:
        self._objects: dict[Kind, dict[str, Obj]] = {kind: {} for kind in Kind}
        self._namespaced: dict[Kind, _Index] = {kind: _Index() for kind in Kind}
        self._owned: dict[Kind, _Index] = {kind: _Index() for kind in Kind}  # by controller uid
        self._orphans: dict[Kind, _Index] = {kind: _Index() for kind in Kind}  # by namespace
        self._on_pod = _Index()  # pod uid -> sandbox keys
        self._uids: dict[Kind, dict[str, str]] = {kind: {} for kind in Kind}  # uid -> key
        # uid -> resourceVersion at deletion, oldest first (dicts keep insertion order)
        self._tombstones: dict[str, int] = {}
        self._max_tombstones = max_tombstones

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
        self._objects[kind][key] = strip(obj)
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
            self._bury(uid, max(version, self._tombstones.pop(uid, 0)))
        return True

    def _bury(self, uid: str, version: int) -> None:
        """Remember a deletion, the newest last; forget the oldest beyond the bound."""
        self._tombstones[uid] = version
        while len(self._tombstones) > self._max_tombstones:
            del self._tombstones[next(iter(self._tombstones))]

    def replace_all(self, kind: Kind, objects: Iterable[Obj]) -> None:
        """The result of a full LIST: what is not in it is gone."""
        listed = {key_of(o): o for o in objects}
        for key, obj in list(self._objects[kind].items()):
            if key not in listed:
                self.apply(kind, "DELETED", obj)
        for obj in listed.values():
            self.apply(kind, "ADDED", obj)

    def _index(self, kind: Kind, key: str, obj: Obj) -> None:
        meta = obj["metadata"]
        self._uids[kind][meta["uid"]] = key
        namespace = meta.get("namespace", "")
        self._namespaced[kind].add(namespace, key)
        owner = controller_uid(obj)
        if owner is not None:
            self._owned[kind].add(owner, key)
        else:
            self._orphans[kind].add(namespace, key)
        if kind == Kind.SANDBOX:
            pod_uid = (meta.get("labels") or {}).get(c.POD_UID_LABEL)
            if pod_uid:
                self._on_pod.add(pod_uid, key)

    def _unindex(self, kind: Kind, key: str, obj: Obj) -> None:
        meta = obj["metadata"]
        self._uids[kind].pop(meta["uid"], None)
        namespace = meta.get("namespace", "")
        self._namespaced[kind].discard(namespace, key)
        owner = controller_uid(obj)
        if owner is not None:
            self._owned[kind].discard(owner, key)
        else:
            self._orphans[kind].discard(namespace, key)
        if kind == Kind.SANDBOX:
            pod_uid = (meta.get("labels") or {}).get(c.POD_UID_LABEL)
            if pod_uid:
                self._on_pod.discard(pod_uid, key)

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
        return self._by(kind, self._namespaced[kind].get(namespace))

    def owned(self, kind: Kind, owner_uid: str) -> list[Obj]:
        """Objects whose controller reference names `owner_uid`, by key."""
        return self._by(kind, self._owned[kind].get(owner_uid))

    def orphans(self, kind: Kind, namespace: str) -> list[Obj]:
        """Objects of `namespace` without a controller reference (any controller may adopt them),
        by key."""
        return self._by(kind, self._orphans[kind].get(namespace))

    def on_pod(self, pod_uid: str) -> list[Obj]:
        return self._by(Kind.SANDBOX, self._on_pod.get(pod_uid))

    def _by(self, kind: Kind, keys: Iterable[str]) -> list[Obj]:
        objects = self._objects[kind]
        return [objects[k] for k in keys]

    def by_uid(self, kind: Kind, uid: str) -> Obj | None:
        key = self._uids[kind].get(uid)
        return self._objects[kind].get(key) if key is not None else None

    def bound_pod_uids(self) -> list[str]:
        """Pod UIDs that bound sandboxes name, whether or not those pods still exist."""
        return self._on_pod.values()
