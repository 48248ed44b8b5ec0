"""The shared layer against the real API server: informer deltas, relist on 410, Event counts.

What the unit tests cannot show: that the API server's own answers (watch streams, bookmarks,
410 Gone for a compacted version, merge patches of Events) are read the way the layer expects.
ConfigMaps stand in for every kind: the informer is the same for all of them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nest_kube import ApiError, Delta, EventRecorder, EventSource, HttpApi, Informer, connect
from nest_kube.resources import CONFIGMAPS, EVENTS
from tests.unit.kube.support import eventually

SELECTOR = "test=kube-layer"


@pytest.fixture
async def layer(kubeconfig: Path) -> AsyncIterator[HttpApi]:
    """The layer's own client (the `api` fixture is the kubernetes library's)."""
    http = HttpApi(connect(kubeconfig))
    yield http
    await http.close()


def cm(name: str, value: str = "1") -> dict[str, object]:
    return {"metadata": {"name": name, "labels": {"test": "kube-layer"}}, "data": {"v": value}}


def names(seen: list[Delta]) -> list[tuple[str, str]]:
    return [(d.type, d.obj["metadata"]["name"]) for d in seen]


async def test_informer_sees_changes_and_relists_after_410(layer: HttpApi, namespace: str) -> None:
    await layer.create(CONFIGMAPS, namespace, cm("before"))
    await layer.create(CONFIGMAPS, namespace, {"metadata": {"name": "unselected"}})
    informer = Informer(layer, CONFIGMAPS, namespace=namespace, label_selector=SELECTOR)
    seen: list[Delta] = []
    informer.add_handler(seen.append)
    informer.start()
    try:
        await eventually(informer.synced.is_set, timeout=15, what="the first list")
        assert names(seen) == [("ADDED", "before")]
        await layer.create(CONFIGMAPS, namespace, cm("x"))
        await layer.patch(CONFIGMAPS, namespace, "x", {"data": {"v": "2"}})
        await layer.delete(CONFIGMAPS, namespace, "before")
        await eventually(lambda: len(seen) == 4, timeout=15, what="add, update, delete")
        assert names(seen)[1:] == [("ADDED", "x"), ("MODIFIED", "x"), ("DELETED", "before")]
        assert seen[2].obj["data"] == {"v": "2"} and seen[2].old is not None

        # The API server no longer has version 1 (its watch cache starts far later): 410 Gone.
        with pytest.raises(ApiError) as gone:
            async for _ in layer.watch(CONFIGMAPS, namespace, resource_version="1"):
                pass
        assert gone.value.status == 410
        # Paused, and resumed from there with changes it has not seen: it relists.
        await informer.stop()
        informer.resource_version = "1"
        await layer.delete(CONFIGMAPS, namespace, "x")
        await layer.create(CONFIGMAPS, namespace, cm("y"))
        informer.start()
        await eventually(lambda: informer.lists >= 2, timeout=15, what="a relist after 410")
        await eventually(
            lambda: informer.store.keys() == [f"{namespace}/y"],
            timeout=15,
            what="the store to hold what the server holds",
        )
        assert ("DELETED", "x") in names(seen)[4:] and ("ADDED", "y") in names(seen)[4:]
        await layer.patch(CONFIGMAPS, namespace, "y", {"data": {"v": "3"}})
        await eventually(
            lambda: names(seen)[-1] == ("MODIFIED", "y"),
            timeout=15,
            what="watching again after the relist",
        )
    finally:
        await informer.stop()


async def test_the_same_event_five_times_is_one_event_with_count_five(
    layer: HttpApi, namespace: str
) -> None:
    target = await layer.create(CONFIGMAPS, namespace, cm("subject"))
    recorder = EventRecorder(
        layer,
        EventSource("nest-test", host="test-host", reporting_controller="nest.sandbox.dev/test"),
    )
    for _ in range(5):
        recorder.event(target, "Normal", "Tested", "the same message")
    assert await recorder.flush(timeout=15)
    events = (await layer.list(EVENTS, namespace))["items"]
    assert [(e["reason"], e["count"]) for e in events] == [("Tested", 5)]
    assert events[0]["involvedObject"]["uid"] == target["metadata"]["uid"]
    assert events[0]["source"] == {"component": "nest-test", "host": "test-host"}
    recorder.event(target, "Normal", "Tested", "the same message")  # now a PATCH of the count
    recorder.event(target, "Warning", "Other", "a different reason")
    assert await recorder.flush(timeout=15)
    events = (await layer.list(EVENTS, namespace))["items"]
    assert sorted((e["reason"], e["count"]) for e in events) == [("Other", 1), ("Tested", 6)]
    assert (recorder.created, recorder.patched, recorder.failed) == (2, 1, 0)
    await recorder.close()
