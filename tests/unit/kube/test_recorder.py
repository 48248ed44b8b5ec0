"""The Event recorder: one Event counted for repeats, coalesced writes, and never a raise."""

from __future__ import annotations

from nest_kube import ApiError, EventRecorder, EventSource
from nest_kube.correlator import Correlator
from nest_kube.fake import FakeApi
from nest_kube.resources import EVENTS

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
