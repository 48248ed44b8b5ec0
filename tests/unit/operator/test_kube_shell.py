"""The operator's I/O shell (`nest_operator.kube.Kube`) against the shared layer's `FakeApi`.

Why FakeApi here and FakeKube elsewhere: the controllers' tests drive decisions through
`tests/unit/operator/fake_kube.py` (a stand-in for `Kube` itself, counting what they ask for);
this file tests `Kube` below that line — which resource each kind goes to, write-through into
the store, the delete rules, Event aggregation, the informers' single LIST per kind — so it
needs the API protocol, which `FakeApi` is.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from crds import constants as c
from nest_kube import ApiError, connect, on_controller
from nest_kube import resources as r
from nest_kube.fake import FakeApi
from nest_operator.kube import Kube, terminating
from nest_operator.manager import ControllerManager, Settings
from nest_operator.store import Kind, Obj, Store


def connection() -> Any:
    return connect(token="t", host="http://127.0.0.1:9")  # never dialled: FakeApi answers


def sandbox(name: str) -> Obj:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.SANDBOX_KIND,
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"function": {"handler": "main:handler"}},
    }


def shell() -> tuple[Kube, FakeApi, list[tuple[Kind, str, bool]]]:
    api = FakeApi()
    written: list[tuple[Kind, str, bool]] = []
    kube = Kube(connection(), Store(), api=api)
    kube.on_write = lambda kind, obj, deleted: written.append(
        (kind, obj["metadata"]["name"], deleted)
    )
    return kube, api, written


async def test_writes_go_to_the_kinds_resource_and_through_to_the_store() -> None:
    kube, api, written = shell()
    created = await kube.create(Kind.SANDBOX, "ns", sandbox("a"))
    assert kube.store.get(Kind.SANDBOX, "ns/a") == created
    await kube.patch(Kind.SANDBOX, "ns", "a", {"metadata": {"labels": {"x": "y"}}})
    await kube.patch_status(Kind.SANDBOX, "ns", "a", {"phase": "Pending"})
    stored = kube.store.get(Kind.SANDBOX, "ns/a")
    assert stored is not None and stored["status"] == {"phase": "Pending"}
    assert stored["metadata"]["labels"] == {"x": "y"}
    assert api.writes["create", c.SANDBOX_PLURAL] == 1
    assert api.writes["patch", c.SANDBOX_PLURAL] == 2
    assert written == [(Kind.SANDBOX, "a", False)] * 3


async def test_a_cluster_scoped_status_is_patched_without_a_namespace() -> None:
    kube, api, _ = shell()
    api.put(r.SANDBOX_POOLS, {"metadata": {"name": "p"}, "spec": {}})
    await kube.patch_status(Kind.POOL, "", "p", {"pods": 2})
    assert (await api.get(r.SANDBOX_POOLS, None, "p"))["status"] == {"pods": 2}


async def test_delete_is_exact_and_gone_is_fine() -> None:
    kube, api, written = shell()
    obj = await kube.create(Kind.SANDBOX, "ns", sandbox("a"))
    other = {**obj, "metadata": {**obj["metadata"], "uid": "someone-else"}}
    await kube.delete(Kind.SANDBOX, other)  # 409: the UID precondition protects the new one
    assert await api.get(r.SANDBOXES, "ns", "a")
    await kube.delete(Kind.SANDBOX, obj)
    await kube.delete(Kind.SANDBOX, obj)  # 404: already gone
    assert kube.store.get(Kind.SANDBOX, "ns/a") is None
    assert written[-1] == (Kind.SANDBOX, "a", True)


async def test_delete_of_a_finalized_object_keeps_it_terminating() -> None:
    kube, _, _ = shell()
    body = sandbox("a")
    body["metadata"]["finalizers"] = [c.SIDECAR_FINALIZER]
    obj = await kube.create(Kind.SANDBOX, "ns", body)
    await kube.delete(Kind.SANDBOX, obj)
    stored = kube.store.get(Kind.SANDBOX, "ns/a")
    assert stored is not None and stored["metadata"]["deletionTimestamp"]


async def test_other_failures_are_raised_as_api_errors() -> None:
    kube, api, _ = shell()
    api.fail("create", ApiError(403, "Forbidden", {"message": "no"}))
    with pytest.raises(ApiError) as raised:
        await kube.create(Kind.SANDBOX, "ns", sandbox("a"))
    assert raised.value.status == 403
    assert kube.store.get(Kind.SANDBOX, "ns/a") is None


def test_terminating_namespace_is_read_from_the_status_causes() -> None:
    body = {"message": "sandboxes \"a\" is forbidden: unable to create new content in "
            "namespace ns because it is being terminated",
            "details": {"causes": [{"reason": "NamespaceTerminating"}]}}  # fmt: skip
    assert terminating(ApiError(403, "Forbidden", body))
    assert not terminating(ApiError(403, "Forbidden", {"message": "RBAC says no"}))
    assert not terminating(ApiError(409, "Conflict", body))


async def test_repeated_events_are_one_event_with_a_count() -> None:
    kube, api, _ = shell()
    obj = await kube.create(Kind.SANDBOX, "ns", sandbox("a"))
    for _ in range(5):
        kube.event(obj, "Warning", "BackOff", "restarting")
    assert await kube.recorder.flush()
    kube.event(obj, "Warning", "BackOff", "restarting")
    assert await kube.recorder.flush()
    events = (await api.list(r.EVENTS, "ns"))["items"]
    assert len(events) == 1
    assert events[0]["count"] == 6 and events[0]["reason"] == "BackOff"
    assert events[0]["involvedObject"]["kind"] == c.SANDBOX_KIND
    assert api.writes["create", "events"] == 1


async def test_informer_fills_in_kind_and_filters_by_label() -> None:
    kube, api, _ = shell()
    api.put(r.PODS, {"metadata": {"name": "pool-0", "namespace": "ns",
                                  "labels": {c.POOL_LABEL: "p"}}})  # fmt: skip
    api.put(r.PODS, {"metadata": {"name": "unrelated", "namespace": "ns"}})
    seen: list[tuple[Kind, str, Obj]] = []
    informer = kube.informer(Kind.POD, lambda kind, event, obj: seen.append((kind, event, obj)))
    informer.start()
    await asyncio.wait_for(informer.synced.wait(), 5)
    await informer.stop()
    assert [(kind, event, o["metadata"]["name"]) for kind, event, o in seen] == [
        (Kind.POD, "ADDED", "pool-0")
    ]
    assert seen[0][2]["kind"] == "Pod" and seen[0][2]["apiVersion"] == "v1"


class CountingApi(FakeApi):
    """FakeApi that counts LISTs by resource: the start-up's reads."""

    def __init__(self) -> None:
        super().__init__()
        self.lists: dict[str, int] = {}

    async def list(self, resource: r.Resource, *args: Any, **kwargs: Any) -> Obj:
        self.lists[resource.plural] = self.lists.get(resource.plural, 0) + 1
        return await super().list(resource, *args, **kwargs)


