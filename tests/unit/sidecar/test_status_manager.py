"""Status writes are coalesced per sandbox, skipped when unchanged, retried on failure, and a
status someone else changed is put right by the periodic resync (and only then written).

The manager runs on the real shell (`KubeShell`) over `nest_kube.FakeApi`, and its lookup is
the real informer's store, so what is counted is what the API server would have been sent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from crds.sandbox import SandboxPhase
from nest_kube import Backoff, EventRecorder, EventSource, Informer, Unreachable
from nest_kube.fake import FakeApi
from nest_kube.resources import SANDBOXES
from nest_sidecar.kube import KubeShell
from nest_sidecar.status import Observed
from nest_sidecar.status_manager import StatusManager, drifted, ended_elsewhere
from tests.unit.kube.support import eventually

RUNNING = Observed(SandboxPhase.RUNNING, 1, code_ready=True, ready=True, pod_name="pool-0")


def sandbox(name: str = "s1") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "labels": {"pod": "p"}},
        "spec": {"podName": "pool-0"},
    }


@dataclass
class World:
    api: FakeApi
    informer: Informer
    manager: StatusManager

    def status_writes(self) -> int:
        return self.api.writes["patch", "sandboxes"]

    def stored(self, name: str = "s1") -> dict[str, Any]:
        return self.api.objects[SANDBOXES][("ns", name)]

    async def caught_up(self, name: str = "s1") -> None:
        """Wait until the informer's store holds what the API server holds."""
        want = self.stored(name)["metadata"]["resourceVersion"]
        await eventually(
            lambda: (self.informer.get("ns", name) or {}).get("metadata", {})
            .get("resourceVersion") == want,
            what="the informer to catch up",
        )  # fmt: skip

    async def someone_else_sets(self, status: Mapping[str, Any], name: str = "s1") -> None:
        await self.api.patch(SANDBOXES, "ns", name, {"status": dict(status)}, subresource="status")
        self.api.writes["patch", "sandboxes"] -= 1  # not the sidecar's write
        await self.caught_up(name)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    api = FakeApi()
    api.put(SANDBOXES, sandbox())
    informer = Informer(api, SANDBOXES, label_selector="pod=p")
    kube = KubeShell(api, EventRecorder(api, EventSource("nest-sidecar")))

    def lookup(uid: str) -> Mapping[str, Any] | None:
        return next((o for o in informer.store.list() if o["metadata"]["uid"] == uid), None)

    informer.start()
    await asyncio.wait_for(informer.synced.wait(), 5)
    yield World(api, informer, StatusManager(kube, lookup))
    await informer.stop()


def count_reads(world: World) -> list[str]:
    """The names of the Sandboxes the API is asked for from now on (GETs are not writes)."""
    reads: list[str] = []
    real_get = world.api.get

    async def get(resource: Any, namespace: Any, name: str, **kwargs: Any) -> dict[str, Any]:
        reads.append(name)
        return await real_get(resource, namespace, name, **kwargs)

    world.api.get = get  # type: ignore[method-assign]
    return reads


def obj_of(world: World, name: str = "s1") -> Mapping[str, Any]:
    found = world.informer.get("ns", name)
    assert found is not None
    return found


async def test_a_fast_start_is_one_write(world: World) -> None:
    obj = obj_of(world)
    for phase in (SandboxPhase.SCHEDULED, SandboxPhase.STARTING, SandboxPhase.RUNNING):
        world.manager.report(obj, Observed(phase, 1, code_ready=True, ready=phase == "Running"))
    assert await world.manager.flush() == 0
    assert world.status_writes() == 1
    assert world.stored()["status"]["phase"] == "Running"


