"""The pod-lifecycle controller's shell on the real `Kube` over `FakeApi`: what it writes when
pool pods look unhealthy because the control plane was away, because they died, or both; and
that a Sandbox the store missed the deletion of is forgotten instead of evicted forever."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from crds import constants as c
from nest_kube import JSON_PATCH, connect
from nest_kube import resources as r
from nest_kube.fake import FakeApi
from nest_operator.kube import Kube
from nest_operator.lifecycle_controller import (
    WATCHED_KINDS,
    LifecycleController,
    watches_healthy_since,
)
from nest_operator.lifecycle_logic import Grace, Policy
from nest_operator.manager import ControllerManager, Settings
from nest_operator.store import Kind, Obj, Store
from tests.unit.kube.support import eventually

T0 = 1767225600.0  # 2026-01-01T00:00:00Z: wall-clock "now" of every decision below
POLICY = Policy(startup_grace=50, eviction_rate=0.1)


def renewed(seconds_ago: float) -> str:
    return datetime.fromtimestamp(T0 - seconds_ago, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Watch:
    """An informer as the controller sees it."""

    def __init__(self, healthy_since: float | None = 0.0) -> None:
        self.healthy_since = healthy_since


class World:
    """A FakeApi, the operator's store fed with what it holds, and the controller on them."""

    def __init__(self, watch: Watch | None = None) -> None:
        self.api = FakeApi()
        self.store = Store()
        self.kube = Kube(connect(token="t", host="http://127.0.0.1:9"), self.store, api=self.api)
        self.mono = 0.0
        self.lifecycle = LifecycleController(
            self.store, self.kube, Grace(), policy=POLICY, watches=[watch or Watch()],
            clock=lambda: self.mono,
        )  # fmt: skip

    def put(self, kind: Kind, resource: r.Resource, obj: Obj) -> Obj:
        stored = self.api.put(resource, obj)
        self.store.apply(kind, "ADDED", stored)
        return stored

    def pod(self, name: str, lease_age: float | None) -> str:
        """A pool pod whose sidecar last renewed its Lease `lease_age` seconds ago."""
        labels = {c.POOL_LABEL: "default"}
        pod = self.put(Kind.POD, r.PODS, {
            "metadata": {"name": name, "namespace": "nest-system", "labels": labels},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        })  # fmt: skip
        if lease_age is not None:
            self.lease(name, lease_age)
        uid: str = pod["metadata"]["uid"]
        return uid

    def lease(self, name: str, age: float) -> None:
        spec = {"renewTime": renewed(age), "leaseDurationSeconds": 40, "holderIdentity": name}
        self.put(Kind.LEASE, r.LEASES, {
            "metadata": {"name": name, "namespace": "nest-system",
                         "labels": {c.POOL_LABEL: "default"}},
            "spec": spec,
        })  # fmt: skip

    def sandbox(self, name: str, pod_uid: str) -> Obj:
        labels = {c.POOL_LABEL: "default", c.POD_UID_LABEL: pod_uid}
        return self.put(Kind.SANDBOX, r.SANDBOXES, {
            "metadata": {"name": name, "namespace": "ns", "labels": labels,
                         "finalizers": [c.SIDECAR_FINALIZER]},
            "spec": {"function": {"handler": "main:handler"}, "podName": "whatever"},
            "status": {"phase": "Running"},
        })  # fmt: skip

    async def sweep(self) -> None:
        """One periodic sweep: every pod the store knows, and every pod a sandbox names."""
        uids = {p["metadata"]["uid"] for p in self.store.all(Kind.POD)}
        for uid in sorted(uids | set(self.store.bound_pod_uids())):
            await self.lifecycle.reconcile(uid, T0)

    async def evicted(self) -> list[str]:
        items = (await self.api.list(r.SANDBOXES))["items"]
        return sorted(s["metadata"]["name"] for s in items
                      if (s.get("status") or {}).get("reason") == "Evicted")  # fmt: skip

    async def events(self, reason: str) -> list[tuple[str, str]]:
        assert await self.kube.recorder.flush()
        items = (await self.api.list(r.EVENTS))["items"]
        return sorted((e["involvedObject"]["name"], e["message"]) for e in items
                      if e["reason"] == reason)  # fmt: skip