async def test_manager_lists_each_kind_once_then_starts_on_the_full_view() -> None:
    api = CountingApi()
    api.put(r.SANDBOXES, sandbox("before-start"))
    kube = Kube(connection(), Store(), api=api)
    manager = ControllerManager(connection(), Settings(resync_seconds=3600), kube=kube)
    await asyncio.wait_for(manager.start(), 10)
    try:
        assert manager.synced
        assert manager.store.get(Kind.SANDBOX, "ns/before-start") is not None
        assert {plural: n for plural, n in api.lists.items() if plural != "pods"} == {
            kind.value: 1 for kind in Kind if kind != Kind.POD
        }
        assert api.lists["pods"] >= 1  # the informer's; the autoscaler may look for gateways
    finally:
        await manager.stop()


async def test_routine_events_of_owned_sandboxes_are_counted_on_their_controller() -> None:
    kube, api, _ = shell()
    owner = {"apiVersion": c.API_VERSION, "kind": c.REPLICASET_KIND, "name": "rs",
             "uid": "rs-uid", "controller": True}  # fmt: skip
    owned = []
    for i in range(20):
        body = sandbox(f"s{i}")
        body["metadata"]["ownerReferences"] = [owner]
        owned.append(await kube.create(Kind.SANDBOX, "ns", body))
    bare = await kube.create(Kind.SANDBOX, "ns", sandbox("bare"))
    assert on_controller(bare) is bare
    for obj in owned:
        kube.event(on_controller(obj), "Normal", "Scheduled", "Successfully assigned sandboxes")
    assert await kube.scheduler_recorder.flush()
    [event] = (await api.list(r.EVENTS, "ns"))["items"]
    assert event["involvedObject"]["name"] == "rs" and event["count"] == 20
    assert event["source"]["component"] == "nest-scheduler"
    assert api.writes["create", "events"] + api.writes["patch", "events"] <= 2
    # The scheduler's burst does not use up the replica set controller's own Event budget.
    for _ in range(30):
        kube.event(
            on_controller(owned[0]), "Normal", "Scheduled", "Successfully assigned sandboxes"
        )
    kube.event(on_controller(owned[0]), "Warning", "FailedCreate", "quota")
    assert await kube.recorder.flush() and await kube.scheduler_recorder.flush()
    reasons = {e["reason"] for e in (await api.list(r.EVENTS, "ns"))["items"]}
    assert reasons == {"Scheduled", "FailedCreate"}
