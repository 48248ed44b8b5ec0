"""While the pod's runtime does not answer, its sandboxes are not ready (issue 13).

Before: a runtime killed with -9 took 5-18 s to come back, and all that time every sandbox of its
pod stayed Ready (in status and in SandboxEndpoints): the gateway kept sending calls to a dead
address. Now the pump declares the runtime lost once it has not answered for `lost_after`, each
worker writes Ready=False once (reason RuntimeUnavailable, no restart counted), and the runtime's
return makes them Ready again, or restarts the ones it no longer runs. A stream the runtime
merely cut off reconnects before anyone hears of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from crds.sandbox import SandboxPhase
from nest_kube.fake import FakeApi
from nest_kube.resources import SANDBOXES
from nest_sidecar.cri import RUNTIME_UNAVAILABLE, RuntimePump
from nest_sidecar.main import Sidecar
from nest_sidecar.status import Observed, desired_status
from nest_sidecar.worker import Backoff, PodIdentity, SandboxWorker
from sandbox.api import CreateSandbox, RuntimeInfo, SandboxEvent, SandboxInfo
from sandbox.errors import RuntimeUnavailable
from tests.unit.kube.support import eventually
from tests.unit.sidecar.test_sidecar_wiring import sandbox, settings, stored

Stream = asyncio.Queue[SandboxEvent | Exception | None]


def running(uid: str) -> SandboxInfo:
    return SandboxInfo(
        id=uid, isolation="namespace", state="Running", reason="", message="", pid=1,
        exit_code=None, signal=None, created_at=0.0, started_at=0.0, finished_at=None,
    )  # fmt: skip


class FlakyRuntime:
    """A runtime the test kills, brings back, restarts, or whose event stream it cuts off."""

    def __init__(self) -> None:
        self.up = True
        self.pid = 1
        self.running: dict[str, SandboxInfo] = {}
        self.streams: list[Stream] = []
        self.relists = 0  # successful `info` calls: the pump's relists
        self.refused = 0  # calls refused while down

    def _answer(self) -> None:
        if not self.up:
            self.refused += 1
            raise RuntimeUnavailable("Cannot connect to host localhost [Connection refused]")

    async def info(self) -> RuntimeInfo:
        self._answer()
        self.relists += 1
        return RuntimeInfo(
            pid=self.pid, started_at=float(self.pid), data_host="127.0.0.1", data_port=8080,
            zygote_pid=None, sandboxes=len(self.running),
        )  # fmt: skip

    async def create(self, request: CreateSandbox) -> SandboxInfo:
        self._answer()
        self.running[request.id] = running(request.id)
        return self.running[request.id]

    async def remove(self, sandbox_id: str, grace_seconds: float) -> None:
        self._answer()
        self.running.pop(sandbox_id, None)

    async def list(self) -> list[SandboxInfo]:
        self._answer()
        return list(self.running.values())

    @asynccontextmanager
    async def _watch(self) -> AsyncIterator[AsyncIterator[SandboxEvent]]:
        self._answer()
        stream: Stream = asyncio.Queue()
        self.streams.append(stream)

        async def events() -> AsyncIterator[SandboxEvent]:
            while (item := await stream.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                yield item

        try:
            yield events()
        finally:
            self.streams.remove(stream)

    def watch(self) -> Any:
        return self._watch()

    def kill(self) -> None:
        """kill -9: every call refused, the open streams broken."""
        self.up = False
        for stream in self.streams:
            stream.put_nowait(RuntimeUnavailable("Connection reset by peer"))

    def cut(self) -> None:
        """The runtime ends its watchers' streams (one fell behind) and keeps running."""
        for stream in self.streams:
            stream.put_nowait(None)

    def start(self, restarted: bool) -> None:
        """Back; a restarted runtime (new pid) runs nothing."""
        if restarted:
            self.pid += 1
            self.running = {}
        self.up = True


Heard = list[tuple[str, str | None]]


def pump(runtime: FlakyRuntime, heard: Heard, lost_after: float) -> RuntimePump:
    """A pump whose every report goes into `heard`, in order: ("sandbox <id>", state or None)
    from the listener, ("outage", message or None) from on_outage."""
    return RuntimePump(
        runtime,
        lambda i, info: heard.append((f"sandbox {i}", info.state if info else None)),
        retry=0.01,
        on_outage=lambda why: heard.append(("outage", why)),
        lost_after=lost_after,
    )


