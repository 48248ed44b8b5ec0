"""Two operator replicas on one API (FakeApi): both watch, only the Lease's holder writes.

The wiring is main.py's: a manager fills its store (`start_informers`) whatever its role, the
elector's `on_started` is `manager.lead` and its `on_stopped` `manager.stop_leading`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import yaml

from nest_kube import connect
from nest_kube import resources as r
from nest_kube.fake import FakeApi
from nest_kube.leader import LeaderElector, Timing
from nest_operator.kube import Kube
from nest_operator.main import Election
from nest_operator.manager import ControllerManager, Settings
from nest_operator.store import Store
from tests.unit.kube.support import eventually

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "deployments" / "hello-inline.yaml"
FAST = Timing(lease_duration=0.8, renew_deadline=0.5, retry_period=0.1)


def deployment(name: str) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    body["metadata"] = {"name": name, "namespace": "ns"}
    return body


class Replica:
    def __init__(self, api: FakeApi, name: str) -> None:
        conn = connect(token="t", host="http://127.0.0.1:9")  # never dialled: FakeApi answers
        self.manager = ControllerManager(conn, Settings(resync_seconds=3600),
                                         kube=Kube(conn, Store(), api=api))  # fmt: skip
        self.lost: list[str] = []
        self.elector = LeaderElector(
            api, "nest-system", "nest-operator", name, FAST,
            on_started=self.manager.lead, on_stopped=self._lost,
        )  # fmt: skip
        self.task: asyncio.Task[None] | None = None

    def _lost(self, reason: str) -> None:
        self.manager.stop_leading()
        self.lost.append(reason)

    async def start(self) -> None:
        await asyncio.wait_for(self.manager.start_informers(), 10)
        self.task = asyncio.create_task(self.elector.run())

    async def die(self) -> None:
        """kill -9: nothing is released, nothing more is written."""
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.manager.stop()


def replica_sets(api: FakeApi) -> list[str]:
    return sorted(
        o["metadata"]["name"] for o in api.objects.get(r.SANDBOX_REPLICASETS, {}).values()
    )


async def test_a_standby_writes_nothing_until_it_leads() -> None:
    api = FakeApi()
    api.put(r.SANDBOX_DEPLOYMENTS, deployment("hello"))
    conn = connect(token="t", host="http://127.0.0.1:9")
    manager = ControllerManager(conn, Settings(resync_seconds=3600),
                                kube=Kube(conn, Store(), api=api))  # fmt: skip
    await asyncio.wait_for(manager.start_informers(), 10)
    try:
        assert manager.informed and not manager.synced
        # Nothing runs that could write, and nothing was queued for later.
        assert manager._tasks == [] and sum(api.writes.values()) == 0
        assert all(q._queue.empty() for q in manager.queues.values())
        manager.lead()
        await eventually(lambda: replica_sets(api), what="the leader's replica set")
        manager.stop_leading()
        assert not manager.synced
        await eventually(lambda: all(t.done() for t in manager._tasks), what="tasks cancelled")
    finally:
        await manager.stop()


async def test_two_replicas_one_writer_and_the_standby_takes_over() -> None:
    api = FakeApi()
    api.put(r.SANDBOX_DEPLOYMENTS, deployment("first"))
    a, b = Replica(api, "a"), Replica(api, "b")
    await a.start()
    await eventually(lambda: a.manager.synced, what="a to lead")
    await b.start()
    await eventually(lambda: replica_sets(api), what="first's replica set")
    assert len(replica_sets(api)) == 1 and not b.manager.synced  # b watches, a alone writes
    await a.die()
    await eventually(lambda: b.manager.synced, timeout=5, what="b to take over")
    api.put(r.SANDBOX_DEPLOYMENTS, deployment("second"))
    await eventually(lambda: len(replica_sets(api)) == 2, what="second's replica set, by b")
    assert a.lost == [] and b.lost == []
    await b.die()


async def test_a_leader_that_loses_the_lease_stops_its_controllers() -> None:
    api = FakeApi()
    a = Replica(api, "a")
    await a.start()
    await eventually(lambda: a.manager.synced, what="a to lead")
    lease = await api.get(r.LEASES, "nest-system", "nest-operator")
    lease["spec"]["holderIdentity"] = "someone-else"
    await api.replace(r.LEASES, "nest-system", "nest-operator", lease)
    await eventually(lambda: a.lost, what="a to stop leading")
    assert not a.manager.synced
    await eventually(lambda: all(t.done() for t in a.manager._tasks), what="controllers stopped")
    await a.die()


def test_election_settings_from_the_environment() -> None:
    default = Election.from_env({})
    assert default.enabled and (default.namespace, default.name) == ("nest-system", "nest-operator")
    assert default.timing == Timing(15, 10, 2)
    custom = Election.from_env({"NEST_LEADER_ELECT": "off", "POD_NAMESPACE": "ops",
                                "NEST_LEADER_ELECT_LEASE_DURATION": "30"})  # fmt: skip
    assert not custom.enabled and custom.namespace == "ops"
    assert custom.timing.lease_duration == 30
