"""Status writes nothing waits on are batched (issue 14): the endpoints' and the deployment's.

The pure rules first (`StatusBatch`: a quiet period with a longest hold and one requeue at a
time; which changes are `urgent`), then the two shells over `FakeKube`, counting the status
writes of a 100-sandbox ramp: a dozen or so, not one per sandbox, with the first ready address
written at once (the write a start from zero waits on) and the ramp's end never held back.
"""

from __future__ import annotations

import copy
from typing import Any, cast

import pytest

from crds import constants as c
from nest_operator import deployment_controller as dc
from nest_operator.deployment_controller import DeploymentController
from nest_operator.endpoints_controller import urgent
from nest_operator.kube import Kube
from nest_operator.status_batch import LONGEST_HOLD_SECONDS, QUIET_SECONDS, StatusBatch
from nest_operator.store import Kind, Obj, Store
from tests.unit.operator.fake_kube import FakeKube
from tests.unit.operator.test_endpoints_starting import world

NS = "ns"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- the pure rules ------------------------------------------------------------------------------


def test_a_batch_waits_for_a_quiet_period_and_asks_for_one_requeue_at_a_time() -> None:
    batch = StatusBatch(quiet=1.0, longest=10.0)
    assert batch.hold("k", "a", now=0.0) == (False, 1.0)
    assert batch.hold("k", "a", now=0.5) == (False, None)  # the requeue at 1.0 is outstanding
    assert batch.hold("k", "b", now=0.9) == (False, None)  # changed: quiet again from 0.9
    write, after = batch.hold("k", "b", now=1.0)  # the requeue: not quiet yet, again
    assert not write and after == pytest.approx(0.9)
    assert batch.hold("k", "b", now=1.9) == (True, None)
    assert batch.hold("k", "b", now=2.0) == (False, 1.0)  # written: a new batch


def test_a_batch_that_keeps_changing_is_written_at_the_longest_hold() -> None:
    batch = StatusBatch(quiet=1.0, longest=10.0)
    written = [t / 2 for t in range(30) if batch.hold("k", t, now=t / 2)[0]]
    assert written == [10.0]  # a change every half second: only the longest hold ends it
    batch.done("k")


def address(uid: str) -> dict[str, Any]:
    return {"sandbox": f"s-{uid}", "uid": uid, "revision": 1, "podIP": "127.0.0.9", "port": 80}


def status(ready: list[str], not_ready: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"ready": [address(u) for u in ready], "notReady": [address(u) for u in not_ready],
            "readyCount": len(ready), "notReadyCount": len(not_ready)}  # fmt: skip


def test_what_a_reader_acts_on_is_urgent_and_the_rest_waits() -> None:
    three = status(["a", "b", "c"])
    assert urgent({}, status([]))  # the first status
    assert urgent(status([]), status(["a"]))  # from zero
    assert urgent(three, status(["a", "b", "c", "d", "e"]))  # by half of those listed
    assert urgent(three, status(["a", "b"], ("c",)))  # a ready one is not any more
    moved = status(["a", "b", "c"])
    moved["ready"][0]["podIP"] = "127.0.0.10"
    assert urgent(three, moved)
    assert not urgent(three, status(["a", "b", "c", "d"]))  # one more of three
    assert not urgent(three, status(["a", "b", "c"], ("x",)))  # the not-ready list only


def test_a_deployments_counts_alone_wait_and_what_readers_act_on_does_not() -> None:
    progressing = {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
                   "message": "progressing", "lastUpdateTime": "2026-01-01T00:00:00Z"}  # fmt: skip
    current: dict[str, Any] = {"observedGeneration": 1, "availableReplicas": 3,
                               "readyReplicas": 3, "conditions": [progressing]}  # fmt: skip
    later = copy.deepcopy(current) | {"availableReplicas": 4, "readyReplicas": 4}
    later["conditions"][0]["lastUpdateTime"] = "2026-01-01T00:00:05Z"
    assert not dc.urgent(current, later)
    assert dc._timeless(later) == dc._timeless(later | {"conditions": [progressing]})
    assert dc.urgent(current, later | {"observedGeneration": 2})
    assert dc.urgent(current, later | {"availableReplicas": 0})  # stops serving
    done = copy.deepcopy(later)
    done["conditions"][0]["reason"] = "NewReplicaSetAvailable"
    assert dc.urgent(current, done)