async def test_a_passing_phase_is_written_only_once_it_has_stood_for_the_hold(
    world: World,
) -> None:
    now = [100.0]
    manager = world.manager
    manager.clock = lambda: now[0]
    obj = obj_of(world)
    manager.report(obj, Observed(SandboxPhase.STARTING, 1))
    now[0] += 0.9
    await manager.flush()
    assert world.status_writes() == 0 and manager.pending  # held, not dropped
    now[0] += 0.2  # Starting has stood for 1.1 s: a slow start shows it
    await manager.flush()
    assert world.stored()["status"]["phase"] == "Starting" and not manager.pending
    manager.report(obj, RUNNING)  # settled: at once, whatever the hold
    await manager.flush()
    assert world.status_writes() == 2 and world.stored()["status"]["phase"] == "Running"
    manager.report(obj, Observed(SandboxPhase.TERMINATING, 1))  # the way out: at once too
    await manager.flush()
    assert world.stored()["status"]["phase"] == "Terminating"


async def test_nothing_is_written_when_nothing_changed(world: World) -> None:
    world.manager.report(obj_of(world), RUNNING)
    await world.manager.flush()
    world.manager.report(obj_of(world), RUNNING)
    await world.manager.flush()
    assert world.status_writes() == 1


async def test_a_failed_write_is_kept_and_retried(world: World) -> None:
    world.api.fail("patch", Unreachable("connection refused"))
    failed = Observed(SandboxPhase.FAILED, 1, reason="ImportError", message="x")
    world.manager.report(obj_of(world), failed)
    assert await world.manager.flush() == 1
    assert "status" not in world.stored() and world.manager.pending
    assert await world.manager.flush() == 0
    assert world.stored()["status"]["reason"] == "ImportError"


async def test_resync_writes_nothing_while_the_status_is_as_written(world: World) -> None:
    world.manager.report(obj_of(world), RUNNING)
    await world.manager.flush()
    await world.caught_up()
    # Someone else changes the object but not its status (a label): still in sync.
    await world.api.patch(SANDBOXES, "ns", "s1", {"metadata": {"annotations": {"a": "b"}}})
    await world.caught_up()
    writes_before = world.api.writes.copy()
    reads = count_reads(world)
    for _ in range(3):
        await world.manager.resync()
    assert world.api.writes == writes_before and world.manager.repairs == 0
    assert reads == []  # the store answered: not even a read


async def test_a_status_changed_by_someone_else_is_written_again_once(world: World) -> None:
    world.manager.report(obj_of(world), RUNNING)
    await world.manager.flush()
    await world.caught_up()
    written = world.stored()["status"]
    await world.someone_else_sets({"phase": "Pending", "conditions": [], "restartCount": 3})
    assert world.stored()["status"]["phase"] == "Pending"
    await world.manager.resync()
    assert world.status_writes() == 2 and world.manager.repairs == 1
    status = world.stored()["status"]
    assert (status["phase"], status["restartCount"]) == ("Running", 0)
    kept = ("type", "status", "reason")
    assert [[c[k] for k in kept] for c in status["conditions"]] == [
        [c[k] for k in kept] for c in written["conditions"]
    ]
    await world.caught_up()
    await world.manager.resync()  # repaired: in sync again
    assert world.status_writes() == 2


async def test_a_store_behind_our_own_write_costs_a_read_not_a_write(world: World) -> None:
    world.manager.hold = 0.0  # the restart's Starting written at once
    world.manager.report(obj_of(world), RUNNING)
    await world.manager.flush()
    world.manager.report(obj_of(world), Observed(SandboxPhase.STARTING, 1, reason="CrashLoop"))
    await world.manager.flush()
    # The informer may not have the second write yet; either way nothing is written again.
    await world.manager.resync()
    assert world.status_writes() == 2 and world.manager.repairs == 0


async def test_a_final_phase_someone_else_set_is_kept(world: World) -> None:
    world.manager.report(obj_of(world), RUNNING)
    await world.manager.flush()
    await world.caught_up()
    evicted = {"phase": "Failed", "reason": "Evicted", "message": "evicted: its pod is gone"}
    await world.someone_else_sets(evicted)
    await world.manager.resync()
    await world.manager.resync()
    assert world.status_writes() == 1 and world.stored()["status"]["reason"] == "Evicted"


