"""SIGTERM drains a pool pod's sidecar and runtime instead of stopping them (issue 13, item 2).

While its pod is being deleted the operator moves the pod's sandboxes elsewhere and deletes them
one by one; the sidecar must keep serving (stop and release each deleted Sandbox) until none is
bound, and the runtime keep answering until it hosts none, each bounded by its drain time.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from crds.sandbox import EVICTED_REASON
from nest_kube.fake import FakeApi
from nest_kube.resources import SANDBOXES
from nest_sidecar.main import Settings, Sidecar, parse_settings, serving
from sandbox.runtime import drained
from tests.unit.kube.support import eventually
from tests.unit.sidecar.test_sidecar_wiring import MemoryRuntime, phase, sandbox, settings

ENV = {"POD_NAME": "p", "POD_UID": "u"}


def test_the_drain_time_is_a_setting_off_by_default() -> None:
    assert parse_settings([], ENV).drain_seconds == 0.0
    assert parse_settings([], {**ENV, "NEST_DRAIN_SECONDS": "55"}).drain_seconds == 55.0


def test_an_evicted_sandbox_needs_its_sidecar_no_more() -> None:
    assert serving({"status": {"phase": "Running"}})
    assert serving({"metadata": {"deletionTimestamp": "x"}})  # it must still be released
    assert not serving({"status": {"phase": "Failed", "reason": EVICTED_REASON}})


def draining(tmp_path: Path, seconds: float) -> Settings:
    base = settings(tmp_path)
    return Settings(**{**base.__dict__, "drain_seconds": seconds})


async def test_the_sidecar_stops_when_its_drain_time_is_over(tmp_path: Path) -> None:
    api = FakeApi()
    api.put(SANDBOXES, sandbox("mine"))
    sidecar = Sidecar(draining(tmp_path, 0.2), api, MemoryRuntime())
    stop, term = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(sidecar.run(stop))
    try:
        await eventually(lambda: phase(api, "mine") == "Running", what="mine Running")
        term.set()
        await sidecar.drain(term, stop)
        assert stop.is_set()
        assert api.objects[SANDBOXES][("ns", "mine")]  # left for the operator to evict
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 10)


class Hosting:
    """A runtime as `drained` sees it: the sandboxes it hosts."""

    def __init__(self, *ids: str) -> None:
        self.ids = list(ids)

    def list(self) -> list[Any]:
        return list(self.ids)


async def test_the_runtime_stops_once_it_hosts_nothing_or_its_drain_time_is_over() -> None:
    runtime = Hosting("a")
    stop, term = asyncio.Event(), asyncio.Event()
    waiting = asyncio.create_task(drained(runtime, term, stop, 600))  # type: ignore[arg-type]
    term.set()
    await eventually(lambda: runtime.list() == ["a"] and not stop.is_set(), what="serving")
    runtime.ids.clear()  # the sidecar removed its last sandbox
    await asyncio.wait_for(waiting, 30)
    assert stop.is_set()

    stop = asyncio.Event()
    await asyncio.wait_for(drained(Hosting("b"), term, stop, 0.1), 30)  # type: ignore[arg-type]
    assert stop.is_set()  # the drain time ran out with "b" still there
