"""The scheduling queue on a fake clock, and the plugins' queueing hints it asks.

Unschedulable sandboxes wait for the events that may let them fit; a heartbeat is none of them;
back-off spaces the attempts; in-flight sandboxes do not miss events; five minutes flush all.
"""

from __future__ import annotations

import dataclasses

import pytest

from nest_operator.scheduler import (
    BoundSandbox,
    ClusterEvent,
    EventKind,
    PoolPod,
    Rejection,
    SandboxRequest,
    Scheduler,
    SchedulingQueue,
)
from nest_operator.scheduler.plugins import (
    IsolationSupported,
    NativeDependencies,
    PodReady,
    ResourcesFit,
    TenantIsolation,
)
from nest_operator.scheduler.queue import Where
from tests.unit.operator.test_scheduler import MI, NOW, pod, request

PLUGINS = Scheduler().plugins
FULL = Rejection(frozenset({"PoolMatch", "ResourcesFit"}), frozenset({"ResourcesFit"}))
TOO_BIG = Rejection(frozenset({"PoolMatch", "ResourcesFit"}), frozenset())
NOT_READY = Rejection(frozenset({"PoolMatch", "PodReady"}), frozenset())


def freed(pool: str = "default", namespace: str = "default", **changes: object) -> ClusterEvent:
    sandbox = BoundSandbox("gone", "uid-p0", 64 * MI, 100, None, None, namespace)
    sandbox = dataclasses.replace(sandbox, **changes)  # type: ignore[arg-type]
    return ClusterEvent(EventKind.CAPACITY_FREED, pool, freed=sandbox, at=NOW)


def renewed(old: PoolPod, seconds: float = 10) -> ClusterEvent:
    new = dataclasses.replace(old, lease_renewed_at=NOW + seconds)
    return ClusterEvent(EventKind.LEASE_RENEWED, old.pool, old, new, at=NOW + seconds)


def refused(
    queue: SchedulingQueue, key: str, rejection: Rejection, at: float, **changes: object
) -> SandboxRequest:
    """`key` added, popped and refused at `at`."""
    queue.add(key, at)
    assert queue.pop() == key
    r = request(key, **changes)
    queue.unschedulable(key, r, rejection, at)
    return r


def drain(queue: SchedulingQueue) -> list[str]:
    out = []
    while (key := queue.pop()) is not None:
        out.append(key)
    return out


def test_new_sandboxes_are_active_in_order_and_each_once() -> None:
    queue = SchedulingQueue(PLUGINS)
    for key in ("a", "b", "a"):
        queue.add(key, 0)
    assert drain(queue) == ["a", "b"]
    assert queue.where("a") is Where.IN_FLIGHT
    queue.done("a")
    assert queue.where("a") is None and queue.pop() is None


def test_a_heartbeat_moves_nothing_and_freed_capacity_moves_only_what_it_may_help() -> None:
    queue = SchedulingQueue(PLUGINS)
    refused(queue, "full", FULL, 0)
    refused(queue, "big", TOO_BIG, 0)
    refused(queue, "other-pool", FULL, 0, pool="other")
    assert queue.move(renewed(pod()), 100) == 0
    assert queue.counts()["unschedulable"] == 3
    assert queue.move(freed(), 100) == 1  # "big" is UnschedulableAndUnresolvable
    assert drain(queue) == ["full"]
    assert queue.where("big") is Where.UNSCHEDULABLE
    assert queue.where("other-pool") is Where.UNSCHEDULABLE


def test_a_pod_joining_the_pool_and_a_pool_change_move_every_refusal() -> None:
    queue = SchedulingQueue(PLUGINS)
    refused(queue, "big", TOO_BIG, 0)
    refused(queue, "sick", NOT_READY, 0)
    refused(queue, "elsewhere", TOO_BIG, 0, pool="other")
    joined = ClusterEvent(EventKind.POD_ADDED, "default", None, pod("new"), at=NOW)
    assert queue.move(joined, 100) == 2
    assert drain(queue) == ["big", "sick"]
    assert queue.move(ClusterEvent(EventKind.POOL_CHANGED, "other", at=NOW), 100) == 1
    assert drain(queue) == ["elsewhere"]


def test_back_off_doubles_from_one_to_ten_seconds_per_sandbox() -> None:
    queue = SchedulingQueue(PLUGINS)
    queue.add("s", 0)
    waits = []
    now = 0.0
    for _ in range(6):
        assert queue.pop() == "s"
        queue.unschedulable("s", request("s"), FULL, now)
        queue.move(freed(), now)  # at once: it must wait out its back-off
        assert queue.where("s") is Where.BACKOFF
        wake = queue.next_wakeup()
        assert wake is not None
        queue.flush(wake - 0.001)
        assert queue.where("s") is Where.BACKOFF
        queue.flush(wake)
        assert queue.where("s") is Where.ACTIVE
        waits.append(wake - now)
        now = wake
    assert waits == [1, 2, 4, 8, 10, 10]
    assert queue.attempts("s") == 6


def test_a_move_after_the_back_off_goes_straight_to_active() -> None:
    queue = SchedulingQueue(PLUGINS)
    refused(queue, "s", FULL, 0)
    queue.move(freed(), 1.0)
    assert queue.where("s") is Where.ACTIVE


