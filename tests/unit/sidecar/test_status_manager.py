"""Status writes are coalesced per sandbox, skipped when unchanged, and retried on failure."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from crds.sandbox import SandboxPhase
from nest_sidecar.status import Observed
from nest_sidecar.status_manager import StatusManager

OBJ = {"metadata": {"uid": "u1", "name": "s1", "namespace": "ns"}, "status": {}}


class Recorder:
    def __init__(self, failures: int = 0) -> None:
        self.patches: list[dict[str, Any]] = []
        self.failures = failures

    async def __call__(self, obj: Mapping[str, Any], patch: Mapping[str, Any]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("api server away")
        self.patches.append(dict(patch))


async def test_a_fast_start_is_one_write() -> None:
    recorder = Recorder()
    manager = StatusManager(recorder)
    for phase in (SandboxPhase.SCHEDULED, SandboxPhase.STARTING, SandboxPhase.RUNNING):
        manager.report(OBJ, Observed(phase, 1, code_ready=True, ready=phase == "Running"))
    await manager.flush()
    assert len(recorder.patches) == 1
    assert recorder.patches[0]["status"]["phase"] == "Running"


async def test_nothing_is_written_when_nothing_changed() -> None:
    recorder = Recorder()
    manager = StatusManager(recorder)
    observed = Observed(SandboxPhase.RUNNING, 1, code_ready=True, ready=True)
    manager.report(OBJ, observed)
    await manager.flush()
    manager.report(OBJ, observed)
    await manager.flush()
    assert len(recorder.patches) == 1 and manager.writes == 1


async def test_a_failed_write_is_kept_and_retried() -> None:
    recorder = Recorder(failures=1)
    manager = StatusManager(recorder)
    manager.report(OBJ, Observed(SandboxPhase.FAILED, 1, reason="ImportError", message="x"))
    await manager.flush()
    assert recorder.patches == [] and manager.pending
    await manager.flush()
    assert recorder.patches[0]["status"]["reason"] == "ImportError"


async def test_the_run_loop_writes_a_settled_phase() -> None:
    recorder = Recorder()
    manager = StatusManager(recorder, window=30.0)  # a window no test would wait out
    task = asyncio.create_task(manager.run())
    manager.report(OBJ, Observed(SandboxPhase.RUNNING, 1, code_ready=True, ready=True))
    try:
        async with asyncio.timeout(10):
            while not recorder.patches:
                await asyncio.sleep(0.01)  # polling the observable outcome, with a deadline
    finally:
        task.cancel()
    assert recorder.patches[0]["status"]["phase"] == "Running"
