"""The conformance suite runs every test against both isolation backends."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from isolation.base import Backend, SandboxStatus
from isolation.boundary import BoundaryConfig
from isolation.namespace import NamespaceBackend
from isolation.process import SubprocessBackend
from tests.conformance.support import child_processes, reachable_by_sandboxes


class Recorder:
    """Collects every status snapshot a backend publishes."""

    def __init__(self) -> None:
        self.events: list[SandboxStatus] = []

    def __call__(self, status: SandboxStatus) -> None:
        self.events.append(status)

    def states(self, sandbox_id: str) -> list[str]:
        return [e.state.value for e in self.events if e.id == sandbox_id]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(params=["namespace", "subprocess", "subprocess-confined"])
async def backend(
    request: pytest.FixtureRequest, recorder: Recorder, tmp_path: Path
) -> AsyncIterator[Backend]:
    impl: Backend
    scratch = None
    if request.param == "namespace":
        impl = NamespaceBackend(on_change=recorder)
    elif request.param == "subprocess":
        sub = SubprocessBackend(on_change=recorder, memory_poll_s=0.05)
        await sub.start()
        impl = sub
    else:
        if os.geteuid() != 0:
            pytest.skip("confining sandboxes needs root")
        reachable_by_sandboxes(tmp_path)
        scratch = tempfile.mkdtemp(prefix="nest-conformance-")
        boundary = BoundaryConfig(uids=range(230_000, 230_200), scratch_root=scratch)
        sub = SubprocessBackend(on_change=recorder, memory_poll_s=0.05, boundary=boundary)
        await sub.start()
        impl = sub
    yield impl
    await impl.close()
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
    assert child_processes() == [], "the backend left processes behind"
