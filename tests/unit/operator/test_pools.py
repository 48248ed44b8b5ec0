"""SandboxPools in the operator: membership decided once, fed to the scheduler, status, eviction.

The shell pieces run on a real Store with a recording stand-in for the API calls; every input
is an API object as the watches deliver it.
"""

from __future__ import annotations

import copy
from typing import Any, cast

from nest_operator.kube import Kube
from nest_operator.lifecycle_controller import Grace, LifecycleController, why_dead
from nest_operator.pool_controller import NOT_IN_POOL, PoolController, Pools, pool_status
from nest_operator.scheduler import Rejection, SandboxRequest, Scheduler, SchedulerCache
from nest_operator.scheduler_controller import SchedulerController
from nest_operator.store import Kind, Store

POOL_LABEL = "nest.sandbox.dev/pool"
T0 = 1767225600.0  # 2026-01-01T00:00:00Z


class RecordingKube:
    """Records the calls the controllers make instead of sending them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, str]] = []
        self.status: list[tuple[Kind, str, str, dict[str, Any]]] = []
        self.patches: list[tuple[Kind, str, str, Any]] = []

    def event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((obj.get("kind", ""), obj["metadata"]["name"], reason, message))

    async def patch_status(
        self, kind: Kind, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        self.status.append((kind, namespace, name, status))
        return {}

    async def patch(
        self, kind: Kind, namespace: str, name: str, patch: Any, content_type: str = ""
    ) -> dict[str, Any]:
        self.patches.append((kind, namespace, name, patch))
        return {}


def pool(name: str = "default", generation: int = 1, **spec: Any) -> dict[str, Any]:
    body = {"podNamespace": "nest-system", "podSelector": {"matchLabels": {"app": "pool"}}}
    return {
        "metadata": {"name": name, "uid": f"pool-{name}", "generation": generation,
                     "resourceVersion": str(generation)},
        "spec": {**body, **spec},
    }  # fmt: skip


def pod(
    name: str, namespace: str = "nest-system", ready: bool = True, **labels: str
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name, "namespace": namespace, "uid": f"uid-{name}", "resourceVersion": "1",
            "labels": {POOL_LABEL: "default", "app": "pool", **labels},
        },
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False",
                                   "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
    }  # fmt: skip


def lease(name: str, namespace: str = "nest-system") -> dict[str, Any]:
    capacity = '{"memory_bytes": 1073741824, "cpu_millis": 1000, "max_sandboxes": 10}'
    return {
        "metadata": {"name": name, "namespace": namespace, "uid": f"lease-{name}",
                     "resourceVersion": "1",
                     "annotations": {"nest.sandbox.dev/capacity": capacity}},
        "spec": {"renewTime": "2026-01-01T00:00:00.000000Z", "leaseDurationSeconds": 40},
    }  # fmt: skip


def sandbox(name: str, pod_name: str, namespace: str = "a") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace, "uid": f"sbx-{name}",
                     "resourceVersion": "1", "finalizers": ["nest.sandbox.dev/sidecar"],
                     "labels": {POOL_LABEL: "default",
                                "nest.sandbox.dev/pod-uid": f"uid-{pod_name}"}},
        "spec": {"podName": pod_name, "podNamespace": "nest-system",
                 "function": {"handler": "m:f", "source": {"path": "/x"},
                              "isolation": "namespace"}},
        "status": {"phase": "Running"},
    }  # fmt: skip


def store_with(*objects: tuple[Kind, dict[str, Any]]) -> Store:
    store = Store()
    for kind, obj in objects:
        store.apply(kind, "ADDED", obj)
    return store


# --- membership ---------------------------------------------------------------------------------


def test_a_pod_is_a_node_only_of_an_existing_pool_in_its_namespace_matching_its_selector() -> None:
    store = store_with((Kind.POOL, pool()))
    pools = Pools(store)
    assert pools.membership(pod("p0")) is None
    assert pools.membership(pod("p0", namespace="tenant")) == (
        "namespace tenant is not SandboxPool default's podNamespace nest-system"
    )
    assert pools.membership(pod("p0", app="rogue")) == (
        "its labels do not match SandboxPool default's podSelector app=pool"
    )
    elsewhere = pod("p0")
    elsewhere["metadata"]["labels"][POOL_LABEL] = "gpu"
    assert pools.membership(elsewhere) == "there is no SandboxPool gpu"


def test_a_pool_the_models_refuse_has_no_members() -> None:
    bad = pool(podSelector={"matchExpressions": [{"key": "app", "operator": "In"}]})
    pools = Pools(store_with((Kind.POOL, bad)))
    problem = pools.membership(pod("p0"))
    assert problem is not None and "has an invalid spec" in problem
    assert pools.get("default") is None and pools.policy("default") is None


def test_pools_are_parsed_once_per_generation() -> None:
    store = store_with((Kind.POOL, pool()))
    pools = Pools(store)
    first = pools.get("default")
    assert first is not None and pools.get("default") is first
    edited = pool(generation=2, podNamespace="elsewhere")
    store.apply(Kind.POOL, "MODIFIED", edited)
    assert pools.membership(pod("p0")) is not None
    store.apply(Kind.POOL, "DELETED", edited)
    assert pools.membership(pod("p0")) == "there is no SandboxPool default"


def test_members_are_the_labelled_pods_that_pass() -> None:
    store = store_with(
        (Kind.POOL, pool()), (Kind.POD, pod("b")), (Kind.POD, pod("a")),
        (Kind.POD, pod("c", namespace="tenant")), (Kind.POD, pod("d", app="other")),
    )  # fmt: skip
    assert [p["metadata"]["name"] for p in Pools(store).members("default")] == ["a", "b"]


# --- status -------------------------------------------------------------------------------------


def test_status_counts_members_and_ready_ones() -> None:
    parsed = Pools(store_with((Kind.POOL, pool()))).get("default")
    assert parsed is not None
    status = pool_status(pool(), parsed, [pod("a"), pod("b", ready=False)], T0)
    assert (status["pods"], status["readyPods"], status["observedGeneration"]) == (2, 1, 1)
    assert status["conditions"][0] | {"lastTransitionTime": ""} == {
        "type": "Available", "status": "True", "reason": "PodsReady",
        "message": "1 of 2 pods Ready", "lastTransitionTime": "",
    }  # fmt: skip
    empty = pool_status(pool(), parsed, [], T0)["conditions"][0]
    assert (empty["status"], empty["reason"]) == ("False", "NoPods")
    assert empty["message"] == (
        "no pod of namespace nest-system labelled nest.sandbox.dev/pool=default matches app=pool"
    )


async def test_status_is_written_only_when_it_changes_and_keeps_its_transition_time() -> None:
    store = store_with((Kind.POOL, pool()), (Kind.POD, pod("a")))
    kube = RecordingKube()
    controller = PoolController(store, cast(Kube, kube), Pools(store))
    await controller.reconcile("default", T0)
    assert [(k, ns, n) for k, ns, n, _ in kube.status] == [(Kind.POOL, "", "default")]
    written = kube.status[0][3]
    stored = copy.deepcopy(pool())
    stored["metadata"]["resourceVersion"] = "5"
    stored["status"] = written
    store.apply(Kind.POOL, "MODIFIED", stored)
    await controller.reconcile("default", T0 + 100)
    assert len(kube.status) == 1  # nothing changed, not even the condition's time
    store.apply(Kind.POD, "MODIFIED", pod("a", ready=False) | {"metadata": {
        **pod("a")["metadata"], "resourceVersion": "2"}})  # fmt: skip
    await controller.reconcile("default", T0 + 200)
    assert kube.status[-1][3]["readyPods"] == 0
    assert kube.status[-1][3]["conditions"][0]["lastTransitionTime"] == "2026-01-01T00:03:20Z"


def test_a_labelled_non_member_gets_one_warning_per_reason() -> None:
    store = store_with((Kind.POOL, pool()))
    kube = RecordingKube()
    controller = PoolController(store, cast(Kube, kube), Pools(store))
    rogue = pod("rogue", namespace="tenant")
    for _ in range(3):  # resyncs, Lease renewals
        controller.pod_changed(rogue, deleted=False)
    assert kube.events == [
        ("Pod", "rogue", NOT_IN_POOL, "ignored: not a node of pool default: namespace tenant "
         "is not SandboxPool default's podNamespace nest-system"),
    ]  # fmt: skip
    relabelled = pod("rogue", namespace="tenant")
    relabelled["metadata"]["labels"][POOL_LABEL] = "gpu"
    controller.pod_changed(relabelled, deleted=False)
    controller.pod_changed(pod("member"), deleted=False)
    assert [e[3].rsplit(": ", 1)[1] for e in kube.events] == [
        "namespace tenant is not SandboxPool default's podNamespace nest-system",
        "there is no SandboxPool gpu",
    ]


# --- the scheduler's cache follows membership ---------------------------------------------------


def scheduler_on(store: Store) -> SchedulerController:
    return SchedulerController(
        store, cast(Kube, RecordingKube()), SchedulerCache(), Scheduler(), Pools(store)
    )


def test_only_members_become_nodes_and_a_pool_edit_moves_them_in_and_out() -> None:
    store = store_with(
        (Kind.POD, pod("p0")), (Kind.LEASE, lease("p0")),
        (Kind.POD, pod("rogue", namespace="tenant")), (Kind.LEASE, lease("rogue", "tenant")),
        (Kind.SANDBOX, sandbox("s1", "p0")),
    )  # fmt: skip
    controller = scheduler_on(store)
    for p in store.all(Kind.POD):
        controller.pod_changed(p, deleted=False)
    assert controller.cache.pod_count == 0  # no SandboxPool yet: nothing is a node
    store.apply(Kind.POOL, "ADDED", pool(tenancy="Dedicated"))
    controller.pool_changed(pool(tenancy="Dedicated"), deleted=False)
    assert [i.pod.name for i in controller.cache.pods()] == ["p0"]
    info = controller.cache.pod("uid-p0")
    assert info.namespaces == {"a": 1}  # the sandbox bound before is counted on arrival
    assert info.policy is not None and info.policy.dedicated
    narrowed = pool(generation=2, podSelector={"matchLabels": {"app": "pool", "tier": "x"}})
    store.apply(Kind.POOL, "MODIFIED", narrowed)
    controller.pool_changed(narrowed, deleted=False)
    assert controller.cache.pod_count == 0


def test_a_status_write_does_not_re_evaluate_the_pool() -> None:
    store = store_with((Kind.POOL, pool()), (Kind.POD, pod("p0")), (Kind.LEASE, lease("p0")))
    controller = scheduler_on(store)
    controller.pool_changed(pool(), deleted=False)
    assert controller.cache.pod_count == 1
    store.apply(Kind.POD, "DELETED", pod("p0"))  # only the pool event can say so here
    with_status = pool() | {"status": {"pods": 1}}
    controller.pool_changed(with_status, deleted=False)
    assert controller.cache.pod_count == 1  # same generation: not looked at again


def test_namespace_labels_reach_the_cache_and_retry_unschedulable_sandboxes() -> None:
    controller = scheduler_on(Store())
    refused = Rejection(frozenset({"PoolMatch", "TenantIsolation"}), frozenset())
    for key in ("a/s1", "b/s2"):  # refused by the pool's namespaceSelector
        controller.pending.add(key, 0.0)
        assert controller.pending.pop() == key
        namespace_of, name = key.split("/")
        request = SandboxRequest(name, namespace_of, f"u-{name}", "default", 1, 1, "subprocess")
        controller.pending.unschedulable(key, request, refused, 0.0)
    namespace = {"metadata": {"name": "a", "uid": "ns-a", "labels": {"team": "a"}}}
    controller.namespace_changed(namespace, deleted=False)
    assert controller.cache.namespace_labels("a") == {"team": "a"}
    assert controller.queue._waiting == {"a/s1"}  # b's labels did not change
    controller.namespace_changed(namespace, deleted=True)
    assert controller.cache.namespace_labels("a") == {}


# --- eviction from pods that are no nodes any more ----------------------------------------------


def test_why_dead_says_when_a_pod_left_its_pool() -> None:
    assert why_dead(pod("p0"), None, T0, Grace(), "there is no SandboxPool default") == (
        "its pod is not a node of its pool: there is no SandboxPool default"
    )
    deleting = pod("p0")
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert why_dead(deleting, None, T0, Grace(), "x") == "its pool pod is being deleted"


async def test_sandboxes_of_a_pod_that_left_its_pool_are_evicted() -> None:
    store = store_with((Kind.POD, pod("p0")), (Kind.SANDBOX, sandbox("s1", "p0")))
    kube = RecordingKube()
    pools = Pools(store)
    lifecycle = LifecycleController(store, cast(Kube, kube), Grace(), pools.membership)
    await lifecycle.reconcile("uid-p0", T0)
    (_, namespace, name, status), = kube.status  # fmt: skip
    assert (namespace, name, status["reason"]) == ("a", "s1", "Evicted")
    assert "not a node of its pool: there is no SandboxPool default" in status["message"]
    assert len(kube.patches) == 1  # the sidecar's finalizer released on its behalf
    store.apply(Kind.POOL, "ADDED", pool())
    kube.status.clear()
    store.apply(Kind.SANDBOX, "MODIFIED", sandbox("s1", "p0") | {"metadata": {
        **sandbox("s1", "p0")["metadata"], "resourceVersion": "2"}})  # fmt: skip
    await lifecycle.reconcile("uid-p0", T0)
    assert kube.status == []  # a member again: nothing to evict