async def test_a_lost_runtime_is_declared_once_and_its_return_once() -> None:
    runtime = FlakyRuntime()
    runtime.running = {"u-1": running("u-1")}
    heard: Heard = []
    p = pump(runtime, heard, lost_after=0.05)
    task = asyncio.create_task(p.run())
    try:
        await eventually(p.ready.is_set, what="the first relist")
        assert heard == [("sandbox u-1", "Running")]
        runtime.kill()
        await eventually(lambda: len(heard) > 1, what="the runtime declared lost")
        _, why = heard[1]
        assert heard[1][0] == "outage" and why is not None
        assert "has not answered for 0.05s" in why and "Connection refused" in why  # the latest
        assert not p.ready.is_set() and p.outage == why
        # It stays down for many more refused reconnects: still declared only once.
        refused = runtime.refused
        await eventually(lambda: runtime.refused > refused + 5, what="more reconnects")
        assert len(heard) == 2
        runtime.start(restarted=False)
        await eventually(lambda: len(heard) > 2, what="the runtime's return")
        assert heard[2:] == [("outage", None)]  # it still runs u-1: nothing vanished
        assert p.ready.is_set() and p.outage is None and p.restarts == 0
        assert set(p.known) == {"u-1"}
    finally:
        task.cancel()


async def test_a_cut_stream_or_a_quick_return_flaps_nothing() -> None:
    runtime = FlakyRuntime()
    runtime.running = {"u-1": running("u-1")}
    heard: Heard = []
    p = pump(runtime, heard, lost_after=30.0)  # far beyond the reconnects below
    task = asyncio.create_task(p.run())
    try:
        await eventually(lambda: runtime.relists == 1, what="the first relist")
        runtime.cut()  # the runtime dropped its watchers: reconnected at once
        await eventually(lambda: runtime.relists == 2 and p.ready.is_set(), what="a relist")
        runtime.kill()  # refused once or more, then back before lost_after
        await eventually(lambda: runtime.refused > 0, what="a refused reconnect")
        runtime.start(restarted=False)
        await eventually(lambda: runtime.relists == 3 and p.ready.is_set(), what="a relist")
        assert heard == [("sandbox u-1", "Running")]  # the first list only
        assert p.outage is None
    finally:
        task.cancel()


async def test_a_runtime_that_restarted_meanwhile_reports_what_vanished_first() -> None:
    runtime = FlakyRuntime()
    runtime.running = {"u-1": running("u-1")}
    heard: Heard = []
    p = pump(runtime, heard, lost_after=0.05)
    task = asyncio.create_task(p.run())
    try:
        await eventually(p.ready.is_set, what="the first relist")
        runtime.kill()
        await eventually(lambda: p.outage is not None, what="the runtime declared lost")
        runtime.start(restarted=True)
        await eventually(lambda: p.outage is None, what="the runtime's return")
        # The worker learns that u-1 is gone before it hears the runtime is back, so it
        # restarts it rather than calling it Ready.
        assert heard[2:] == [("sandbox u-1", None), ("outage", None)]
        assert p.restarts == 1 and p.known == {}
    finally:
        task.cancel()


class Kube:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    async def release_finalizer(self, obj: Mapping[str, Any]) -> None:
        return None

    def event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((reason, message))


def adopted(reports: list[Observed], kube: Kube) -> SandboxWorker:
    """A worker of a Running sandbox the runtime runs (adopted at start-up)."""
    obj = {
        "metadata": {"uid": "u-1", "name": "one", "namespace": "ns", "generation": 1},
        "spec": {"podName": "pool-0", "function": {
            "handler": "main:handler", "isolation": "namespace",
            "source": {"inline": {"main.py": "def handler(e, c):\n    return 1\n"}}}},
        "status": {"phase": "Running"},
    }  # fmt: skip
    worker = SandboxWorker(
        obj,
        runtime=FlakyRuntime(),
        fetcher=cast(Any, None),  # never reached: a restart waits out a long back-off
        kube=kube,
        report=lambda o, observed: reports.append(observed),
        pod=PodIdentity("pool-0", "127.0.0.9", 8080),
        backoff=Backoff(initial=60.0),
    )
    worker.runtime_info = running("u-1")
    return worker


