"""The Lease is a heartbeat: a renewal patches renewTime alone, the annotations go only when they
change, and a failed renewal is retried with a short back-off, not on the next tick (the shell
against `nest_kube.FakeApi` with injected failures; time is virtual, so nothing waits)."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from crds import constants as c
from nest_kube import ApiError, Unreachable
from nest_kube.fake import FakeApi
from nest_kube.resources import LEASES, Resource
from nest_sidecar.lease import (
    Capacity,
    Heartbeat,
    PodRef,
    declared,
    lease_body,
    renewal_delay,
    renewal_patch,
)

POD = PodRef("pool-0", "nest-system", "uid-0", "default")
CAPACITY = Capacity(memory_bytes=1 << 30, cpu_millis=1000, max_sandboxes=10)
NOW = datetime(2026, 1, 1, tzinfo=UTC)
HEARTBEAT = {"spec"}  # the only top-level key of a pure renewal
DECLARED = {c.CAPACITY_ANNOTATION, c.NATIVE_DISTRIBUTIONS_ANNOTATION}


class Recording(FakeApi):
    """A FakeApi that keeps every Lease patch as sent (refused ones included)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[dict[str, Any]] = []

    async def patch(
        self, resource: Resource, namespace: str | None, name: str, patch: Any, **kw: Any
    ) -> dict[str, Any]:
        if resource == LEASES:
            self.sent.append(copy.deepcopy(patch))
        return await super().patch(resource, namespace, name, patch, **kw)


class Done(Exception):
    """Ends a heartbeat loop once the virtual clock reaches its end."""


class VirtualTime:
    """The heartbeat's sleep: records each pause and advances a clock instead of waiting;
    `at` calls `then()` once the clock passes a time (to change the world mid-run)."""

    def __init__(self, until: float) -> None:
        self.until = until
        self.now = 0.0
        self.delays: list[float] = []
        self.at: list[tuple[float, Any]] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        self.now += delay
        for when, then in list(self.at):
            if self.now >= when:
                self.at.remove((when, then))
                then()
        if self.now >= self.until:
            raise Done


def stored_annotations(api: FakeApi) -> dict[str, str]:
    return dict(api.objects[LEASES][("nest-system", "pool-0")]["metadata"]["annotations"])


# -- the pure parts --------------------------------------------------------------------------------


