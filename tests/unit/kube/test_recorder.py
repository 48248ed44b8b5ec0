"""The Event recorder: one Event counted for repeats, coalesced and held writes, never a raise."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from nest_kube import ApiError, EventRecorder, EventSource
from nest_kube.correlator import Correlator
from nest_kube.fake import FakeApi
from nest_kube.resources import EVENTS, Obj, Resource
from tests.unit.kube.support import eventually

SOURCE = EventSource("nest-test", host="h")
OBJ = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "c", "namespace": "a", "uid": "u"},
}


async def test_five_identical_occurrences_are_one_event_with_count_five() -> None:
    api = FakeApi()
    recorder = EventRecorder(api, SOURCE)
    for _ in range(5):
        recorder.event(OBJ, "Normal", "Synced", "all good")
    assert await recorder.flush()
    events = (await api.list(EVENTS, "a"))["items"]
    assert [(e["count"], e["reason"]) for e in events] == [(5, "Synced")]
    assert api.writes["create", "events"] == 1 and recorder.created == 1  # coalesced
    recorder.event(OBJ, "Normal", "Synced", "all good")
    assert await recorder.flush()
    events = (await api.list(EVENTS, "a"))["items"]
    assert [e["count"] for e in events] == [6] and api.writes["patch", "events"] == 1
    await recorder.close()


async def test_an_expired_event_is_created_again_and_failures_stay_inside() -> None:
    api = FakeApi()
    recorder = EventRecorder(api, SOURCE)
    recorder.event(OBJ, "Warning", "Failed", "boom")
    assert await recorder.flush()
    name = (await api.list(EVENTS, "a"))["items"][0]["metadata"]["name"]
    await api.delete(EVENTS, "a", name)  # expired (events live an hour)
    recorder.event(OBJ, "Warning", "Failed", "boom")
    assert await recorder.flush()
    assert [e["count"] for e in (await api.list(EVENTS, "a"))["items"]] == [2]
    api.fail("create", ApiError(403, "Forbidden"))
    recorder.event(OBJ, "Normal", "Other", "denied")  # the failure is counted, not raised
    assert await recorder.flush() and recorder.failed == 1
    await recorder.close()


async def test_rate_limited_and_overflowing_occurrences_are_counted_not_written() -> None:
    api = FakeApi()
    recorder = EventRecorder(api, SOURCE, correlator=Correlator(SOURCE, burst=2), max_pending=1)
    for i in range(4):
        recorder.event(OBJ, "Normal", f"R{i}", "m")
    assert (recorder.limited, recorder.dropped) == (2, 1)  # R2, R3 limited; R1 found R0 pending
    assert await recorder.flush()
    assert len((await api.list(EVENTS, "a"))["items"]) == 1
    await recorder.close()


def test_recording_without_a_running_loop_never_raises() -> None:
    recorder = EventRecorder(FakeApi(), SOURCE)
    recorder.event(OBJ, "Normal", "Synced", "no loop here")
    recorder.event({"no": "metadata"}, "Normal", "Synced", "bad object")
    assert recorder.dropped == 2


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_repeats_of_a_written_event_are_one_patch_per_window() -> None:
    api, clock = FakeApi(), Clock()
    recorder = EventRecorder(api, SOURCE, window=10.0, clock=clock)
    recorder.event(OBJ, "Normal", "Scheduled", "assigned to p")
    await eventually(lambda: recorder.created == 1, what="the first occurrence at once")
    for _ in range(20):  # a burst of repeats inside the window: held, not a write each
        recorder.event(OBJ, "Normal", "Scheduled", "assigned to p")
    assert recorder.held == 20 and api.writes["patch", "events"] == 0
    clock.now += 10.0  # the window ends: the next occurrence finds its Event due
    recorder.event(OBJ, "Normal", "Scheduled", "assigned to p")
    await eventually(lambda: recorder.patched == 1, what="one patch for the window")
    [event] = (await api.list(EVENTS, "a"))["items"]
    assert event["count"] == 22 and api.writes["patch", "events"] == 1
    await recorder.close()


async def test_a_warning_goes_out_at_once_while_counts_are_held_and_close_writes_them() -> None:
    api = FakeApi()
    recorder = EventRecorder(api, SOURCE, window=3600.0)
    recorder.event(OBJ, "Normal", "Started", "running")
    await eventually(lambda: recorder.created == 1, what="the Normal Event created")
    recorder.event(OBJ, "Normal", "Started", "running")  # held for the hour
    recorder.event(OBJ, "Warning", "BackOff", "restarting")  # a new Event: written at once
    await eventually(lambda: recorder.created == 2, what="the Warning without a flush")
    assert recorder.patched == 0
    await recorder.close()  # shutdown writes the held count
    counts = {e["reason"]: e["count"] for e in (await api.list(EVENTS, "a"))["items"]}
    assert counts == {"Started": 2, "BackOff": 1} and recorder.patched == 1


class SlowApi(FakeApi):
    """Creates only when let: a write stays in flight while the test records more."""

    def __init__(self) -> None:
        super().__init__()
        self.let = asyncio.Event()
        self.waiting = False

    async def create(
        self, resource: Resource, namespace: str | None, body: Mapping[str, Any]
    ) -> Obj:
        self.waiting = True
        await self.let.wait()
        return await super().create(resource, namespace, body)


async def test_a_repeat_while_its_create_is_in_flight_waits_for_the_window() -> None:
    api = SlowApi()
    recorder = EventRecorder(api, SOURCE, window=3600.0)
    recorder.event(OBJ, "Normal", "Started", "running")
    await eventually(lambda: api.waiting, what="the create in flight")
    recorder.event(OBJ, "Normal", "Started", "running")  # not a second write behind the first
    api.let.set()
    await eventually(lambda: recorder.created == 1, what="the create")
    assert recorder.held == 1 and recorder.patched == 0
    assert await recorder.flush()
    assert [e["count"] for e in (await api.list(EVENTS, "a"))["items"]] == [2]
    await recorder.close()