async def test_a_worker_is_not_ready_while_the_runtime_is_lost_then_ready_again() -> None:
    reports: list[Observed] = []
    kube = Kube()
    worker = adopted(reports, kube)
    task = asyncio.create_task(worker.run())
    try:
        await eventually(lambda: reports and reports[-1].ready, what="adopted, Ready")
        worker.runtime_outage("the pod's runtime has not answered for 0.5s (refused)")
        await eventually(lambda: len(reports) == 2, what="the not-ready report")
        lost = reports[-1]
        assert (lost.phase, lost.ready, lost.reason) == (
            SandboxPhase.RUNNING, False, RUNTIME_UNAVAILABLE
        )  # fmt: skip
        assert lost.restart_count == 0 and lost.pod_ip == "127.0.0.9"
        assert lost.message == "the pod's runtime has not answered for 0.5s (refused)"
        worker.runtime_outage(None)  # back, and it still runs u-1
        await eventually(lambda: len(reports) == 3, what="the ready-again report")
        back = reports[-1]
        assert (back.phase, back.ready, back.reason, back.message) == (
            SandboxPhase.RUNNING, True, None, None
        )  # fmt: skip
        assert back.restart_count == 0 and kube.events == []
    finally:
        task.cancel()


async def test_a_worker_restarts_a_sandbox_the_returned_runtime_lost() -> None:
    reports: list[Observed] = []
    kube = Kube()
    worker = adopted(reports, kube)
    task = asyncio.create_task(worker.run())
    try:
        await eventually(lambda: reports and reports[-1].ready, what="adopted, Ready")
        worker.runtime_outage("lost")
        await eventually(lambda: not reports[-1].ready, what="not ready")
        worker.runtime_changed(None)  # as the pump reports: what vanished first, then back
        worker.runtime_outage(None)
        await eventually(lambda: reports[-1].phase == SandboxPhase.STARTING, what="a restart")
    finally:
        task.cancel()
    last = reports[-1]
    assert (last.reason, last.restart_count, last.ready) == ("CrashLoopBackOff", 1, False)
    assert all(r.ready is False for r in reports[1:])  # never Ready on the way
    assert any(reason == "BackOff" and "RuntimeRestarted" in text for reason, text in kube.events)


def test_the_status_says_running_not_ready_and_why() -> None:
    observed = Observed(
        phase=SandboxPhase.RUNNING, generation=1, code_ready=True, ready=False,
        reason=RUNTIME_UNAVAILABLE, message="the pod's runtime has not answered for 0.5s",
        pod_name="pool-0", pod_ip="127.0.0.9", port=8080,
    )  # fmt: skip
    status = desired_status({}, observed, datetime.now(UTC))
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (status["phase"], ready["status"], ready["reason"]) == (
        "Running", "False", "RuntimeUnavailable"
    )  # fmt: skip
    assert ready["message"] == "the pod's runtime has not answered for 0.5s"
    assert status["restartCount"] == 0 and status["podIP"] == "127.0.0.9"


def ready_condition(api: FakeApi, name: str) -> dict[str, Any]:
    conditions = ((stored(api, name) or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Ready"), {})


async def all_ready(api: FakeApi, status: str, what: str) -> None:
    def probe() -> bool:
        return all(ready_condition(api, name).get("status") == status for name in ("a", "b"))

    await eventually(probe, what=what)


async def test_the_sidecar_writes_each_sandbox_not_ready_once_and_ready_again(
    tmp_path: Path,
) -> None:
    api = FakeApi()
    api.put(SANDBOXES, sandbox("a"))
    api.put(SANDBOXES, sandbox("b"))
    runtime = FlakyRuntime()
    sidecar = Sidecar(settings(tmp_path), api, runtime)
    sidecar.pump.retry, sidecar.pump.lost_after = 0.01, 0.05
    stop = asyncio.Event()
    task = asyncio.create_task(sidecar.run(stop))
    try:
        await all_ready(api, "True", "both Ready")
        writes = api.writes["patch", "sandboxes"]
        runtime.kill()
        await all_ready(api, "False", "both not ready")
        refused = runtime.refused
        await eventually(lambda: runtime.refused > refused + 5, what="more reconnects")
        await sidecar.status.flush()
        assert api.writes["patch", "sandboxes"] == writes + 2  # one each, however long it lasts
        a = stored(api, "a")
        assert a is not None and a["status"]["phase"] == "Running"
        assert a["status"]["reason"] == "RuntimeUnavailable" and a["status"]["restartCount"] == 0
        assert not sidecar.ready()[0]  # the pod is NotReady too: nothing new is placed here
        runtime.start(restarted=False)
        await all_ready(api, "True", "both Ready again")
        a = stored(api, "a")
        assert a is not None and "reason" not in a["status"] and a["status"]["restartCount"] == 0
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
