"""The endpoints controller leaves a just-bound, still-starting sandbox out of the list for its
first second (issue 14: its not-ready write was in flight when it turned Ready, and the Ready
write a cold start waits on queued behind it): the pure rule as a table, then the shell over
`FakeKube`, counting the endpoint writes a start from zero makes."""

from __future__ import annotations

import copy
from typing import Any, cast

import pytest

from crds import constants as c
from nest_operator.endpoints_controller import (
    STARTING_DELAY,
    EndpointsController,
    hold_starting,
    starting,
)
from nest_operator.kube import Kube
from nest_operator.status_batch import QUIET_SECONDS
from nest_operator.store import Kind, Obj, Store
from tests.unit.operator.fake_kube import FakeKube

NS = "ns"


def sandbox(
    uid: str, phase: str = "Starting", pod: str | None = "p1", deleting: bool = False
) -> Obj:
    meta: dict[str, Any] = {"name": f"s-{uid}", "namespace": NS, "uid": uid}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    ready = "True" if phase == "Running" else "False"
    status = {"phase": phase, "podIP": "127.0.0.9", "port": 8080,
              "conditions": [{"type": "Ready", "status": ready}]}  # fmt: skip
    return {"metadata": meta, "spec": {"podName": pod} if pod else {}, "status": status}


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (sandbox("a", "Pending"), True),
        (sandbox("a", "Scheduled"), True),
        (sandbox("a", "Starting"), True),
        (sandbox("a", "Running"), False),  # listed at once, ready or not (a runtime outage)
        (sandbox("a", "Failed"), False),
        (sandbox("a", "Starting", pod=None), False),  # unbound: never listed anyway
        (sandbox("a", "Starting", deleting=True), False),
    ],
)
def test_starting_means_bound_alive_and_not_yet_running(obj: Obj, expected: bool) -> None:
    assert starting(obj) is expected


def test_a_starting_sandbox_is_held_for_the_delay_from_when_it_was_first_seen() -> None:
    held, seen, due = hold_starting([sandbox("a"), sandbox("b", "Running")], {}, now=10.0)
    assert (held, seen, due) == ({"a"}, {"a": 10.0}, STARTING_DELAY)
    held, seen, due = hold_starting([sandbox("a")], seen, now=10.4)
    assert held == {"a"} and seen == {"a": 10.0} and due == pytest.approx(STARTING_DELAY - 0.4)
    held, seen, due = hold_starting([sandbox("a")], seen, now=10.0 + STARTING_DELAY)
    assert (held, seen, due) == (set(), {"a": 10.0}, None)  # slow start: listed not ready now


def test_what_is_no_longer_starting_is_forgotten_and_a_listed_one_stays_listed() -> None:
    held, seen, _ = hold_starting([sandbox("a", "Running")], {"a": 1.0, "gone": 1.0}, now=1.5)
    assert (held, seen) == (set(), {})
    held, seen, due = hold_starting([sandbox("r")], {}, now=2.0, listed=frozenset({"r"}))
    assert (held, seen, due) == (set(), {"r": 2.0}, None)  # a restart stays listed


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def world() -> tuple[FakeKube, EndpointsController, Clock, list[float], Obj]:
    kube = FakeKube(Store())
    d = kube.stored(Kind.DEPLOYMENT, NS, {"kind": c.DEPLOYMENT_KIND, "metadata": {"name": "f"}})
    kube.store.apply(Kind.DEPLOYMENT, "ADDED", d)
    ref = {"kind": c.DEPLOYMENT_KIND, "name": "f", "uid": d["metadata"]["uid"], "controller": True}
    body = {"kind": c.REPLICASET_KIND, "metadata": {"name": "f-1", "ownerReferences": [ref]}}
    rs = kube.stored(Kind.REPLICASET, NS, body)
    kube.store.apply(Kind.REPLICASET, "ADDED", rs)
    clock = Clock()
    ctl = EndpointsController(kube.store, cast(Kube, kube), clock=clock)
    requeued: list[float] = []
    ctl.requeue = lambda key, delay: requeued.append(delay)
    return kube, ctl, clock, requeued, rs


def owned(rs: Obj, obj: Obj) -> Obj:
    obj = copy.deepcopy(obj)
    meta = rs["metadata"]
    obj["metadata"]["ownerReferences"] = [
        {"kind": c.REPLICASET_KIND, "name": meta["name"], "uid": meta["uid"], "controller": True}
    ]
    return obj


def endpoint_writes(kube: FakeKube) -> list[dict[str, Any]]:
    return [p["status"] for kind, _, p in kube.patches if kind == Kind.ENDPOINTS]


async def test_a_start_from_zero_writes_the_endpoints_once_ready() -> None:
    kube, ctl, clock, requeued, rs = world()
    await ctl.reconcile(f"{NS}/f")  # at zero: the object, empty
    assert [w["readyCount"] for w in endpoint_writes(kube)] == [0]
    kube.store.apply(Kind.SANDBOX, "ADDED", owned(rs, sandbox("a", "Pending")))
    await ctl.reconcile(f"{NS}/f")  # bound, starting: nothing to write yet
    assert len(endpoint_writes(kube)) == 1 and requeued == [STARTING_DELAY]
    clock.now += 0.05
    kube.store.apply(Kind.SANDBOX, "MODIFIED", owned(rs, sandbox("a", "Running")))
    await ctl.reconcile(f"{NS}/f")
    writes = endpoint_writes(kube)
    assert [(w["readyCount"], w["notReadyCount"]) for w in writes] == [(0, 0), (1, 0)]
    clock.now += STARTING_DELAY
    await ctl.reconcile(f"{NS}/f")  # the requeue: nothing left to write
    assert len(endpoint_writes(kube)) == 2


async def test_a_slow_start_is_listed_not_ready_after_the_delay() -> None:
    kube, ctl, clock, requeued, rs = world()
    kube.store.apply(Kind.SANDBOX, "ADDED", owned(rs, sandbox("a", "Starting")))
    await ctl.reconcile(f"{NS}/f")
    assert endpoint_writes(kube)[-1]["notReadyCount"] == 0
    clock.now += STARTING_DELAY
    await ctl.reconcile(f"{NS}/f")  # listed not ready: nothing waits on that, it is batched
    assert endpoint_writes(kube)[-1]["notReadyCount"] == 0 and requeued[-1] == QUIET_SECONDS
    clock.now += QUIET_SECONDS
    await ctl.reconcile(f"{NS}/f")
    assert [a["sandbox"] for a in endpoint_writes(kube)[-1]["notReady"]] == ["s-a"]
