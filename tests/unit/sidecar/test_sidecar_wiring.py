"""The whole sidecar (`main.Sidecar`) on `nest_kube.FakeApi` and an in-memory runtime: it watches
only the Sandboxes bound to its pod, runs them (Running status; a Started Event only for a start
after a failure), keeps its Lease, stops and releases a deleted one, puts right a status someone
else changed, and never adds the finalizer (the binder does)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest

from crds.constants import POD_UID_LABEL, SIDECAR_FINALIZER
from nest_kube.fake import FakeApi
from nest_kube.resources import EVENTS, LEASES, SANDBOXES
from nest_sidecar.lease import Capacity
from nest_sidecar.main import Settings, Sidecar
from sandbox.api import CreateSandbox, RuntimeInfo, SandboxEvent, SandboxInfo
from sandbox.errors import RuntimeUnavailable
from tests.unit.kube.support import eventually

POD_UID = "pod-uid-0"
SOURCE = {"inline": {"main.py": "def handler(e, c):\n    return 1\n"}}


def sandbox(name: str, pod_uid: str = POD_UID, finalizers: bool = True) -> dict[str, Any]:
    """Bound as the scheduler binds: the pod-uid label and the sidecar's finalizer, one write."""
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "labels": {POD_UID_LABEL: pod_uid},
            "finalizers": [SIDECAR_FINALIZER] if finalizers else [],
        },
        "spec": {
            "podName": "pool-0",
            "function": {"handler": "main:handler", "isolation": "namespace", "source": SOURCE},
        },
    }


class MemoryRuntime:
    """Runs nothing: every create is Running at once; events are never streamed."""

    def __init__(self) -> None:
        self.running: dict[str, SandboxInfo] = {}
        self.removed: list[str] = []

    async def info(self) -> RuntimeInfo:
        return RuntimeInfo(pid=1, started_at=0.0, data_host="127.0.0.1", data_port=8080,
                           zygote_pid=None, sandboxes=len(self.running))  # fmt: skip

    async def create(self, request: CreateSandbox) -> SandboxInfo:
        info = SandboxInfo(
            id=request.id, isolation="namespace", state="Running", reason="", message="",
            pid=1, exit_code=None, signal=None, created_at=0.0,
            started_at=0.0, finished_at=None,
        )  # fmt: skip
        self.running[request.id] = info
        return info

    async def remove(self, sandbox_id: str, grace_seconds: float) -> None:
        self.running.pop(sandbox_id, None)
        self.removed.append(sandbox_id)

    async def list(self) -> list[SandboxInfo]:
        return list(self.running.values())

    @asynccontextmanager
    async def _events(self) -> AsyncIterator[AsyncIterator[SandboxEvent]]:
        async def never() -> AsyncIterator[SandboxEvent]:
            await asyncio.Event().wait()  # a runtime where nothing changes by itself
            nothing: list[SandboxEvent] = []
            for event in nothing:
                yield event

        yield never()

    def watch(self) -> Any:
        return self._events()


class FlakyRuntime(MemoryRuntime):
    """Does not answer the first create (restarting), then runs as MemoryRuntime."""

    def __init__(self) -> None:
        super().__init__()
        self.refused = False

    async def create(self, request: CreateSandbox) -> SandboxInfo:
        if not self.refused:
            self.refused = True
            raise RuntimeUnavailable("connection refused")
        return await super().create(request)


def settings(tmp_path: Path) -> Settings:
    return Settings(
        pod_name="pool-0", pod_namespace="nest-system", pod_uid=POD_UID, pod_ip="127.0.0.1",
        runtime_socket=str(tmp_path / "rt.sock"), runtime_port=8080,
        code_cache=tmp_path / "code", health_port=0, lease_interval=3600.0,
        backoff_initial=0.01, grace_seconds=0.0, pool="default",
        capacity=Capacity(memory_bytes=1 << 30, cpu_millis=1000, max_sandboxes=10),
    )  # fmt: skip


def stored(api: FakeApi, name: str) -> dict[str, Any] | None:
    return api.objects.get(SANDBOXES, {}).get(("ns", name))