def test_an_event_during_the_attempt_is_not_missed() -> None:
    queue = SchedulingQueue(PLUGINS)
    queue.add("s", 0)
    assert queue.pop() == "s"
    queue.move(renewed(pod()), 0.1)  # not for it
    queue.move(freed(), 0.2)  # capacity freed while it was being decided on the old view
    queue.unschedulable("s", request("s"), FULL, 0.3)
    assert queue.where("s") is Where.BACKOFF
    queue.add("t", 1)
    assert queue.pop() == "t"
    queue.move(renewed(pod()), 1.1)
    queue.unschedulable("t", request("t"), FULL, 1.2)
    assert queue.where("t") is Where.UNSCHEDULABLE


def test_a_sandbox_that_changed_during_its_attempt_is_decided_again() -> None:
    queue = SchedulingQueue(PLUGINS)
    queue.add("s", 0)
    assert queue.pop() == "s"
    queue.add("s", 0.1)
    queue.unschedulable("s", request("s"), TOO_BIG, 0.2)
    assert queue.where("s") is Where.BACKOFF


def test_unschedulable_sandboxes_are_flushed_after_five_minutes() -> None:
    queue = SchedulingQueue(PLUGINS)
    refused(queue, "a", TOO_BIG, 0)
    refused(queue, "b", TOO_BIG, 10)
    assert queue.next_wakeup() == 300
    queue.flush(299.9)
    assert queue.counts()["unschedulable"] == 2
    queue.flush(300)
    assert drain(queue) == ["a"]
    assert queue.next_wakeup() == 310


def test_errors_back_off_and_conflicts_retry_soon() -> None:
    queue = SchedulingQueue(PLUGINS)
    queue.add("e", 0)
    queue.add("c", 0)
    assert drain(queue) == ["e", "c"]
    queue.error("e", 5)
    queue.retry_after("c", 5, 0.05)
    queue.flush(5.05)
    assert drain(queue) == ["c"]
    queue.flush(6)
    assert drain(queue) == ["e"]


def test_deleted_sandboxes_are_forgotten_wherever_they_wait() -> None:
    queue = SchedulingQueue(PLUGINS)
    refused(queue, "u", FULL, 0)
    queue.add("in-flight", 0)
    assert queue.pop() == "in-flight"
    for key in ("u", "in-flight"):
        queue.delete(key)
    queue.unschedulable("in-flight", request("in-flight"), FULL, 1)  # its attempt ends late
    assert queue.move(freed(), 100) == 0 and queue.counts() == dict.fromkeys(queue.counts(), 0)


def test_without_hints_every_event_moves_everything_as_before() -> None:
    queue = SchedulingQueue(PLUGINS, initial_backoff=0, hints=False)
    refused(queue, "a", TOO_BIG, 0)
    refused(queue, "b", FULL, 0)
    assert queue.move(renewed(pod()), 0.001) == 2
    assert drain(queue) == ["a", "b"]


# --- the hints -----------------------------------------------------------------------------------


def test_pod_ready_hints_only_a_pod_that_became_usable() -> None:
    plugin = PodReady(lease_ttl=40)
    fresh = pod()
    stale = dataclasses.replace(fresh, lease_renewed_at=NOW - 100)
    assert not plugin.hint(request(), renewed(fresh))
    assert plugin.hint(request(), renewed(stale))
    assert not plugin.hint(request(pool="other"), renewed(stale))
    ready = ClusterEvent(EventKind.POD_UPDATED, "default", pod(ready=False), fresh, at=NOW)
    assert plugin.hint(request(), ready)
    cordoned = ClusterEvent(EventKind.POD_UPDATED, "default", fresh, pod(cordoned=True), at=NOW)
    assert not plugin.hint(request(), cordoned)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ({}, {"memory": 2048 * MI}, True),
        ({}, {"max_sandboxes": 11}, True),
        ({"memory": 2048 * MI}, {}, False),  # shrank
        ({}, {"cpu": 1001, "memory": 32 * MI}, False),  # grew, but now too small for it
    ],
)
def test_resources_fit_hints_capacity_that_grew_enough(
    old: dict[str, int], new: dict[str, int], expected: bool
) -> None:
    event = ClusterEvent(
        EventKind.POD_UPDATED, "default", pod("p0", **old), pod("p0", **new), at=NOW
    )
    assert ResourcesFit().hint(request(), event) is expected
    assert ResourcesFit().hint(request(), freed())
    assert not ResourcesFit().hint(request(), freed(pool="other"))


def test_isolation_tenancy_and_natives_hint_their_own_causes() -> None:
    only_ns = pod(isolation=frozenset({"namespace"}))
    both = pod()
    offered = ClusterEvent(EventKind.POD_UPDATED, "default", only_ns, both, at=NOW)
    assert IsolationSupported().hint(request(), offered)
    assert not IsolationSupported().hint(request(isolation="namespace"), offered)
    tenancy = TenantIsolation()
    assert tenancy.hint(request(), freed(namespace="other-tenant"))
    assert not tenancy.hint(request(), freed(namespace="default"))  # its own tenant left
    labels = ClusterEvent(EventKind.NAMESPACE_CHANGED, namespace="default", at=NOW)
    assert tenancy.hint(request(), labels)
    assert not tenancy.hint(request(namespace="x"), labels)
    natives = NativeDependencies()
    wants = request(isolation="namespace", native_distributions=frozenset({"numpy==2"}))
    holder = {"isolation": "namespace", "native_distributions": frozenset({"numpy==1"})}
    assert natives.hint(wants, freed("default", "default", **holder))
    assert not natives.hint(wants, freed())
    loaded = pod(native_distributions=frozenset({"numpy==1"}))
    restarted = ClusterEvent(EventKind.POD_UPDATED, "default", loaded, pod(), at=NOW)
    assert natives.hint(wants, restarted)
    assert not natives.hint(wants, renewed(loaded))
