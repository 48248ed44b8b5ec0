"""The store's indexes and what it keeps (issue 14): a replica set's claim reads what its owner
and orphan indexes hold, so they must follow every change of controller, namespace and pod;
objects lose on the way in what no controller reads; tombstones are bounded, and what the
manager remembers of a sandbox goes with it."""

from __future__ import annotations

import json
from typing import Any

from nest_kube import connect
from nest_kube.fake import FakeApi
from nest_operator.kube import Kube
from nest_operator.manager import ControllerManager, Settings
from nest_operator.store import UNREAD_ANNOTATIONS, Kind, Store, strip


def sandbox(
    name: str, namespace: str = "ns", owner: str | None = None, rv: int = 1, uid: str = ""
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "uid": uid or f"u-{namespace}-{name}",
        "resourceVersion": str(rv),
        "labels": {"app": "a"},
    }
    if owner is not None:
        meta["ownerReferences"] = [{"kind": "SandboxReplicaSet", "uid": owner, "controller": True}]
    return {"metadata": meta, "spec": {}}


def names(objects: list[dict[str, Any]]) -> list[str]:
    return [o["metadata"]["name"] for o in objects]


def test_namespaces_and_orphans_are_indexed_and_follow_adoption_and_release() -> None:
    store = Store()
    for obj in (sandbox("b"), sandbox("a", owner="rs1"), sandbox("c", "other")):
        store.apply(Kind.SANDBOX, "ADDED", obj)
    assert names(store.in_namespace(Kind.SANDBOX, "ns")) == ["a", "b"]
    assert names(store.orphans(Kind.SANDBOX, "ns")) == ["b"]
    assert names(store.orphans(Kind.SANDBOX, "other")) == ["c"]
    store.apply(Kind.SANDBOX, "MODIFIED", sandbox("b", owner="rs1", rv=2))  # adopted
    assert store.orphans(Kind.SANDBOX, "ns") == []
    assert names(store.owned(Kind.SANDBOX, "rs1")) == ["a", "b"]
    store.apply(Kind.SANDBOX, "MODIFIED", sandbox("a", rv=3))  # released
    assert names(store.orphans(Kind.SANDBOX, "ns")) == ["a"]
    assert names(store.owned(Kind.SANDBOX, "rs1")) == ["b"]
    store.apply(Kind.SANDBOX, "DELETED", sandbox("a", rv=4))
    store.apply(Kind.SANDBOX, "DELETED", sandbox("b", owner="rs1", rv=5))
    assert store.orphans(Kind.SANDBOX, "ns") == [] and store.owned(Kind.SANDBOX, "rs1") == []
    assert store.in_namespace(Kind.SANDBOX, "ns") == []
    # Nothing is left behind for owners and namespaces that are gone.
    assert store._owned[Kind.SANDBOX].values() == []
    assert store._namespaced[Kind.SANDBOX].values() == ["other"]


def test_what_no_controller_reads_is_dropped_on_the_way_in_in_place() -> None:
    store = Store()
    obj = sandbox("a")
    obj["metadata"]["managedFields"] = [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]
    obj["metadata"]["annotations"] = {UNREAD_ANNOTATIONS[0]: "{...}", "keep": "me"}
    store.apply(Kind.SANDBOX, "ADDED", obj)
    stored = store.get(Kind.SANDBOX, "ns/a")
    assert stored is obj  # the informer's cache holds this dict: it is stripped too
    assert "managedFields" not in obj["metadata"]
    assert obj["metadata"]["annotations"] == {"keep": "me"}
    # Equal strings of two objects decoded apart are one object.
    one, two = (strip(json.loads(json.dumps(sandbox(n)))) for n in ("x", "y"))
    assert next(iter(one["metadata"])) is next(iter(two["metadata"]))
    assert one["metadata"]["labels"]["app"] is two["metadata"]["labels"]["app"]


def test_tombstones_are_bounded_and_the_newest_still_refuse_late_events() -> None:
    store = Store(max_tombstones=3)
    for i in range(5):
        store.apply(Kind.SANDBOX, "ADDED", sandbox(f"s{i}", rv=10 + i))
        store.apply(Kind.SANDBOX, "DELETED", sandbox(f"s{i}", rv=20 + i))
    assert len(store._tombstones) == 3
    assert not store.apply(Kind.SANDBOX, "MODIFIED", sandbox("s4", rv=15))  # late: refused
    assert not store.apply(Kind.SANDBOX, "MODIFIED", sandbox("s2", rv=12))
    # The oldest deletion is forgotten: its object, were an event of it still in flight, would
    # be seen until its deletion's own event (a deletion is never refused).
    assert store.apply(Kind.SANDBOX, "MODIFIED", sandbox("s0", rv=5))
    assert store.apply(Kind.SANDBOX, "DELETED", sandbox("s0", rv=5))
    assert store.get(Kind.SANDBOX, "ns/s0") is None


async def test_a_ready_sandbox_is_forgotten_when_deleted_after_its_deployment() -> None:
    conn = connect(token="t", host="http://127.0.0.1:9")
    manager = ControllerManager(conn, Settings(), kube=Kube(conn, Store(), api=FakeApi()))
    manager.synced = True  # route, as the leader does
    obj = sandbox("a")
    obj["spec"] = {"podName": "p"}
    obj["status"] = {"conditions": [{"type": "Ready", "status": "True"}]}
    manager.observe(Kind.SANDBOX, "ADDED", obj)
    assert manager._ready == {"u-ns-a"}
    manager.observe(Kind.SANDBOX, "DELETED", {**obj, "metadata": {**obj["metadata"]}})
    assert manager._ready == set()