async def test_a_dead_pod_among_healthy_ones_is_evicted_once_the_startup_grace_is_over() -> None:
    world = World()
    world.pod("alive-0", lease_age=5)
    world.pod("alive-1", lease_age=5)
    dead = world.pod("dead", lease_age=100)
    world.sandbox("s1", dead)
    world.sandbox("s2", dead)
    await world.sweep()  # the controller's first look: the sidecars get the grace to renew
    world.mono = 49.0
    await world.sweep()
    assert await world.evicted() == []
    [(pod, message)] = await world.events("EvictionSuspended")
    assert pod == "dead" and message.startswith("ControlPlaneGrace: its pool pod's Lease expired")
    world.mono = 50.0
    await world.sweep()
    assert await world.evicted() == ["s1", "s2"]
    for item in (await world.api.list(r.SANDBOXES))["items"]:
        assert item["metadata"].get("finalizers") in (None, [])  # released on its behalf
        assert item["status"]["message"] == "evicted: its pool pod's Lease expired 60s ago"


async def test_all_pool_pods_stale_at_once_is_an_outage_then_recovery_evicts_at_a_rate() -> None:
    world = World()
    pods = [world.pod(f"pool-{i}", lease_age=100) for i in range(3)]
    for i, uid in enumerate(pods):
        world.sandbox(f"s{i}", uid)
    world.sandbox("on-a-deleted-pod", "uid-of-a-pod-that-is-gone")
    await world.sweep()
    world.mono = 100.0  # long past the startup grace
    await world.sweep()
    # The pod that is gone is a fact; the stale Leases are the control plane's outage.
    assert await world.evicted() == ["on-a-deleted-pod"]
    held = await world.events("EvictionSuspended")  # first the grace, then the outage
    mass = [(pod, m) for pod, m in held if m.startswith("MassUnhealthy")]
    assert [pod for pod, _ in mass] == ["pool-0", "pool-1", "pool-2"] and len(held) == 6
    assert all("all 3 pool pods with a Lease are unhealthy at once" in m for _, m in mass)
    before = world.api.writes["patch", c.SANDBOX_PLURAL]
    await world.sweep()  # held again: nothing written, nothing said twice
    assert world.api.writes["patch", c.SANDBOX_PLURAL] == before
    assert len(await world.events("EvictionSuspended")) == 6
    # The control plane is back and pool-0's sidecar renews; the others get a full grace.
    world.lease("pool-0", age=1)
    await world.sweep()
    world.mono = 149.0
    await world.sweep()
    assert await world.evicted() == ["on-a-deleted-pod"]
    # Still stale after it: dead, evicted one pod per 10 s.
    world.mono = 150.0
    await world.sweep()
    first = await world.evicted()
    assert len(first) == 2 and first[1] in ("s1", "s2")  # either one: pods go in any order
    world.mono = 159.0
    await world.sweep()
    assert await world.evicted() == first
    world.mono = 160.0
    await world.sweep()
    assert await world.evicted() == ["on-a-deleted-pod", "s1", "s2"]


async def test_failing_watches_hold_evictions_and_their_recovery_starts_a_grace() -> None:
    watch = Watch(healthy_since=None)
    world = World(watch)
    world.pod("alive", lease_age=5)
    world.pod("alive-too", lease_age=5)
    world.sandbox("s", world.pod("stale", lease_age=100))
    world.mono = 500.0
    await world.sweep()
    watch.healthy_since = 600.0  # the API server answers again
    world.mono = 640.0
    await world.sweep()
    assert await world.evicted() == []
    messages = [m for _, m in await world.events("EvictionSuspended")]
    assert [m.partition(":")[0] for m in sorted(messages)] == [
        "ControlPlaneGrace", "WatchesFailing"
    ]  # fmt: skip
    world.mono = 650.0
    await world.sweep()
    assert await world.evicted() == ["s"]


