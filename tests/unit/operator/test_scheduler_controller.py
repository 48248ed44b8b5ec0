"""The scheduler's shell on a real Store: which watch events re-decide which waiting sandboxes.

A Lease renewal that changes nothing re-decides nothing; a sandbox leaving re-decides those
that freed capacity may help, not those too big for any pod; a Lease declaring more capacity,
a renewal of an expired Lease and a pod joining the pool do. Events are fed as the manager
routes them; the workers' queue is drained by hand; the queue's clock is a fake.
"""

from __future__ import annotations

import copy
import json
import time
from datetime import UTC, datetime
from typing import Any, cast

from crds import constants as c
from nest_kube import ApiError
from nest_operator.kube import Kube
from nest_operator.pool_controller import Pools
from nest_operator.scheduler import Scheduler, SchedulerCache
from nest_operator.scheduler.queue import Where
from nest_operator.scheduler_controller import SchedulerController, unschedulable_status
from nest_operator.store import Kind, Obj, Store, key_of
from tests.unit.operator.fake_kube import FakeKube
from tests.unit.operator.test_pools import pod, pool

MI = 1024 * 1024


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lease(name: str, memory: int = 1024 * MI, count: int = 2, renewed: float | None = None) -> Obj:
    stamp = datetime.fromtimestamp(renewed if renewed is not None else time.time(), UTC)
    capacity = {"memory_bytes": memory, "cpu_millis": 1000, "max_sandboxes": count,
                "isolation": ["subprocess", "namespace"]}  # fmt: skip
    return {
        "metadata": {
            "name": name, "namespace": "nest-system", "uid": f"lease-{name}",
            "resourceVersion": str(time.monotonic_ns()),
            "annotations": {c.CAPACITY_ANNOTATION: json.dumps(capacity)},
        },
        "spec": {"renewTime": stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")},
    }  # fmt: skip


def sandbox(name: str, memory: str = "64Mi", on: str | None = None) -> Obj:
    meta: dict[str, Any] = {"name": name, "namespace": "a", "uid": f"uid-{name}",
                            "resourceVersion": "1", "labels": {}}  # fmt: skip
    spec: dict[str, Any] = {"pool": "default", "function": {
        "handler": "m:f", "source": {"path": "/x"}, "resources": {"memory": memory}}}  # fmt: skip
    if on is not None:
        meta["labels"] = {c.POOL_LABEL: "default", c.POD_UID_LABEL: f"uid-{on}"}
        spec |= {"podName": on, "podNamespace": "nest-system"}
    return {"metadata": meta, "spec": spec}


class Harness:
    """A scheduler controller fed as the manager feeds it."""

    def __init__(self, queueing: bool = True) -> None:
        self.store = Store()
        self.kube = FakeKube(self.store)
        self.clock = Clock()
        self.controller = SchedulerController(
            self.store, cast(Kube, self.kube), SchedulerCache(), Scheduler(), Pools(self.store),
            queueing=queueing, clock=self.clock,
        )  # fmt: skip
        self.observe(Kind.POOL, "ADDED", pool())

    def observe(self, kind: Kind, event: str, obj: Obj) -> None:
        assert self.store.apply(kind, event, obj)
        s, deleted = self.controller, event == "DELETED"
        {
            Kind.POD: lambda: s.pod_changed(obj, deleted),
            Kind.POOL: lambda: s.pool_changed(obj, deleted),
            Kind.LEASE: lambda: s.lease_changed(obj),
            Kind.SANDBOX: lambda: s.sandbox_changed(obj, deleted),
        }[kind]()

    def add_pod(self, name: str, **lease_args: Any) -> None:
        self.observe(Kind.LEASE, "ADDED", lease(name, **lease_args))
        self.observe(Kind.POD, "ADDED", pod(name))

    async def drain(self) -> list[str]:
        """Run the workers' queue until it is empty; the keys decided, in order."""
        work = self.controller.queue
        decided = []
        while not work._queue.empty():
            key = work._queue.get_nowait()
            work._waiting.discard(key)
            decided.append(key)
            await self.controller.schedule(key)
            bound = self.store.get(Kind.SANDBOX, key)
            if bound is not None and bound["spec"].get("podName"):  # the watch echoes the bind
                self.controller.sandbox_changed(bound, deleted=False)
        return decided

    def later(self, seconds: float) -> None:
        """Time passes: the queue's timers are due (the manager's resync flushes them)."""
        self.clock.now += seconds
        self.controller.resync()

    def failed(self) -> list[str]:
        return [e.message for e in self.kube.events if e.reason == "FailedScheduling"]


def full_pool() -> Harness:
    """One pod holding two sandboxes out of two; `wait` needs a slot, `huge` more than 1 Gi."""
    h = Harness()
    h.add_pod("p0")
    for name in ("b1", "b2"):
        h.observe(Kind.SANDBOX, "ADDED", sandbox(name, on="p0"))
    h.observe(Kind.SANDBOX, "ADDED", sandbox("wait"))
    h.observe(Kind.SANDBOX, "ADDED", sandbox("huge", memory="2Gi"))
    return h


async def test_renewals_that_change_nothing_re_decide_nothing() -> None:
    h = full_pool()
    assert await h.drain() == ["a/wait", "a/huge"]
    assert h.failed() == [
        "0/1 pods available: 1 ResourcesFit: too many sandboxes.",
        "0/1 pods available: 1 ResourcesFit: memory above the pod's capacity.",
    ]
    for _ in range(5):  # the sidecar's renewals move renewTime alone
        h.observe(Kind.LEASE, "MODIFIED", lease("p0"))
        h.later(10)
        assert await h.drain() == []
    assert h.controller.attempts == 2 and len(h.failed()) == 2


async def test_freed_capacity_re_decides_only_what_it_may_help() -> None:
    h = full_pool()
    await h.drain()
    h.clock.now += 1
    h.observe(Kind.SANDBOX, "DELETED", sandbox("b1", on="p0"))
    assert h.controller.queue._waiting == {"a/wait"}  # its 1 s back-off is over: to the workers
    assert h.controller.pending.where("a/huge") is Where.UNSCHEDULABLE
    assert await h.drain() == ["a/wait"]
    bound = h.store.get(Kind.SANDBOX, "a/wait")
    assert bound is not None and bound["spec"]["podName"] == "p0"
    assert h.kube.events[-1].reason == "Scheduled"


async def test_more_declared_capacity_or_a_new_pod_re_decides_the_too_big() -> None:
    h = full_pool()
    await h.drain()
    h.observe(Kind.LEASE, "MODIFIED", lease("p0", memory=4096 * MI))
    assert h.controller.pending.where("a/huge") is Where.BACKOFF  # moved within its back-off
    h.later(1)
    assert await h.drain() == ["a/wait", "a/huge"]  # the pod is still full: back to waiting
    assert h.failed()[-1] == "0/1 pods available: 1 ResourcesFit: too many sandboxes."
    h.add_pod("p1", memory=4096 * MI)
    h.later(2)  # their second back-off
    assert await h.drain() == ["a/wait", "a/huge"]
    placed = [h.store.get(Kind.SANDBOX, key) for key in ("a/wait", "a/huge")]
    assert [s["spec"].get("podName") for s in placed if s is not None] == ["p1", "p1"]


async def test_the_renewal_of_an_expired_lease_re_decides() -> None:
    h = Harness()
    h.add_pod("p0", renewed=time.time() - 100)
    h.observe(Kind.SANDBOX, "ADDED", sandbox("s"))
    assert await h.drain() == ["a/s"]
    assert h.failed() == ["0/1 pods available: 1 PodReady: lease expired."]
    h.later(2)
    h.observe(Kind.LEASE, "MODIFIED", lease("p0"))
    assert await h.drain() == ["a/s"]
    assert h.kube.events[-1].reason == "Scheduled"


async def test_a_bind_conflict_retries_soon_and_an_error_backs_off() -> None:
    h = Harness()
    h.add_pod("p0")
    h.observe(Kind.SANDBOX, "ADDED", sandbox("s"))
    statuses = [409, 500]
    accept = h.kube.patch

    async def refuse(kind: Kind, namespace: str, name: str, patch: Any) -> Obj:
        if statuses:
            raise ApiError(statuses.pop(0))
        return await accept(kind, namespace, name, patch)

    h.kube.patch = refuse  # type: ignore[method-assign]
    assert await h.drain() == ["a/s"]
    assert h.controller.cache.pod("uid-p0").count == 0  # the assumption was dropped
    h.later(0.05)
    assert await h.drain() == ["a/s"]
    assert h.controller.pending.where("a/s") is Where.BACKOFF
    h.later(0.5)
    assert await h.drain() == []
    h.later(0.5)
    assert await h.drain() == ["a/s"]
    assert h.kube.events[-1].reason == "Scheduled"


async def test_a_sandbox_that_changed_what_it_asks_for_is_decided_again() -> None:
    h = full_pool()
    await h.drain()
    smaller = copy.deepcopy(h.store.get(Kind.SANDBOX, "a/huge"))
    assert smaller is not None
    smaller["metadata"]["resourceVersion"] = "2"
    h.observe(Kind.SANDBOX, "MODIFIED", smaller)  # the same request: a status write, say
    assert h.controller.pending.where(key_of(smaller)) is Where.UNSCHEDULABLE
    smaller["metadata"]["resourceVersion"] = "3"
    smaller["spec"]["function"]["resources"]["memory"] = "64Mi"
    h.observe(Kind.SANDBOX, "MODIFIED", smaller)
    h.later(1)
    assert await h.drain() == ["a/huge"]


async def test_without_queueing_every_renewal_re_decides_everything() -> None:
    h = Harness(queueing=False)
    h.add_pod("p0", count=0)
    h.observe(Kind.SANDBOX, "ADDED", sandbox("s"))
    await h.drain()
    for _ in range(3):
        h.observe(Kind.LEASE, "MODIFIED", lease("p0", count=0))
        assert await h.drain() == ["a/s"]
    assert h.controller.attempts == 4 and len(h.failed()) == 1  # one Event per message


async def test_a_sandbox_no_pod_can_take_says_why_in_its_status_once() -> None:
    h = full_pool()
    await h.drain()
    status = h.store.get(Kind.SANDBOX, "a/wait")["status"]  # type: ignore[index]
    assert (status["phase"], status["reason"]) == ("Pending", "Unschedulable")
    [cond] = status["conditions"]
    assert (cond["type"], cond["status"], cond["reason"]) == ("Scheduled", "False", "Unschedulable")
    assert cond["message"] == status["message"] == h.failed()[0]
    version = h.store.get(Kind.SANDBOX, "a/wait")["metadata"]["resourceVersion"]  # type: ignore[index]
    h.later(60)  # tried again, still no room, the same words: no second write
    await h.drain()
    assert h.store.get(Kind.SANDBOX, "a/wait")["metadata"]["resourceVersion"] == version  # type: ignore[index]


def test_the_unschedulable_status_keeps_its_transition_time_and_skips_a_repeat() -> None:

    first = unschedulable_status({}, "0/1 pods: full", 0.0)
    assert first is not None
    assert unschedulable_status(first, "0/1 pods: full", 99.0) is None
    changed = unschedulable_status(first, "0/2 pods: full", 99.0)
    assert changed is not None and changed["message"] == "0/2 pods: full"
    since = first["conditions"][0]["lastTransitionTime"]
    assert changed["conditions"][0]["lastTransitionTime"] == since
