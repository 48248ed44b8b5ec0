"""The pure parts of the operator's shell: endpoint addresses, pod death, the store's rules."""

from __future__ import annotations

from typing import Any

from nest_operator.endpoints_controller import addresses
from nest_operator.lifecycle_controller import Grace, why_dead
from nest_operator.store import Kind, Store


def sandbox(
    name: str,
    *,
    pod: str | None = "p1",
    phase: str = "Running",
    ready: bool = True,
    rv: str = "1",
    uid: str | None = None,
    deleting: bool = False,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": "ns",
        "uid": uid or f"u-{name}",
        "resourceVersion": rv,
        "labels": {},
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status = {
        "phase": phase,
        "podIP": "127.0.0.9",
        "port": 8080,
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    return {"metadata": meta, "spec": {"podName": pod} if pod else {}, "status": status}


def test_addresses_split_by_readiness_and_skip_unbound_and_deleting() -> None:
    result = addresses(
        [
            (sandbox("b"), 2),
            (sandbox("a", ready=False, phase="Starting"), 2),
            (sandbox("c", pod=None), 2),
            (sandbox("d", deleting=True), 1),
        ]
    )
    assert [a["sandbox"] for a in result["ready"]] == ["b"]
    assert [a["sandbox"] for a in result["notReady"]] == ["a"]
    assert result["ready"][0] == {
        "sandbox": "b",
        "uid": "u-b",
        "podName": "p1",
        "revision": 2,
        "podIP": "127.0.0.9",
        "port": 8080,
    }
    assert (result["readyCount"], result["notReadyCount"]) == (1, 1)


def _pod(ready: str = "True", since: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "n", "uid": "p"},
        "status": {"conditions": [{"type": "Ready", "status": ready, "lastTransitionTime": since}]},
    }


T0 = 1767225600.0  # 2026-01-01T00:00:00Z


def test_a_pod_is_dead_when_gone_notready_too_long_or_its_lease_expired() -> None:
    grace = Grace(not_ready_seconds=30)
    lease = {"spec": {"renewTime": "2026-01-01T00:00:00.000000Z", "leaseDurationSeconds": 40}}
    assert why_dead(None, None, T0, grace) == "its pool pod was deleted"
    assert why_dead(_pod(), lease, T0 + 10, grace) is None
    assert why_dead(_pod("False"), lease, T0 + 10, grace) is None  # within the grace
    assert "NotReady for 31s" in (why_dead(_pod("False"), lease, T0 + 31, grace) or "")
    assert "Lease expired" in (why_dead(_pod(), lease, T0 + 41, grace) or "")
    assert why_dead(_pod(), None, T0 + 1000, grace) is None  # no Lease yet: not schedulable either


def test_the_store_ignores_stale_events_and_resurrections() -> None:
    store = Store()
    assert store.apply(Kind.SANDBOX, "ADDED", sandbox("a", rv="5"))
    assert not store.apply(Kind.SANDBOX, "MODIFIED", sandbox("a", rv="4"))
    assert store.get(Kind.SANDBOX, "ns/a")["metadata"]["resourceVersion"] == "5"  # type: ignore[index]
    assert store.apply(Kind.SANDBOX, "DELETED", sandbox("a", rv="6"))
    assert not store.apply(Kind.SANDBOX, "MODIFIED", sandbox("a", rv="6"))
    assert store.get(Kind.SANDBOX, "ns/a") is None
    # Same name, new object (new UID): not a resurrection.
    assert store.apply(Kind.SANDBOX, "ADDED", sandbox("a", rv="7", uid="u-a2"))


def test_the_store_indexes_owners_and_pods() -> None:
    store = Store()
    owned = sandbox("x")
    owned["metadata"]["ownerReferences"] = [{"uid": "rs1", "controller": True}]
    owned["metadata"]["labels"] = {"nest.sandbox.dev/pod-uid": "pod1"}
    store.apply(Kind.SANDBOX, "ADDED", owned)
    assert [s["metadata"]["name"] for s in store.owned(Kind.SANDBOX, "rs1")] == ["x"]
    assert [s["metadata"]["name"] for s in store.on_pod("pod1")] == ["x"]
    assert store.by_uid(Kind.SANDBOX, "u-x") is owned
    store.apply(
        Kind.SANDBOX,
        "DELETED",
        {**owned, "metadata": {**owned["metadata"], "resourceVersion": "2"}},
    )
    assert store.owned(Kind.SANDBOX, "rs1") == [] and store.on_pod("pod1") == []
