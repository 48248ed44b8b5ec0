"""The store's rule for deletions, which the pod-lifecycle controller depends on: a deletion is
never stale, and it removes only the object it names."""

from __future__ import annotations

from typing import Any

from nest_operator.store import Kind, Store


def sandbox(rv: str, uid: str = "u1") -> dict[str, Any]:
    labels = {"nest.sandbox.dev/pod-uid": "pod-1"}
    return {"metadata": {"name": "s", "namespace": "ns", "uid": uid, "resourceVersion": rv,
                         "labels": labels}}  # fmt: skip


def test_a_deletion_older_than_a_write_still_deletes_and_keeps_its_tombstone() -> None:
    store = Store()
    store.apply(Kind.SANDBOX, "ADDED", sandbox("5"))
    store.apply(Kind.SANDBOX, "MODIFIED", sandbox("9"))  # the operator's own write
    assert store.apply(Kind.SANDBOX, "DELETED", sandbox("5"))  # a relist's last-known copy
    assert store.get(Kind.SANDBOX, "ns/s") is None and store.on_pod("pod-1") == []
    # The write's echo, older than what the deletion retired, does not bring it back.
    assert not store.apply(Kind.SANDBOX, "MODIFIED", sandbox("9"))
    assert store.get(Kind.SANDBOX, "ns/s") is None


def test_a_deletion_of_an_old_object_leaves_a_new_one_of_the_same_name() -> None:
    store = Store()
    store.apply(Kind.SANDBOX, "ADDED", sandbox("7", uid="u2"))
    assert store.apply(Kind.SANDBOX, "DELETED", sandbox("5", uid="u1"))
    assert store.get(Kind.SANDBOX, "ns/s") == sandbox("7", uid="u2")
    assert not store.apply(Kind.SANDBOX, "ADDED", sandbox("5", uid="u1"))  # tombstoned