async def test_a_sandbox_gone_from_the_server_is_forgotten_not_evicted_again() -> None:
    world = World()
    ghost = world.sandbox("ghost", "uid-of-a-pod-that-is-gone")
    await world.api.delete(r.SANDBOXES, "ns", "ghost")  # with its finalizer: only Terminating
    await world.api.patch(r.SANDBOXES, "ns", "ghost", [
        {"op": "remove", "path": "/metadata/finalizers/0"}], content_type=JSON_PATCH)  # fmt: skip
    assert world.store.get(Kind.SANDBOX, "ns/ghost") == ghost  # its DELETED never reached us
    await world.sweep()
    assert world.store.get(Kind.SANDBOX, "ns/ghost") is None
    assert world.api.writes["patch", c.SANDBOX_PLURAL] == 2  # the test's, then one 404
    await world.sweep()
    assert world.api.writes["patch", c.SANDBOX_PLURAL] == 2


async def test_a_deletion_missed_while_disconnected_is_applied_by_the_relist() -> None:
    """The fault study's Sandbox, evicted every 2 s for an hour: the operator wrote it (so its
    store held a newer version than its informer), the watch broke, it was deleted, and the
    relist's delete, carrying the informer's older copy, was taken for a stale event."""
    world = World()
    events: list[str] = []

    def observe(kind: Kind, event: str, obj: Obj) -> None:
        if world.store.apply(kind, event, obj):
            events.append(f"{event} {obj['metadata']['name']}")

    informer = world.kube.informer(Kind.SANDBOX, observe)
    body = {"metadata": {"name": "s", "namespace": "ns",
                         "labels": {c.POD_UID_LABEL: "uid-of-a-pod-that-is-gone"}},
            "spec": {"function": {"handler": "main:handler"}}}  # fmt: skip
    world.api.put(r.SANDBOXES, body)
    informer.start()
    try:
        await eventually(lambda: events == ["ADDED s"], what="the sandbox listed")
        await informer.stop()  # the watch breaks (an API-server outage)
        await world.kube.patch_status(Kind.SANDBOX, "ns", "s", {"phase": "Pending"})  # newer
        await world.api.delete(r.SANDBOXES, "ns", "s")
        world.api.compact()  # long enough for its history to go: the watch gets 410, relists
        informer.start()
        await eventually(lambda: informer.lists == 2, what="the relist")
        await eventually(lambda: events[-1:] == ["DELETED s"], what="the relist's delete")
        assert world.store.get(Kind.SANDBOX, "ns/s") is None
        await world.sweep()
        assert world.api.writes["patch", c.SANDBOX_PLURAL] == 1  # ours only: no evictions
    finally:
        await informer.stop()


def test_the_manager_gives_the_controller_its_flags_and_its_watches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NEST_EVICTION_RATE", "0.5")
    monkeypatch.setenv("NEST_UNHEALTHY_THRESHOLD", "0.75")
    monkeypatch.setenv("NEST_STARTUP_GRACE", "90")
    conn = connect(token="t", host="http://127.0.0.1:9")
    manager = ControllerManager(conn, Settings.from_env(), kube=Kube(conn, Store(), api=FakeApi()))
    policy = manager.lifecycle.policy
    assert (policy.eviction_rate, policy.unhealthy_threshold, policy.startup_grace) == (
        0.5, 0.75, 90.0
    )  # fmt: skip
    assert manager.lifecycle.watches == [manager.informers[k] for k in WATCHED_KINDS]
    assert watches_healthy_since(manager.lifecycle.watches) is None  # nothing listed yet


def test_the_watches_are_healthy_since_the_latest_recovery_and_not_while_one_fails() -> None:
    assert watches_healthy_since([Watch(3.0), Watch(5.0)]) == 5.0
    assert watches_healthy_since([Watch(3.0), Watch(None)]) is None
    assert watches_healthy_since([]) == float("-inf")  # none given: calm since the start
