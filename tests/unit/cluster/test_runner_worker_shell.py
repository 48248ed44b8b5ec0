"""Real pod workers behind the informer, against `nest_kube.FakeApi`: a pod added runs a process
and reports Running, a broken watch relists without touching it, a failed status write is tried
again without stopping it, and a deleted pod's process is stopped. Processes run unisolated
(`isolate=False`), as a runner that is not root runs them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from nest_cluster.runner import process
from nest_cluster.runner.kube import RunnerKube
from nest_cluster.runner.layout import Layout
from nest_cluster.runner.manager import NodePods
from nest_cluster.runner.pods import Event, NodeContext, PodWorker
from nest_cluster.runner.state import ContainerState
from nest_kube import ApiError, Backoff
from nest_kube.fake import FakeApi
from nest_kube.resources import CONFIGMAPS, PODS
from tests.unit.kube.support import eventually

NODE = "nest-test"


def sleeper(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {
            "nodeName": NODE,
            "terminationGracePeriodSeconds": 5,
            "containers": [{"name": "main", "command": ["sleep", "600"]}],
        },
    }


Running = tuple[FakeApi, NodePods, Path]


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Running]:
    api = FakeApi()
    kube = RunnerKube(api, asyncio.get_running_loop())
    ctx = NodeContext(NODE, str(tmp_path), 6443, Layout(tmp_path), kube, isolate=False)
    pods = NodePods(api, ctx, field_selector="", backoff=Backoff(initial=0.001, cap=0.001))
    pods.start()
    try:
        yield api, pods, tmp_path
    finally:
        await pods.stop(time.time() + 5.0)
        process.sweep(str(tmp_path), grace=1.0)  # whatever a failed test left running


def worker(pods: NodePods, uid: str) -> PodWorker | None:
    found = pods.manager.workers.get(uid)
    assert found is None or isinstance(found, PodWorker)
    return found


def running_pid(pods: NodePods, uid: str) -> int | None:
    found = worker(pods, uid)
    if found is None:
        return None
    record = found.records["main"]
    return record.pid if record.state is ContainerState.RUNNING else None


def phase(api: FakeApi, name: str) -> str | None:
    obj = api.objects[PODS].get(("ns", name))
    return None if obj is None else (obj.get("status") or {}).get("phase")


async def test_a_pod_runs_survives_a_relist_and_stops_when_deleted(node: Running) -> None:
    api, pods, _ = node
    uid = (await api.create(PODS, "ns", sleeper("web")))["metadata"]["uid"]
    pid = await eventually(lambda: running_pid(pods, uid), what="the container running") or 0
    assert psutil.Process(pid).is_running()
    await eventually(lambda: phase(api, "web") == "Running", what="status Running written")
    first = worker(pods, uid)

    await pods.informer.stop()  # the watch breaks; the cluster moves on and is compacted
    await api.create(CONFIGMAPS, "ns", {"metadata": {"name": "elsewhere"}})
    api.compact()
    pods.informer.start()
    await eventually(lambda: pods.informer.lists == 2, what="the relist after 410 Gone")
    assert worker(pods, uid) is first and running_pid(pods, uid) == pid  # not restarted
    status = api.objects[PODS][("ns", "web")]["status"]
    assert status["containerStatuses"][0]["restartCount"] == 0

    await api.delete(PODS, "ns", "web")
    await eventually(lambda: worker(pods, uid) is None, what="the worker done")
    assert not psutil.pid_exists(pid)


async def test_a_failed_status_write_is_tried_again_and_stops_nothing(node: Running) -> None:
    api, pods, _ = node
    api.fail("patch", ApiError(503, "ServiceUnavailable"))
    uid = (await api.create(PODS, "ns", sleeper("web")))["metadata"]["uid"]
    pid = await eventually(lambda: running_pid(pods, uid), what="the container running") or 0
    # The first write failed; the worker's back-off (0.8-1.6 s) brings the status through.
    await eventually(lambda: phase(api, "web") == "Running", timeout=15.0, what="the retry")
    assert running_pid(pods, uid) == pid


async def test_a_pod_whose_status_write_finds_it_gone_is_wound_down(node: Running) -> None:
    api, pods, _ = node
    uid = (await api.create(PODS, "ns", sleeper("web")))["metadata"]["uid"]
    pid = await eventually(lambda: running_pid(pods, uid), what="the container running") or 0
    await eventually(lambda: phase(api, "web") == "Running", what="status Running written")
    # Gone behind the watch's back (a DELETED it never delivered): the next status write, here
    # of the container no longer ready as a failing probe reports it, learns it with a 404.
    await pods.informer.stop()
    del api.objects[PODS][("ns", "web")]
    found = worker(pods, uid)
    assert found is not None
    found.post(Event("ready", container="main", pid=pid, code=0))  # a change to publish
    await eventually(lambda: worker(pods, uid) is None, what="the worker done")
    assert not psutil.pid_exists(pid)


async def test_a_container_that_ignores_sigterm_after_a_failed_liveness_probe_is_killed(
    node: Running,
) -> None:
    api, pods, _ = node
    pod = sleeper("stubborn")
    pod["spec"]["terminationGracePeriodSeconds"] = 1
    pod["spec"]["containers"][0]["command"] = ["sh", "-c", "trap '' TERM; sleep 600 & wait"]
    uid = (await api.create(PODS, "ns", pod))["metadata"]["uid"]
    pid = await eventually(lambda: running_pid(pods, uid), what="the container running") or 0
    found = worker(pods, uid)
    assert found is not None
    found.post(Event("live", container="main", pid=pid, code=0))  # the liveness probe failed

    def restarted() -> bool:
        new = running_pid(pods, uid)
        return new is not None and new != pid

    await eventually(restarted, timeout=15.0, what="killed at the grace's end and restarted")
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