async def test_a_repair_racing_another_writer_is_refused_and_tried_again(world: World) -> None:
    world.manager.report(obj_of(world), RUNNING)
    await world.manager.flush()
    await world.caught_up()
    await world.someone_else_sets({"phase": "Pending"})
    real_get = world.api.get

    async def get_then_someone_writes(*args: Any, **kwargs: Any) -> dict[str, Any]:
        got = await real_get(*args, **kwargs)
        await world.api.patch(SANDBOXES, "ns", "s1", {"status": {"phase": "Scheduled"}},
                              subresource="status")  # fmt: skip
        return got

    world.api.get = get_then_someone_writes  # type: ignore[method-assign]
    await world.manager.resync()  # the patch carries the version read: 409, nothing overwritten
    assert world.stored()["status"]["phase"] == "Scheduled" and world.manager.repairs == 0
    world.api.get = real_get  # type: ignore[method-assign]
    await world.caught_up()
    await world.manager.resync()
    assert world.stored()["status"]["phase"] == "Running" and world.manager.repairs == 1


async def test_a_deleted_sandbox_is_neither_written_nor_repaired(world: World) -> None:
    obj = obj_of(world)
    await world.api.delete(SANDBOXES, "ns", "s1")
    world.manager.report(obj, RUNNING)
    assert await world.manager.flush() == 0  # 404: nothing left to report on
    await world.manager.resync()
    assert world.manager.repairs == 0


async def test_the_run_loop_writes_a_settled_phase_and_repairs_on_its_period(world: World) -> None:
    manager = world.manager
    manager.hold, manager.resync_period = 30.0, 0.05  # a hold no test would wait out
    task = asyncio.create_task(manager.run())
    try:
        manager.report(obj_of(world), RUNNING)
        await eventually(lambda: world.stored().get("status", {}).get("phase") == "Running")
        await world.caught_up()
        await world.someone_else_sets({"phase": "Pending"})
        await eventually(lambda: manager.repairs == 1, what="the periodic repair")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert world.stored()["status"]["phase"] == "Running"


def test_drift_is_a_different_status_at_another_version() -> None:
    obj = {"metadata": {"resourceVersion": "7"}, "status": {"phase": "Running"}}
    assert not drifted({"phase": "Running"}, "7", obj)
    assert not drifted({"phase": "Running"}, "5", obj)  # newer object, same status
    assert not drifted({"phase": "Pending"}, "7", obj)  # the very version we wrote
    assert drifted({"phase": "Pending"}, "5", obj)


def test_only_terminating_follows_a_final_phase_set_elsewhere() -> None:
    assert ended_elsewhere({"phase": "Failed"}, {"phase": "Running"})
    assert ended_elsewhere({"phase": "Succeeded"}, {"phase": "Starting"})
    assert not ended_elsewhere({"phase": "Failed"}, {"phase": "Terminating"})
    assert not ended_elsewhere({"phase": "Failed"}, {"phase": "Failed"})
    assert not ended_elsewhere({"phase": "Pending"}, {"phase": "Running"})


class CountingBackoff(Backoff):
    """The layer's back-off, with its pauses counted and cut to nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.pauses = 0

    def next(self) -> float:
        self.pauses += 1
        return 0.0


async def test_an_unreachable_api_server_is_retried_after_back_off_not_at_once(
    world: World,
) -> None:
    backoff = CountingBackoff()
    world.manager.backoff = backoff
    world.api.fail("patch", Unreachable("connection refused"), times=3)
    task = asyncio.create_task(world.manager.run())
    try:
        world.manager.report(obj_of(world), RUNNING)
        await eventually(lambda: world.stored().get("status", {}).get("phase") == "Running")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert backoff.pauses == 3  # one pause after each refused flush, none after the success
