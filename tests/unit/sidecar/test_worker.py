"""The sandbox worker against an in-memory runtime: inputs that arrive while it is busy count."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiohttp

from crds.sandbox import SandboxPhase
from nest_sidecar.fetcher import CodeCache, CodeFetcher
from nest_sidecar.status import Observed
from nest_sidecar.worker import Backoff, PodIdentity, SandboxWorker
from sandbox.api import CreateSandbox, RuntimeInfo, SandboxEvent, SandboxInfo

OBJ: dict[str, Any] = {
    "metadata": {"uid": "u1", "name": "s1", "namespace": "ns", "generation": 1,
                 "finalizers": ["nest.sandbox.dev/sidecar"]},
    "spec": {"podName": "pool-0", "function": {
        "handler": "main:handler",
        "source": {"inline": {"main.py": "def handler(e, c):\n    return 1\n"}}}},
}  # fmt: skip


def info(state: str, reason: str = "") -> SandboxInfo:
    return SandboxInfo(
        id="u1", isolation="subprocess", state=state, reason=reason, message=reason,
        pid=1, exit_code=None, signal=9 if reason else None,
        created_at=0.0, started_at=0.0, finished_at=None,
    )  # fmt: skip


class CrashingRuntime:
    """Creates the sandbox, which crashes before `create` has even returned."""

    def __init__(self) -> None:
        self.worker: SandboxWorker | None = None
        self.creates = 0

    async def info(self) -> RuntimeInfo:
        raise NotImplementedError

    async def create(self, request: CreateSandbox) -> SandboxInfo:
        self.creates += 1
        assert self.worker is not None
        self.worker.runtime_changed(info("Failed", "OOMKilled"))  # the event beats the reply
        return info("Running")

    async def remove(self, sandbox_id: str, grace_seconds: float) -> None:
        return None

    async def list(self) -> list[SandboxInfo]:
        return []

    def watch(self) -> AbstractAsyncContextManager[AsyncIterator[SandboxEvent]]:
        raise NotImplementedError


class Kube:
    async def release_finalizer(self, obj: Mapping[str, Any]) -> None:
        return None

    def event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        return None


async def test_a_crash_reported_during_create_is_not_lost(tmp_path: Path) -> None:
    reports: list[Observed] = []
    runtime = CrashingRuntime()

    async def no_configmaps(namespace: str, name: str) -> None:
        return None

    async with aiohttp.ClientSession() as http:
        worker = SandboxWorker(
            OBJ,
            runtime=runtime,
            fetcher=CodeFetcher(CodeCache(tmp_path), no_configmaps, http),
            kube=Kube(),
            report=lambda obj, observed: reports.append(observed),
            pod=PodIdentity("pool-0", "127.0.0.9", 8080),
            backoff=Backoff(initial=30.0),  # the restart itself is not waited for here
        )
        runtime.worker = worker
        task = asyncio.create_task(worker.run())
        try:
            async with asyncio.timeout(10):
                while not any(r.reason == "CrashLoopBackOff" for r in reports):
                    await asyncio.sleep(0.01)  # polling the worker's reports, with a deadline
        finally:
            task.cancel()
    last = reports[-1]
    assert last.phase == SandboxPhase.STARTING
    assert last.restart_count == 1
    assert "OOMKilled" in (last.message or "")
    assert runtime.creates == 1