# -- the shells ----------------------------------------------------------------------------------


def sandbox(rs: Obj, uid: str, ready: bool) -> Obj:
    meta = rs["metadata"]
    owner = {"kind": c.REPLICASET_KIND, "name": meta["name"], "uid": meta["uid"],
             "controller": True}  # fmt: skip
    return {
        "metadata": {"name": f"s-{uid}", "namespace": NS, "uid": uid, "ownerReferences": [owner]},
        "spec": {"podName": "p1"},
        "status": {"phase": "Running", "podIP": "127.0.0.9", "port": 80,
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }  # fmt: skip


async def test_a_ramp_of_a_hundred_writes_its_endpoints_a_dozen_times() -> None:
    kube, ctl, clock, requeued, rs = world()  # a deployment, its replica set, the controller

    def writes() -> list[dict[str, Any]]:
        return [p["status"] for kind, _, p in kube.patches if kind == Kind.ENDPOINTS]

    await ctl.reconcile(f"{NS}/f")  # the first status, empty
    for i in range(100):
        kube.store.apply(Kind.SANDBOX, "ADDED", sandbox(rs, f"u{i:03d}", ready=True))
        await ctl.reconcile(f"{NS}/f")
        if i == 0:
            assert writes()[-1]["readyCount"] == 1  # from zero: at once
        clock.now += 0.05
    assert 10 <= len(writes()) <= 14, [w["readyCount"] for w in writes()]
    assert writes()[-1]["readyCount"] >= 67  # never less than two thirds of the ready listed
    assert requeued and max(requeued) <= QUIET_SECONDS
    clock.now += QUIET_SECONDS
    await ctl.reconcile(f"{NS}/f")  # the requeue after the quiet period
    assert writes()[-1]["readyCount"] == 100
    count = len(writes())
    kube.store.apply(Kind.SANDBOX, "MODIFIED", sandbox(rs, "u050", ready=False))
    await ctl.reconcile(f"{NS}/f")  # no new call may go to it: at once
    assert len(writes()) == count + 1 and writes()[-1]["notReadyCount"] == 1


async def test_a_deployments_ramp_writes_its_status_at_the_longest_hold_and_at_its_end() -> None:
    store, clock = Store(), Clock()
    kube = FakeKube(store)
    body = {
        "apiVersion": c.API_VERSION, "kind": c.DEPLOYMENT_KIND, "metadata": {"name": "w"},
        "spec": {"replicas": 100, "selector": {"matchLabels": {"app": "w"}},
                 "template": {"metadata": {"labels": {"app": "w"}},
                              "spec": {"function": {"handler": "main:handler"}}}},
    }  # fmt: skip
    store.apply(Kind.DEPLOYMENT, "ADDED", kube.stored(Kind.DEPLOYMENT, NS, body))
    controller = DeploymentController(store, cast(Kube, kube), clock=clock)
    controller.requeue = lambda key, delay: None

    def writes() -> list[dict[str, Any]]:
        return [p["status"] for kind, _, p in kube.patches if kind == Kind.DEPLOYMENT]

    await controller.reconcile(f"{NS}/w")  # creates the set; its first status at once
    first = len(writes())
    (rs,) = store.all(Kind.REPLICASET)
    step = 0.25  # one more ready sandbox every 0.25 s: a 25 s ramp, longer than the longest hold
    for ready in range(1, 101):
        rs = copy.deepcopy(rs)
        rs["status"] = {"replicas": 100, "readyReplicas": ready, "availableReplicas": ready}
        store.apply(Kind.REPLICASET, "MODIFIED", rs)
        await controller.reconcile(f"{NS}/w")
        clock.now += step
    counts = [w.get("availableReplicas") for w in writes()[first:]]
    assert counts[0] == 1 and counts[-1] == 100  # serving at once; the end at once
    held = 100 * step / LONGEST_HOLD_SECONDS  # writes of counts alone, at the longest hold
    assert len(counts) <= 3 + held + 1, counts  # with Available turning True: not 100
