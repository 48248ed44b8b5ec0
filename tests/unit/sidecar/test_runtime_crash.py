"""After the runtime crashed: the culprit is failed for good, the others restart naming it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, cast

from crds.sandbox import PERMANENT_FAILURE_REASONS, RUNTIME_CRASH_REASON, SandboxPhase
from nest_sidecar.cri import RUNTIME_CRASH, RuntimePump, crash_notice
from nest_sidecar.status import Observed
from nest_sidecar.worker import Backoff, PodIdentity, SandboxWorker
from sandbox.api import CreateSandbox, LastCrash, RuntimeInfo, SandboxEvent, SandboxInfo
from tests.conformance.support import wait_for

NAMES = {"u-bad": "ns/bad", "u-good": "ns/good", "u-other": "ns/other"}


def last_crash(
    sandboxes: list[str], culprits: list[str], importing: tuple[str, ...] = ()
) -> LastCrash:
    return LastCrash(
        at=1.0, detected_at=2.0, pid=7, exit_status="Segmentation fault",
        sandboxes=sandboxes, importing=list(importing), culprits=culprits,
        rule="the only sandbox running code",
    )  # fmt: skip


def sandbox(uid: str, state: str = "Running") -> SandboxInfo:
    return SandboxInfo(
        id=uid, isolation="namespace", state=state, reason="", message="", pid=1,
        exit_code=None, signal=None, created_at=0.0, started_at=0.0,
        finished_at=None,
    )  # fmt: skip


def test_the_culprit_fails_for_good_and_the_others_hear_its_name() -> None:
    crash = last_crash(["u-bad"], ["u-bad"])
    reason, message = crash_notice(crash, "u-bad", NAMES.__getitem__)
    assert reason == RUNTIME_CRASH == RUNTIME_CRASH_REASON
    assert reason in PERMANENT_FAILURE_REASONS
    assert "Segmentation fault" in message and "running a call" in message
    reason, message = crash_notice(crash, "u-good", NAMES.__getitem__)
    assert reason == "RuntimeRestarted"
    assert message == (
        "the pod's runtime crashed (Segmentation fault) while running sandbox ns/bad; restarted"
    )


def test_an_import_crash_and_an_unjudged_one_say_so() -> None:
    importing = last_crash(["u-bad"], ["u-bad"], importing=("u-bad",))
    assert "importing" in crash_notice(importing, "u-bad", NAMES.__getitem__)[1]
    unjudged = last_crash(["u-bad", "u-other"], [])
    reason, message = crash_notice(unjudged, "u-bad", NAMES.__getitem__)
    assert reason == "RuntimeRestarted"
    assert "ns/bad, ns/other were running code; no single culprit yet" in message
    nobody = crash_notice(last_crash([], []), "u-good", NAMES.__getitem__)
    assert nobody == (
        "RuntimeRestarted",
        "the pod's runtime crashed (Segmentation fault) while no sandbox was running code; "
        "restarted",
    )


class Runtime:
    """A runtime whose info and list the test sets."""

    def __init__(self) -> None:
        self.runtime_info = RuntimeInfo(
            pid=1, started_at=1.0, data_host="127.0.0.1", data_port=1, zygote_pid=None,
            sandboxes=0,
        )  # fmt: skip
        self.sandboxes: list[SandboxInfo] = []

    async def info(self) -> RuntimeInfo:
        return self.runtime_info

    async def create(self, request: CreateSandbox) -> SandboxInfo:
        raise NotImplementedError

    async def remove(self, sandbox_id: str, grace_seconds: float) -> None:
        return None

    async def list(self) -> list[SandboxInfo]:
        return self.sandboxes

    def watch(self) -> AbstractAsyncContextManager[AsyncIterator[SandboxEvent]]:
        raise NotImplementedError


async def test_the_pump_reports_who_crashed_the_runtime() -> None:
    runtime = Runtime()
    heard: dict[str, SandboxInfo | None] = {}
    pump = RuntimePump(
        runtime, lambda i, info: heard.__setitem__(i, info), name_of=NAMES.__getitem__
    )
    runtime.sandboxes = [sandbox("u-bad"), sandbox("u-good")]
    await pump.relist()
    runtime.runtime_info = runtime.runtime_info.model_copy(
        update={"pid": 2, "started_at": 5.0, "last_crash": last_crash(["u-bad"], ["u-bad"])}
    )
    runtime.sandboxes = []
    await pump.relist()
    bad, good = heard["u-bad"], heard["u-good"]
    assert bad is not None and (bad.state, bad.reason) == ("Failed", "RuntimeCrash")
    assert good is not None and (good.state, good.reason) == ("Failed", "RuntimeRestarted")
    assert "ns/bad" in good.message
    assert pump.known == {} and pump.restarts == 1


async def test_a_clean_restart_reports_the_sandboxes_simply_gone() -> None:
    runtime = Runtime()
    heard: dict[str, SandboxInfo | None] = {}
    pump = RuntimePump(runtime, lambda i, info: heard.__setitem__(i, info))
    runtime.sandboxes = [sandbox("u-good")]
    await pump.relist()
    runtime.runtime_info = runtime.runtime_info.model_copy(update={"pid": 2})
    runtime.sandboxes = []
    await pump.relist()
    assert heard["u-good"] is None


class Kube:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    async def release_finalizer(self, obj: Mapping[str, Any]) -> None:
        return None

    def event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((reason, message))


def running_worker(reports: list[Observed], kube: Kube) -> SandboxWorker:
    obj = {
        "metadata": {"uid": "u-good", "name": "good", "namespace": "ns", "generation": 1},
        "spec": {"podName": "pool-0", "function": {
            "handler": "main:handler", "isolation": "namespace",
            "source": {"inline": {"main.py": "def handler(e, c):\n    return 1\n"}}}},
        "status": {"phase": "Running"},
    }  # fmt: skip
    worker = SandboxWorker(
        obj,
        runtime=Runtime(),
        fetcher=cast(Any, None),  # never reached: the restart waits out a long back-off
        kube=kube,
        report=lambda o, observed: reports.append(observed),
        pod=PodIdentity("pool-0", "127.0.0.9", 8080),
        backoff=Backoff(initial=60.0),
    )
    worker.runtime_info = sandbox("u-good")  # adopted: it runs
    return worker


async def run_until(worker: SandboxWorker, reports: list[Observed], phase: SandboxPhase) -> None:
    task = asyncio.create_task(worker.run())
    try:
        await wait_for(lambda: bool(reports) and reports[-1].phase == phase, what=str(phase))
    finally:
        task.cancel()


async def test_a_running_culprit_is_failed_for_good() -> None:
    reports: list[Observed] = []
    kube = Kube()
    worker = running_worker(reports, kube)
    task = asyncio.create_task(worker.run())
    try:
        await wait_for(lambda: any(r.phase == SandboxPhase.RUNNING for r in reports))
        crashed = sandbox("u-good", "Failed").model_copy(
            update={"reason": "RuntimeCrash", "message": "the pod's runtime crashed (...)"}
        )
        worker.runtime_changed(crashed)
        await wait_for(lambda: reports[-1].phase == SandboxPhase.FAILED, what="Failed")
    finally:
        task.cancel()
    assert reports[-1].reason == "RuntimeCrash"
    assert ("Failed", "RuntimeCrash: the pod's runtime crashed (...)") in kube.events


async def test_a_neighbour_adopted_after_the_crash_restarts_naming_the_culprit() -> None:
    reports: list[Observed] = []
    kube = Kube()
    worker = running_worker(reports, kube)
    message = "the pod's runtime crashed (Segmentation fault) while running sandbox ns/bad"
    worker.runtime_info = sandbox("u-good", "Failed").model_copy(
        update={"reason": "RuntimeRestarted", "message": message}
    )
    await run_until(worker, reports, SandboxPhase.STARTING)
    last = reports[-1]
    assert (last.reason, last.restart_count) == ("CrashLoopBackOff", 1)
    assert last.message is not None and "ns/bad" in last.message
    assert ("Failed", f"RuntimeRestarted: {message}") in kube.events
