"""The conformance suite runs every test against both isolation backends."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from isolation.base import Backend, SandboxStatus
from isolation.namespace import NamespaceBackend
from isolation.process import SubprocessBackend
from tests.conformance.support import child_processes


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


@pytest.fixture(params=["namespace", "subprocess"])
async def backend(request: pytest.FixtureRequest, recorder: Recorder) -> AsyncIterator[Backend]:
    impl: Backend
    if request.param == "namespace":
        impl = NamespaceBackend(on_change=recorder)
    else:
        sub = SubprocessBackend(on_change=recorder, memory_poll_s=0.05)
        await sub.start()
        impl = sub
    yield impl
    await impl.close()
    assert child_processes() == [], "the backend left processes behind"