def test_the_back_off_doubles_from_half_a_second_and_stays_under_half_the_interval() -> None:
    assert renewal_delay(0, 10.0) == 10.0  # a success: the usual interval
    assert [renewal_delay(n, 10.0) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert all(renewal_delay(n, 3.0) <= 1.5 for n in range(1, 20))
    assert renewal_delay(1, 0.0) == 0.0


def test_a_renewal_with_nothing_changed_is_renew_time_alone() -> None:
    written = declared(CAPACITY, ["numpy==2.0"])
    patch = renewal_patch(NOW, declared(CAPACITY, ["numpy==2.0"]), written)
    assert patch == {"spec": {"renewTime": "2026-01-01T00:00:00.000000Z"}}


def test_a_renewal_carries_only_the_annotation_that_changed() -> None:
    written = declared(CAPACITY, ["numpy==2.0"])
    patch = renewal_patch(NOW, declared(CAPACITY, ["numpy==2.0", "x==1"]), written)
    assert patch["metadata"] == {
        "annotations": {c.NATIVE_DISTRIBUTIONS_ANNOTATION: '["numpy==2.0", "x==1"]'}
    }


def test_the_whole_lease_declares_capacity_and_natives_and_no_usage() -> None:
    body = lease_body(POD, CAPACITY, NOW, 40, ["numpy==2.0"])
    assert set(body["metadata"]["annotations"]) == DECLARED
    assert json.loads(body["metadata"]["annotations"][c.CAPACITY_ANNOTATION])["max_sandboxes"] == 10
    assert body["spec"]["holderIdentity"] == "uid-0" and body["spec"]["leaseDurationSeconds"] == 40


# -- the shell -------------------------------------------------------------------------------------


def beat(api: FakeApi, clock: VirtualTime, natives: list[Sequence[str]] | None = None) -> Heartbeat:
    answers = natives

    async def ask() -> Sequence[str]:
        assert answers is not None
        return answers[0] if len(answers) == 1 else answers.pop(0)

    return Heartbeat(api, POD, CAPACITY, natives=ask if natives is not None else None,
                     sleep=clock)  # fmt: skip


async def test_a_minute_of_renewals_is_six_writes_of_renew_time_alone() -> None:
    api = Recording()
    clock = VirtualTime(until=70.0)
    heartbeat = beat(api, clock)
    await heartbeat.renew()  # the first: 404, then the whole Lease is created
    assert api.writes["create", "leases"] == 1
    patches_before = api.writes["patch", "leases"]
    clock.until = 60.0
    with pytest.raises(Done):
        await heartbeat.run()
    assert api.writes["patch", "leases"] - patches_before == 6  # at 0, 10, ..., 50 s
    assert api.writes["create", "leases"] == 1
    for patch in api.sent[1:]:
        assert set(patch) == HEARTBEAT and set(patch["spec"]) == {"renewTime"}
    assert set(stored_annotations(api)) == DECLARED


async def test_natives_are_written_when_they_change_and_not_again() -> None:
    api = Recording()
    clock = VirtualTime(until=40.0)
    with pytest.raises(Done):
        await beat(api, clock, [[], [], ["numpy==2.0"], ["numpy==2.0"]]).run()
    carried = [p.get("metadata", {}).get("annotations") for p in api.sent]
    # 404 with the whole Lease (then created), a heartbeat, the change, a heartbeat.
    assert carried[0] is not None and carried[1:] == [
        None, {c.NATIVE_DISTRIBUTIONS_ANNOTATION: '["numpy==2.0"]'}, None,
    ]  # fmt: skip
    assert json.loads(stored_annotations(api)[c.NATIVE_DISTRIBUTIONS_ANNOTATION]) == ["numpy==2.0"]


async def test_a_failed_renewal_is_retried_with_back_off_and_then_the_interval_resumes() -> None:
    api = Recording()
    clock = VirtualTime(until=30.0)
    heartbeat = beat(api, clock)
    await heartbeat.renew()
    api.fail("patch", Unreachable("connection refused"), times=3)
    with pytest.raises(Done):
        await heartbeat.run()
    assert clock.delays[:5] == [0.5, 1.0, 2.0, 10.0, 10.0]
    assert heartbeat.failures == 0 and heartbeat.last_renewed is not None


async def test_a_change_whose_write_failed_is_sent_again_with_the_retry() -> None:
    api = Recording()
    clock = VirtualTime(until=1.0)
    heartbeat = beat(api, clock, [["numpy==2.0"]])
    heartbeat.loaded_natives = ()
    await heartbeat.renew()  # written: no natives
    api.fail("patch", ApiError(500, "InternalError"))
    with pytest.raises(Done):
        await heartbeat.run()  # fails carrying the change, retried 0.5 s later, then 10 s
    change = {c.NATIVE_DISTRIBUTIONS_ANNOTATION: '["numpy==2.0"]'}
    assert [p.get("metadata", {}).get("annotations") for p in api.sent[-2:]] == [change, change]
    assert json.loads(stored_annotations(api)[c.NATIVE_DISTRIBUTIONS_ANNOTATION]) == ["numpy==2.0"]


async def test_a_deleted_lease_is_created_again_whole() -> None:
    api = Recording()
    clock = VirtualTime(until=30.0)
    clock.at.append((15.0, lambda: api.objects[LEASES].clear()))  # someone deleted it
    with pytest.raises(Done):
        await beat(api, clock).run()
    assert api.writes["create", "leases"] == 2
    assert set(stored_annotations(api)) == DECLARED


async def test_a_restarted_sidecar_writes_the_whole_lease_once_then_heartbeats() -> None:
    api = Recording()
    await beat(api, VirtualTime(until=0.0)).renew()
    api.objects[LEASES][("nest-system", "pool-0")]["metadata"]["annotations"] = {}  # stale
    api.sent.clear()
    restarted = beat(api, VirtualTime(until=0.0))
    await restarted.renew()
    await restarted.renew()
    assert set(api.sent[0]) == {"apiVersion", "kind", "metadata", "spec"}  # a patch, no create
    assert set(api.sent[1]) == HEARTBEAT
    assert api.writes["create", "leases"] == 1
    assert set(stored_annotations(api)) == DECLARED
