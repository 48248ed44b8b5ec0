"""The Lease as the sidecar writes it, read by the operator's scheduler: the contract across the
API server, with nothing in between but `nest_kube.FakeApi`.

A renewal that moves renewTime alone is a heartbeat, and re-decides no waiting sandbox; a change
of natives (the runtime restarted and loaded none) or of capacity (a restarted sidecar declaring
more) is a pod update, and re-queues the sandboxes it can help (the queue's hints).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any

from crds import constants as c
from nest_kube.fake import FakeApi
from nest_kube.resources import LEASES
from nest_operator.store import Kind
from nest_sidecar.lease import Capacity, Heartbeat, PodRef
from tests.unit.operator.test_pools import pod
from tests.unit.operator.test_scheduler_controller import Harness, sandbox

MI = 1024 * 1024
POD = PodRef("p0", "nest-system", "uid-p0", "default")
SMALL = Capacity(memory_bytes=1024 * MI, cpu_millis=1000, max_sandboxes=10)


class Natives:
    """The runtime's answer to "which natives did you load?", changed by the test."""

    def __init__(self, *loaded: str) -> None:
        self.loaded: list[str] = list(loaded)

    async def __call__(self) -> Sequence[str]:
        return list(self.loaded)


async def renew(api: FakeApi, heartbeat: Heartbeat, harness: Harness, event: str) -> None:
    """One renewal as `run` does it, then the watch event the operator gets for it."""
    if heartbeat.natives is not None:
        heartbeat.loaded_natives = tuple(await heartbeat.natives())
    await heartbeat.renew()
    stored = copy.deepcopy(api.objects[LEASES][("nest-system", "p0")])
    harness.observe(Kind.LEASE, event, stored)


def wanting(name: str, memory: str = "64Mi", natives: Sequence[str] = ()) -> dict[str, Any]:
    obj: dict[str, Any] = sandbox(name, memory=memory)
    if natives:
        obj["spec"]["function"]["isolation"] = "namespace"
        obj["metadata"]["annotations"] = {c.NATIVE_DISTRIBUTIONS_ANNOTATION: json.dumps(natives)}
    return obj


async def test_heartbeats_re_decide_nothing_and_dropped_natives_re_decide_the_refused() -> None:
    api, h = FakeApi(), Harness()
    runtime = Natives("numpy==1.26")
    heartbeat = Heartbeat(api, POD, SMALL, natives=runtime)
    await renew(api, heartbeat, h, "ADDED")
    h.observe(Kind.POD, "ADDED", pod("p0"))
    h.observe(Kind.SANDBOX, "ADDED", wanting("want", natives=["numpy==2.0"]))
    assert await h.drain() == ["a/want"]
    assert h.failed() == [
        "0/1 pods available: 1 NativeDependencies: its runtime holds numpy==1.26, not 2.0."
    ]
    for _ in range(3):
        await renew(api, heartbeat, h, "MODIFIED")
        h.later(10)
        assert await h.drain() == []
    assert h.controller.attempts == 1
    runtime.loaded = []  # the runtime restarted: nothing loaded any more
    await renew(api, heartbeat, h, "MODIFIED")
    h.later(10)
    assert await h.drain() == ["a/want"]
    placed = h.store.get(Kind.SANDBOX, "a/want")
    assert placed is not None and placed["spec"]["podName"] == "p0"


async def test_more_capacity_declared_by_a_restarted_sidecar_re_decides_the_too_big() -> None:
    api, h = FakeApi(), Harness()
    await renew(api, Heartbeat(api, POD, SMALL), h, "ADDED")
    h.observe(Kind.POD, "ADDED", pod("p0"))
    h.observe(Kind.SANDBOX, "ADDED", wanting("huge", memory="2Gi"))
    assert await h.drain() == ["a/huge"]
    heartbeat = Heartbeat(api, POD, SMALL)  # restarted: its first write is the whole Lease
    await renew(api, heartbeat, h, "MODIFIED")
    h.later(10)
    assert await h.drain() == []
    bigger = Capacity(memory_bytes=4096 * MI, cpu_millis=1000, max_sandboxes=10)
    await renew(api, Heartbeat(api, POD, bigger), h, "MODIFIED")
    h.later(10)
    assert await h.drain() == ["a/huge"]
    placed = h.store.get(Kind.SANDBOX, "a/huge")
    assert placed is not None and placed["spec"]["podName"] == "p0"
