"""The Lease carries the runtime's loaded native distributions to the scheduler, and is
created by the first renewal and patched by the next ones (against `nest_kube.FakeApi`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from crds import constants as c
from nest_kube import ApiError, Unreachable
from nest_kube.fake import FakeApi
from nest_kube.resources import LEASES
from nest_sidecar.lease import Capacity, Heartbeat, PodRef, lease_body
from tests.unit.kube.support import eventually

POD = PodRef("pool-0", "nest-system", "uid-0", "default")
CAPACITY = Capacity(memory_bytes=1, cpu_millis=1, max_sandboxes=1)


def natives_of(body: dict[str, Any]) -> object:
    return json.loads(body["metadata"]["annotations"][c.NATIVE_DISTRIBUTIONS_ANNOTATION])


def test_the_lease_lists_the_natives_sorted() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    body = lease_body(POD, CAPACITY, now, 40, ["numpy==2.0", "markupsafe==3.0.2"])
    assert natives_of(body) == ["markupsafe==3.0.2", "numpy==2.0"]
    assert natives_of(lease_body(POD, CAPACITY, now, 40)) == []


class _Recorder(Heartbeat):
    """A Heartbeat whose renewals are recorded instead of sent; it stops after `rounds`."""

    def __init__(self, answers: list[Sequence[str] | Exception]) -> None:
        self.answers = answers
        super().__init__(FakeApi(), POD, CAPACITY, interval=0, natives=self._ask)
        self.sent: list[tuple[str, ...]] = []

    async def _ask(self) -> Sequence[str]:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def renew(self) -> None:
        self.sent.append(self.loaded_natives)
        if not self.answers:
            raise asyncio.CancelledError


async def test_each_renewal_asks_the_runtime_and_keeps_the_last_answer_when_it_fails() -> None:
    beat = _Recorder([["numpy==2.0"], OSError("runtime restarting"), ["numpy==2.0", "x==1"]])
    with contextlib.suppress(asyncio.CancelledError):  # how _Recorder ends the loop
        await beat.run()
    assert beat.sent == [("numpy==2.0",), ("numpy==2.0",), ("numpy==2.0", "x==1")]


async def test_the_first_renewal_creates_the_lease_and_the_next_ones_patch_it() -> None:
    api = FakeApi()
    beat = Heartbeat(api, POD, CAPACITY)
    await beat.renew()
    first = await api.get(LEASES, "nest-system", "pool-0")
    assert first["spec"]["holderIdentity"] == "uid-0" and beat.last_renewed is not None
    await beat.renew()
    assert api.writes == {("patch", "leases"): 2, ("create", "leases"): 1}  # 404, create, patch
    owner = (await api.get(LEASES, "nest-system", "pool-0"))["metadata"]["ownerReferences"]
    assert owner == [{"apiVersion": "v1", "kind": "Pod", "name": "pool-0", "uid": "uid-0"}]


async def test_a_renewal_the_api_server_refuses_is_not_counted_as_renewed() -> None:
    api = FakeApi()
    api.fail("patch", Unreachable("connection refused"))
    beat = Heartbeat(api, POD, CAPACITY)
    with pytest.raises(ApiError):
        await beat.renew()
    assert beat.last_renewed is None and LEASES not in api.objects


async def test_the_heartbeat_outlives_an_unreachable_api_server() -> None:
    api = FakeApi()
    api.fail("patch", Unreachable("connection refused"), times=3)
    beat = Heartbeat(api, POD, CAPACITY, interval=0)
    task = asyncio.create_task(beat.run())
    try:
        await eventually(lambda: beat.last_renewed is not None, what="a renewal")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert not api._failures["patch"]  # all three refusals were met, and the loop went on
    assert (await api.get(LEASES, "nest-system", "pool-0"))["spec"]["holderIdentity"] == "uid-0"
