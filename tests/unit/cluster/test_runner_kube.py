"""The runner's I/O shell against `nest_kube.FakeApi`: the pod watch routed to workers (relists
that leave running pods alone), status writes under conflicts and failures, the workers' calls
handed to the loop, and the node's registration and heartbeat."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from nest_cluster.runner.kube import RunnerKube, Written, status_patch, write_status
from nest_cluster.runner.layout import Layout
from nest_cluster.runner.manager import NodePods, node_selector
from nest_cluster.runner.node import LEASE_NAMESPACE, NODES, NodeAgent
from nest_cluster.runner.pods import Event, NodeContext
from nest_kube import ApiError, Backoff, Unreachable
from nest_kube.fake import FakeApi
from nest_kube.resources import CONFIGMAPS, LEASES, PODS
from tests.unit.kube.support import eventually

NODE = "nest-test"
NO_PAUSE = Backoff(initial=0.001, cap=0.001, jitter=0.0)


def pod(name: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns"}, "spec": {"nodeName": NODE, **spec}}


def node_context(api: FakeApi, tmp_path: Path) -> NodeContext:
    kube = RunnerKube(api, asyncio.get_running_loop())
    return NodeContext(NODE, str(tmp_path), 6443, Layout(tmp_path), kube, isolate=False)


class StandIn:
    """A pod worker that records what it is told instead of running anything."""

    def __init__(self, made: list[StandIn], pod: Mapping[str, Any]) -> None:
        self.uid = pod["metadata"]["uid"]
        self.started = False
        self.events: list[Event] = []
        made.append(self)

    def start(self) -> None:
        self.started = True

    def post(self, event: Event) -> None:
        self.events.append(event)

    def join(self, timeout: float) -> None:
        return None

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


Made = tuple[FakeApi, NodePods, list[StandIn]]


@pytest.fixture
async def stand_ins(tmp_path: Path) -> AsyncIterator[Made]:
    api = FakeApi()
    api.put(PODS, pod("before"))
    made: list[StandIn] = []

    def factory(ctx: NodeContext, obj: Mapping[str, Any], done: Callable[[str], None]) -> StandIn:
        return StandIn(made, obj)

    # The fake serves no spec.nodeName selector; every pod of these tests is on the node.
    pods = NodePods(api, node_context(api, tmp_path), make_worker=factory, field_selector="",
                    backoff=NO_PAUSE)  # fmt: skip
    pods.start()
    await eventually(pods.informer.synced.is_set, what="the first list")
    yield api, pods, made
    await pods.stop(time.time())


def test_the_node_watches_the_pods_bound_to_it() -> None:
    assert node_selector("nest-local") == "spec.nodeName=nest-local"


async def test_a_pod_added_is_started_once_and_told_of_its_changes(stand_ins: Made) -> None:
    api, _, made = stand_ins
    assert [(w.uid, w.started) for w in made] == [
        (api.objects[PODS][("ns", "before")]["metadata"]["uid"], True)
    ]
    await api.create(PODS, "ns", pod("new"))
    await eventually(lambda: len(made) == 2, what="a worker for the new pod")
    await api.patch(PODS, "ns", "new", {"metadata": {"labels": {"a": "b"}}})
    await eventually(lambda: made[1].kinds() == ["pod"], what="the update posted")
    assert made[1].started and len(made) == 2  # posted to, not made again


async def test_a_pod_deleted_is_stopped(stand_ins: Made) -> None:
    api, _, made = stand_ins
    await api.delete(PODS, "ns", "before")
    await eventually(lambda: made[0].kinds() == ["gone"], what="the worker told it is gone")


async def test_a_relist_after_410_restarts_nothing_and_reports_what_changed(
    stand_ins: Made,
) -> None:
    api, pods, made = stand_ins
    await api.create(PODS, "ns", pod("changes"))
    await api.create(PODS, "ns", pod("goes"))
    await eventually(lambda: len(made) == 3, what="three workers")
    await pods.informer.stop()  # the watch breaks; meanwhile the history is compacted away
    await api.patch(PODS, "ns", "changes", {"metadata": {"labels": {"a": "b"}}})
    await api.delete(PODS, "ns", "goes")
    await api.create(PODS, "ns", pod("arrives"))
    api.compact()
    pods.informer.start()
    await eventually(lambda: pods.informer.lists == 2, what="a relist after 410 Gone")
    await eventually(lambda: len(made) == 4, what="a worker for the pod that arrived")
    before, changes, goes, arrives = made
    assert before.events == []  # unchanged: nothing posted, nothing restarted
    assert changes.kinds() == ["pod"] and goes.kinds() == ["gone"]
    assert arrives.started and arrives.events == []
    assert len({w.uid for w in made}) == 4  # one worker per pod, ever


async def test_a_failing_list_and_watch_are_retried_without_new_workers(tmp_path: Path) -> None:
    api = FakeApi()
    api.put(PODS, pod("p"))
    api.fail("list", Unreachable("connection refused"), times=2)
    api.fail("watch", ApiError(500, "InternalError"), times=2)
    made: list[StandIn] = []
    pods = NodePods(api, node_context(api, tmp_path), field_selector="", backoff=NO_PAUSE,
                    make_worker=lambda ctx, obj, done: StandIn(made, obj))  # fmt: skip
    pods.start()
    try:
        await eventually(lambda: len(made) == 1, what="the pod listed after two refusals")
        await api.create(PODS, "ns", pod("q"))
        await eventually(lambda: len(made) == 2, what="the watch running after two 500s")
    finally:
        await pods.stop(time.time())


async def test_after_the_first_list_only_files_of_vanished_pods_are_removed(
    tmp_path: Path,
) -> None:
    api = FakeApi()
    kept = api.put(PODS, pod("kept"))["metadata"]["uid"]
    layout = Layout(tmp_path)
    layout.claim(kept, "ns", "kept", ["c"])
    layout.claim("vanished-uid", "ns", "vanished", ["c"])
    pods = NodePods(api, node_context(api, tmp_path), field_selector="", backoff=NO_PAUSE,
                    make_worker=lambda ctx, obj, done: StandIn([], obj))  # fmt: skip
    pods.start()
    try:
        await eventually(lambda: not layout.pod("vanished-uid").root.exists(), what="removal")
        assert [meta.uid for _, meta in layout.pods()] == [kept]
    finally:
        await pods.stop(time.time())


# -- status writes -----------------------------------------------------------------------------


class Counting(FakeApi):
    """Counts patch attempts, the injected refusals too (`writes` counts only those it ran)."""

    def __init__(self) -> None:
        super().__init__()
        self.patches = 0

    async def patch(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.patches += 1
        return await super().patch(*args, **kwargs)


async def test_a_status_is_written_with_the_uid_as_precondition() -> None:
    api = FakeApi()
    obj = api.put(PODS, pod("p"))
    assert status_patch(obj, {"phase": "Running"})["metadata"] == {"uid": obj["metadata"]["uid"]}
    assert await write_status(api, obj, {"phase": "Running"}) is Written.WRITTEN
    assert api.objects[PODS][("ns", "p")]["status"] == {"phase": "Running"}


async def test_status_write_conflicts_are_retried_on_the_same_pod() -> None:
    api = Counting()
    obj = api.put(PODS, pod("p"))
    api.fail("patch", ApiError(409, "Conflict"), times=2)
    assert await write_status(api, obj, {"phase": "Running"}) is Written.WRITTEN
    assert api.patches == 3
    assert api.objects[PODS][("ns", "p")]["status"] == {"phase": "Running"}


async def test_endless_conflicts_give_up_for_now() -> None:
    api = Counting()
    obj = api.put(PODS, pod("p"))
    api.fail("patch", ApiError(409, "Conflict"), times=10)
    assert await write_status(api, obj, {"phase": "Running"}) is Written.FAILED
    assert api.patches == 3


async def test_a_pod_gone_or_replaced_under_its_name_is_gone() -> None:
    api = FakeApi()
    old = api.put(PODS, pod("p"))
    await api.delete(PODS, "ns", "p")
    assert await write_status(api, old, {"phase": "Running"}) is Written.GONE  # 404
    api.put(PODS, pod("p"))  # a new pod, another uid: the server refuses our precondition
    api.fail("patch", ApiError(409, "Conflict"))
    assert await write_status(api, old, {"phase": "Running"}) is Written.GONE
    assert "status" not in api.objects[PODS][("ns", "p")]


async def test_an_unreachable_or_failing_server_is_a_failure_to_retry_later() -> None:
    api = FakeApi()
    obj = api.put(PODS, pod("p"))
    for error in (Unreachable("connection refused"), ApiError(503), ApiError(422, "Invalid")):
        api.fail("patch", error)
        assert await write_status(api, obj, {"phase": "Running"}) is Written.FAILED


# -- the bridge from worker threads to the loop ------------------------------------------------


async def test_worker_threads_call_the_api_on_the_loop() -> None:
    api = FakeApi()
    api.put(CONFIGMAPS, {"metadata": {"name": "c", "namespace": "ns"}, "data": {"k": "v"}})
    obj = api.put(PODS, pod("p"))
    kube = RunnerKube(api, asyncio.get_running_loop())
    found = await asyncio.to_thread(kube.read, CONFIGMAPS, "ns", "c")
    assert found is not None and found["data"] == {"k": "v"}
    assert await asyncio.to_thread(kube.read, CONFIGMAPS, "ns", "missing") is None
    written = await asyncio.to_thread(kube.write_status, obj, {"phase": "Pending"})
    assert written is Written.WRITTEN
    api.fail("get", ApiError(403, "Forbidden"))
    with pytest.raises(ApiError) as refused:
        await asyncio.to_thread(kube.read, CONFIGMAPS, "ns", "c")
    assert refused.value.status == 403


async def test_a_blocking_call_on_the_loop_itself_is_refused() -> None:
    kube = RunnerKube(FakeApi(), asyncio.get_running_loop())
    with pytest.raises(RuntimeError, match="would wait forever"):
        kube.read(CONFIGMAPS, "ns", "c")


# -- the node ----------------------------------------------------------------------------------


async def test_registration_makes_the_node_ready_untainted_and_leased() -> None:
    api = FakeApi()
    taints = [{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"},
              {"key": "keep", "effect": "NoSchedule"}]  # fmt: skip
    api.put(NODES, {"metadata": {"name": NODE}, "spec": {"taints": taints}})  # registered before
    agent = NodeAgent(api, NODE, heartbeat=3600)
    await agent.register()
    try:
        node = api.objects[NODES][("", NODE)]
        assert node["metadata"]["labels"]["nest.dev/local-node"] == "true"
        assert [t["key"] for t in node["spec"]["taints"]] == ["keep"]
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready[0]["status"] == "True"
        lease = api.objects[LEASES][(LEASE_NAMESPACE, NODE)]
        assert lease["spec"]["holderIdentity"] == NODE
        await agent.renew_lease()  # the Lease exists now: patched, not created again
        assert api.writes["create", "leases"] == 1 and api.writes["patch", "leases"] == 2
    finally:
        await agent.shut_down()
    ready = [c for c in api.objects[NODES][("", NODE)]["status"]["conditions"]
             if c["type"] == "Ready"]  # fmt: skip
    assert ready[0]["status"] == "False"