def phase(api: FakeApi, name: str) -> str | None:
    return ((stored(api, name) or {}).get("status") or {}).get("phase")


async def test_the_sidecar_runs_what_is_bound_to_it_and_repairs_its_status(
    tmp_path: Path,
) -> None:
    api = FakeApi()
    api.put(SANDBOXES, sandbox("mine"))
    api.put(SANDBOXES, sandbox("theirs", pod_uid="another-pod"))
    runtime = MemoryRuntime()
    sidecar = Sidecar(settings(tmp_path), api, runtime)
    sidecar.status.resync_period = 0.05
    stop = asyncio.Event()
    task = asyncio.create_task(sidecar.run(stop))
    try:
        await eventually(lambda: phase(api, "mine") == "Running", what="mine Running")
        assert sidecar.ready()[0]
        mine = stored(api, "mine")
        assert mine is not None and SIDECAR_FINALIZER in mine["metadata"]["finalizers"]
        assert phase(api, "theirs") is None and list(runtime.running) == [mine["metadata"]["uid"]]
        lease = await api.get(LEASES, "nest-system", "pool-0")
        assert lease["spec"]["holderIdentity"] == POD_UID
        await sidecar.recorder.flush()
        assert (await api.list(EVENTS, "ns"))["items"] == []  # the status tells a first start
        scraped = generate_latest(sidecar.metrics.registry).decode()
        assert 'nest_sidecar_sandboxes{phase="Running"} 1.0' in scraped
        assert "nest_sidecar_status_writes_total 1.0" in scraped

        # Someone else changes the status: the resync puts it right, with one write.
        writes = api.writes["patch", "sandboxes"]
        await api.patch(SANDBOXES, "ns", "mine", {"status": {"phase": "Pending"}},
                        subresource="status")  # fmt: skip
        await eventually(lambda: phase(api, "mine") == "Running", what="the repair")
        assert api.writes["patch", "sandboxes"] == writes + 2  # theirs, and the one repair
        assert sidecar.status.repairs == 1

        # Deleted: stopped in the runtime, the finalizer released, the object gone.
        await api.delete(SANDBOXES, "ns", "mine")
        await eventually(lambda: stored(api, "mine") is None, what="the finalizer released")
        assert runtime.running == {}
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_the_sidecar_never_adds_the_finalizer_and_still_stops_a_deleted_sandbox(
    tmp_path: Path,
) -> None:
    api = FakeApi()
    api.put(SANDBOXES, sandbox("bare", finalizers=False))  # bound with no webhook to refuse it
    runtime = MemoryRuntime()
    sidecar = Sidecar(settings(tmp_path), api, runtime)
    stop = asyncio.Event()
    task = asyncio.create_task(sidecar.run(stop))
    try:
        await eventually(lambda: phase(api, "bare") == "Running", what="bare Running")
        bare = stored(api, "bare")
        assert bare is not None and bare["metadata"]["finalizers"] == []
        assert api.writes["patch", "sandboxes"] == 1  # its status, and nothing else
        await api.delete(SANDBOXES, "ns", "bare")  # nothing holds it: gone at once
        await eventually(lambda: runtime.running == {}, what="the sandbox stopped")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_a_start_after_a_failure_is_a_started_event_on_the_sandbox(tmp_path: Path) -> None:
    api = FakeApi()
    api.put(SANDBOXES, sandbox("flaky"))
    sidecar = Sidecar(settings(tmp_path), api, FlakyRuntime())
    stop = asyncio.Event()
    task = asyncio.create_task(sidecar.run(stop))
    try:
        await eventually(lambda: phase(api, "flaky") == "Running", what="Running after a retry")
        assert await sidecar.recorder.flush()
        events = (await api.list(EVENTS, "ns"))["items"]
        told = {(e["type"], e["reason"]) for e in events}
        assert told == {("Warning", "RuntimeUnavailable"), ("Warning", "BackOff"),
                        ("Normal", "Started")}  # fmt: skip
        assert {e["involvedObject"]["name"] for e in events} == {"flaky"}
        [started] = [e for e in events if e["reason"] == "Started"]
        assert "started again in namespace isolation" in started["message"]
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
