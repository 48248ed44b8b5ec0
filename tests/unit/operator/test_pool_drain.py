"""Draining a pool pod being deleted (issue 13, item 2): the rules as tables, then the shells.

The decisions (`drain_logic.plan`, `surge`, the lifecycle controller's reading of a pod being
deleted, the scheduler's PodDraining cordon) are pure and tabled here; the shells are driven as
the manager drives them: the lifecycle controller on the real `Kube` over `FakeApi` marks a
replica set's sandbox and evicts a stand-alone one, and the replica set controller over
`FakeKube` replaces first, takes out second and deletes last.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from crds import constants as c
from nest_kube import connect
from nest_kube import resources as r
from nest_kube.fake import FakeApi
from nest_operator.drain_logic import (
    DEADLINE_MARGIN,
    DRAIN_ANNOTATION,
    MAX_DRAIN_SECONDS,
    MIN_DRAIN_SECONDS,
    OUT_ANNOTATION,
    DrainDecision,
    Leaving,
    plan,
    surge,
)
from nest_operator.endpoints_controller import addresses
from nest_operator.kube import Kube
from nest_operator.lifecycle_controller import LifecycleController
from nest_operator.lifecycle_logic import Action, Grace, Policy, Snapshot, decide, pod_health
from nest_operator.replicaset_controller import ReplicaSetController
from nest_operator.scheduler import SchedulerCache
from nest_operator.scheduler.interface import Code
from nest_operator.scheduler.plugins import POD_DRAINING, PodDraining
from nest_operator.scheduler.snapshot import PodInfo
from nest_operator.store import Kind, Obj, Store
from tests.unit.operator.fake_kube import FakeKube
from tests.unit.operator.test_replicaset_shell import add_replicaset, add_sandbox
from tests.unit.operator.test_scheduler import pod as pool_pod
from tests.unit.operator.test_scheduler import request

T0 = 1767225600.0  # 2026-01-01T00:00:00Z
DEADLINE = T0 + 60  # the pod's grace period ends a minute after "now"


def stamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def leaving(name: str = "old", ready: bool = True, out: float | None = None) -> Leaving:
    return Leaving(name, ready=ready, deadline=DEADLINE, out_since=out, timeout=10)


# -- the drain plan ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("desired", "staying", "staying_ready", "gone", "max_surge", "now", "expected"),
    [
        # Nothing leaving: no cap, nothing to do.
        (2, 2, 2, [], 1, T0, DrainDecision()),
        # One of two leaving, its replacement not made yet: one creation, nothing taken out.
        (2, 1, 1, [leaving()], 1, T0, DrainDecision(1, (), (), DEADLINE - DEADLINE_MARGIN - T0)),
        # The replacement exists but is not Ready: no room for another, still nothing out.
        (2, 2, 1, [leaving()], 1, T0, DrainDecision(0, (), (), DEADLINE - DEADLINE_MARGIN - T0)),
        # The replacement is Ready: the old one leaves the endpoints, deleted on a later pass.
        (2, 2, 2, [leaving()], 1, T0, DrainDecision(0, ("old",), (), MIN_DRAIN_SECONDS)),
        # Taken out 5 s ago, timeout 10 s: wait the other 5 s.
        (2, 2, 2, [leaving(out=T0 - 5)], 1, T0, DrainDecision(1, (), (), 5.0)),
        # Drained: deleted.
        (2, 2, 2, [leaving(out=T0 - 10)], 1, T0, DrainDecision(1, (), ("old",), None)),
        # A leaving sandbox that is not Ready serves nothing: out at once.
        (2, 1, 1, [leaving(ready=False)], 1, T0, DrainDecision(1, ("old",), (), 3.0)),
        # Two leaving with maxSurge 1: one replacement at a time.
        (2, 0, 0, [leaving("a"), leaving("b")], 1, T0,
         DrainDecision(1, (), (), DEADLINE - DEADLINE_MARGIN - T0)),
        # ... and with a surge of 2, both at once.
        (2, 0, 0, [leaving("a"), leaving("b")], 2, T0,
         DrainDecision(2, (), (), DEADLINE - DEADLINE_MARGIN - T0)),
        # One replacement Ready out of two: only one old sandbox leaves the endpoints.
        (2, 1, 1, [leaving("a"), leaving("b")], 1, T0,
         DrainDecision(0, ("a",), (), MIN_DRAIN_SECONDS)),
        # The deadline is near: everything leaving goes, Ready replacement or not.
        (2, 1, 0, [leaving("a"), leaving("b", out=T0)], 1, DEADLINE - DEADLINE_MARGIN,
         DrainDecision(1, (), ("b", "a"), None)),
    ],
)  # fmt: skip
def test_the_drain_replaces_first_takes_out_second_deletes_last(
    desired: int,
    staying: int,
    staying_ready: int,
    gone: list[Leaving],
    max_surge: int,
    now: float,
    expected: DrainDecision,
) -> None:
    assert plan(desired, staying, staying_ready, gone, max_surge, now) == expected


def test_the_drain_wait_is_the_timeout_bounded_and_never_past_the_deadline() -> None:
    long = Leaving("x", ready=True, deadline=T0 + 1000, out_since=T0, timeout=900)
    assert plan(1, 1, 1, [long], 1, T0 + MAX_DRAIN_SECONDS).delete == ("x",)
    assert plan(1, 1, 1, [long], 1, T0 + MAX_DRAIN_SECONDS - 1).delete == ()
    short = Leaving("x", ready=True, deadline=T0 + 1000, out_since=T0, timeout=1)
    assert plan(1, 1, 1, [short], 1, T0 + 1).delete == ()  # the gateways must see it go
    assert plan(1, 1, 1, [short], 1, T0 + MIN_DRAIN_SECONDS).delete == ("x",)
    late = Leaving("x", ready=True, deadline=T0 + 20, out_since=T0, timeout=30)
    assert plan(1, 1, 1, [late], 1, T0 + 20 - DEADLINE_MARGIN).delete == ("x",)


@pytest.mark.parametrize(
    ("max_surge", "desired", "expected"),
    [(None, 4, 1), ("25%", 10, 3), ("50%", 2, 1), (0, 5, 1), ("0%", 5, 1), (3, 2, 3)],
)
def test_surge_is_max_surge_rounded_up_and_at_least_one(
    max_surge: int | str | None, desired: int, expected: int
) -> None:
    assert surge(max_surge, desired) == expected


# -- the lifecycle controller's reading of a pod being deleted -----------------------------------


def k8s_pod(deleting: float | None, running: bool = True, phase: str = "Running") -> Obj:
    state = {"running": {}} if running else {"terminated": {"exitCode": 0}}
    meta: dict[str, Any] = {"name": "p", "namespace": "nest-system", "uid": "p"}
    if deleting is not None:
        meta["deletionTimestamp"] = stamp(deleting)
    return {
        "metadata": meta,
        "status": {
            "phase": phase,
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "sidecar", "state": state}],
        },
    }


@pytest.mark.parametrize(
    ("pod", "now", "draining", "gone"),
    [
        (k8s_pod(None), T0, None, None),
        (k8s_pod(DEADLINE), T0, DEADLINE, None),  # terminating, still running: drains
        (k8s_pod(DEADLINE), DEADLINE - DEADLINE_MARGIN, None, "its pool pod is being deleted"),
        (k8s_pod(DEADLINE, running=False), T0, None, "its pool pod is being deleted"),
        (k8s_pod(DEADLINE, phase="Failed"), T0, None, "its pool pod is being deleted"),
        (None, T0, None, "its pool pod was deleted"),  # gone: evicted at once, as before
    ],
)
def test_a_pod_being_deleted_drains_until_its_grace_nearly_ends_or_it_stops(
    pod: Obj | None, now: float, draining: float | None, gone: str | None
) -> None:
    health = pod_health("p", pod, None, now, Grace())
    assert (health.draining, health.gone) == (draining, gone)
    expected = Action.KEEP if draining is None and gone is None else Action.EVICT
    if draining is not None:
        expected = Action.DRAIN
    # Draining is a fact, like a deletion: no outage of the control plane holds it.
    assert decide(health, Snapshot(now=0.0, calm_since=None), Policy()).action is expected


# -- the cordon -----------------------------------------------------------------------------------


def test_a_pod_leaving_its_pool_is_cordoned_and_nothing_undoes_it() -> None:
    plugin = PodDraining()
    assert plugin.filter(request(), PodInfo(pool_pod()), 0.0) is None
    status = plugin.filter(request(), PodInfo(pool_pod(leaving="being deleted")), 0.0)
    assert status is not None
    assert (status.plugin, status.code) == (POD_DRAINING, Code.UNRESOLVABLE)
    assert "being deleted" in status.message
    assert plugin.events == frozenset()


# -- the endpoints --------------------------------------------------------------------------------


def test_a_sandbox_taken_out_is_listed_not_ready() -> None:
    def sandbox(name: str, annotations: dict[str, str]) -> Obj:
        return {
            "metadata": {"name": name, "uid": name, "annotations": annotations},
            "spec": {"podName": "p"},
            "status": {"phase": "Running", "podIP": "127.0.0.9", "port": 8080,
                       "conditions": [{"type": "Ready", "status": "True"}]},
        }  # fmt: skip

    result = addresses([
        (sandbox("marked", {DRAIN_ANNOTATION: stamp(DEADLINE)}), 1),
        (sandbox("out", {DRAIN_ANNOTATION: stamp(DEADLINE), OUT_ANNOTATION: stamp(T0)}), 1),
    ])  # fmt: skip
    assert [a["sandbox"] for a in result["ready"]] == ["marked"]  # still serving
    assert [a["sandbox"] for a in result["notReady"]] == ["out"]


# -- the lifecycle shell on FakeApi ---------------------------------------------------------------


async def test_the_lifecycle_shell_marks_replica_set_sandboxes_and_evicts_stand_alone_ones() -> (
    None
):
    api = FakeApi()
    store = Store()
    kube = Kube(connect(token="t", host="http://127.0.0.1:9"), store, api=api)
    lifecycle = LifecycleController(store, kube, Grace(), policy=Policy(), clock=lambda: 0.0)

    def put(kind: Kind, resource: r.Resource, obj: Obj) -> Obj:
        stored = api.put(resource, obj)
        store.apply(kind, "ADDED", stored)
        return stored

    pod = k8s_pod(DEADLINE)
    pod["metadata"].pop("uid")
    pod["metadata"]["labels"] = {c.POOL_LABEL: "default"}
    uid = put(Kind.POD, r.PODS, pod)["metadata"]["uid"]
    rs = put(Kind.REPLICASET, r.SANDBOX_REPLICASETS, {
        "metadata": {"name": "w", "namespace": "ns"}, "spec": {"replicas": 1},
    })  # fmt: skip
    owner = {"kind": c.REPLICASET_KIND, "name": "w", "uid": rs["metadata"]["uid"],
             "controller": True, "apiVersion": c.API_VERSION}  # fmt: skip
    for name, refs in (("owned", [owner]), ("alone", [])):
        put(Kind.SANDBOX, r.SANDBOXES, {
            "metadata": {"name": name, "namespace": "ns", "ownerReferences": refs,
                         "labels": {c.POD_UID_LABEL: uid},
                         "finalizers": [c.SIDECAR_FINALIZER]},
            "spec": {"function": {"handler": "main:handler"}, "podName": "p"},
            "status": {"phase": "Running"},
        })  # fmt: skip

    await lifecycle.reconcile(uid, T0)
    items = {s["metadata"]["name"]: s for s in (await api.list(r.SANDBOXES))["items"]}
    owned, alone = items["owned"], items["alone"]
    assert owned["metadata"]["annotations"][DRAIN_ANNOTATION] == stamp(DEADLINE)
    assert (owned.get("status") or {}).get("reason") is None  # left to its replica set
    assert c.SIDECAR_FINALIZER in owned["metadata"]["finalizers"]
    assert alone["status"]["reason"] == "Evicted"  # nobody would replace it
    assert c.SIDECAR_FINALIZER not in (alone["metadata"].get("finalizers") or [])

    # Once the grace is nearly over the drain is a fact: what is left is evicted.
    await lifecycle.reconcile(uid, DEADLINE - DEADLINE_MARGIN)
    owned = next(
        s for s in (await api.list(r.SANDBOXES))["items"] if s["metadata"]["name"] == "owned"
    )
    assert owned["status"]["reason"] == "Evicted"


# -- the replica set shell on FakeKube ------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


async def test_the_replica_set_replaces_a_leaving_sandbox_before_it_takes_it_out() -> None:
    store, clock = Store(), Clock()
    kube = FakeKube(store)
    requeued: list[tuple[str, float]] = []
    controller = ReplicaSetController(store, cast(Kube, kube), SchedulerCache(), clock=clock)
    controller.requeue = lambda key, delay: requeued.append((key, delay))
    rs = add_replicaset(kube, replicas=2)
    add_sandbox(kube, "stays", {"app": "a"}, rs)
    old = add_sandbox(kube, "old", {"app": "a"}, rs)
    marked = copy.deepcopy(old)
    marked["metadata"]["annotations"] = {DRAIN_ANNOTATION: stamp(DEADLINE)}
    store.apply(Kind.SANDBOX, "MODIFIED", marked)

    await controller.reconcile("team/w")
    assert kube.sandbox_creates() == 1  # the surge replacement
    assert kube.deletes == [] and requeued  # nothing out yet; woken before the deadline
    again = len(kube.creates)
    await controller.reconcile("team/w")
    assert len(kube.creates) == again  # within maxSurge: no second replacement
    assert OUT_ANNOTATION not in (store.get(Kind.SANDBOX, "team/old") or {})["metadata"].get(
        "annotations", {}
    )

    # The replacement becomes Ready: the old sandbox leaves the endpoints, then is deleted.
    new = next(
        s for s in store.owned(Kind.SANDBOX, rs["metadata"]["uid"])
        if s["metadata"]["name"] not in ("stays", "old")
    )  # fmt: skip
    await kube.patch_status(Kind.SANDBOX, "team", new["metadata"]["name"], {
        "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
    })  # fmt: skip
    await controller.reconcile("team/w")
    current = store.get(Kind.SANDBOX, "team/old")
    assert current is not None and OUT_ANNOTATION in current["metadata"]["annotations"]
    assert kube.deletes == []  # in-flight calls drain first
    clock.now = T0 + 10  # within the function's timeout (30 s by default)
    await controller.reconcile("team/w")
    assert kube.deletes == []
    clock.now = T0 + 31
    await controller.reconcile("team/w")
    assert kube.deletes == ["old"]
    assert kube.sandbox_creates() == 1  # replaced exactly once
