"""The sidecar's I/O shell against `nest_kube.FakeApi`: the finalizer's release under conflicts
and deletion, back-off when the API server is away, Events through the shared recorder, and the
reads. It never adds the finalizer: the binder does, in the binding write."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from crds.constants import SIDECAR_FINALIZER
from nest_kube import ApiError, EventRecorder, EventSource, Unreachable, on_controller
from nest_kube.fake import FakeApi
from nest_kube.resources import CONFIGMAPS, EVENTS, SANDBOXES, SECRETS
from nest_sidecar.kube import KubeShell, remove_finalizer_patch
from nest_sidecar.packages import SecretData

OTHER = "nest.sandbox.dev/operator"


def sandbox(finalizers: list[str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "s1", "namespace": "ns"}
    if finalizers is not None:
        meta["finalizers"] = finalizers
    return {"metadata": meta, "spec": {}}


class Sleeps:
    """Records back-off pauses instead of waiting them out."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def shell(api: FakeApi, sleeps: Sleeps | None = None) -> KubeShell:
    recorder = EventRecorder(api, EventSource("nest-sidecar", host="pool-0"))
    return KubeShell(api, recorder, sleep=sleeps or Sleeps())


def finalizers(api: FakeApi) -> list[str]:
    return list(api.objects[SANDBOXES][("ns", "s1")]["metadata"].get("finalizers") or [])


# -- finalizers ------------------------------------------------------------------------------


def test_the_patch_removes_only_ours() -> None:
    assert remove_finalizer_patch([OTHER]) is None
    test, remove = remove_finalizer_patch([OTHER, SIDECAR_FINALIZER])  # type: ignore[misc]
    assert test == {"op": "test", "path": "/metadata/finalizers/1", "value": SIDECAR_FINALIZER}
    assert remove == {"op": "remove", "path": "/metadata/finalizers/1"}


async def test_a_release_that_loses_a_race_reads_again_and_removes_ours_only() -> None:
    api = FakeApi()
    stale = api.put(SANDBOXES, sandbox([SIDECAR_FINALIZER]))
    # Someone else put a finalizer first meanwhile: ours moved, and the stale index is wrong.
    await api.patch(SANDBOXES, "ns", "s1", {"metadata": {"finalizers": [OTHER, SIDECAR_FINALIZER]}})
    kube = shell(api)
    await kube.release_finalizer(stale)
    assert finalizers(api) == [OTHER]


async def test_a_conflict_is_retried_on_a_fresh_read() -> None:
    api = FakeApi()
    obj = api.put(SANDBOXES, sandbox([SIDECAR_FINALIZER]))
    api.fail("patch", ApiError(409, "Conflict"), times=2)
    await shell(api).release_finalizer(obj)
    assert finalizers(api) == []


async def test_a_deleted_sandbox_needs_no_finalizer_edit() -> None:
    api = FakeApi()
    obj = api.put(SANDBOXES, sandbox([]))
    await api.delete(SANDBOXES, "ns", "s1")
    kube = shell(api)
    await kube.release_finalizer(obj)  # 404: nothing raised
    assert await kube.patch_status(obj, {"status": {"phase": "Running"}}) is None
    assert await kube.get_sandbox(obj) is None


async def test_an_unreachable_api_server_is_waited_out_with_back_off() -> None:
    api = FakeApi()
    obj = api.put(SANDBOXES, sandbox([SIDECAR_FINALIZER]))
    api.fail("patch", Unreachable("connection refused"), times=3)
    sleeps = Sleeps()
    kube = shell(api, sleeps)
    await kube.release_finalizer(obj)
    assert finalizers(api) == []
    assert kube.retries == 3 and len(sleeps.delays) == 3
    assert sleeps.delays[0] < sleeps.delays[2]  # exponential: the pauses grow


async def test_a_refusal_that_is_no_outage_is_raised_at_once() -> None:
    api = FakeApi()
    obj = api.put(SANDBOXES, sandbox([SIDECAR_FINALIZER]))
    api.fail("patch", ApiError(403, "Forbidden"))
    sleeps = Sleeps()
    with pytest.raises(ApiError) as raised:
        await shell(api, sleeps).release_finalizer(obj)
    assert raised.value.status == 403 and sleeps.delays == []


# -- status --------------------------------------------------------------------------------------


async def test_a_status_patch_returns_the_stored_object() -> None:
    api = FakeApi()
    obj = api.put(SANDBOXES, sandbox())
    stored = await shell(api).patch_status(obj, {"status": {"phase": "Running"}})
    assert stored is not None and stored["status"] == {"phase": "Running"}
    assert api.writes == {("patch", "sandboxes"): 1}


async def test_a_failed_status_patch_is_raised_for_the_manager_to_retry() -> None:
    api = FakeApi()
    obj = api.put(SANDBOXES, sandbox())
    api.fail("patch", Unreachable("connection reset"))
    sleeps = Sleeps()
    with pytest.raises(Unreachable):
        await shell(api, sleeps).patch_status(obj, {"status": {"phase": "Running"}})
    assert sleeps.delays == []  # one attempt: the manager owns retries of status


# -- events --------------------------------------------------------------------------------------


async def test_events_keep_reason_and_message_and_repeats_are_counted() -> None:
    api = FakeApi()
    obj = api.put(SANDBOXES, sandbox())
    kube = shell(api)
    for _ in range(3):
        kube.event(obj, "Warning", "BackOff", "back-off 1s restarting sandbox (Crashed: exit 1)")
    kube.event(obj, "Normal", "Killing", "stopping sandbox (grace 5s)")
    assert await kube.recorder.flush()
    events = sorted((await api.list(EVENTS, "ns"))["items"], key=lambda e: e["reason"])
    assert [(e["reason"], e["count"], e["type"]) for e in events] == [
        ("BackOff", 3, "Warning"), ("Killing", 1, "Normal"),
    ]  # fmt: skip
    assert events[0]["message"] == "back-off 1s restarting sandbox (Crashed: exit 1)"
    involved = events[0]["involvedObject"]
    assert (involved["kind"], involved["name"], involved["apiVersion"]) == (
        "Sandbox", "s1", "nest.sandbox.dev/v1alpha1",
    )  # fmt: skip
    assert events[0]["source"] == {"component": "nest-sidecar", "host": "pool-0"}
    assert api.writes["create", "events"] == 2  # the repeats coalesced into one create


async def test_started_of_a_replica_sets_sandboxes_is_one_counted_event_on_the_replica_set() -> (
    None
):
    api = FakeApi()
    owner = {"apiVersion": "nest.sandbox.dev/v1alpha1", "kind": "SandboxReplicaSet",
             "name": "fn-abc", "uid": "rs-uid", "controller": True}  # fmt: skip
    kube = shell(api)
    for name in ("a", "b", "c"):
        obj = sandbox() | {"metadata": {"name": name, "namespace": "ns", "uid": f"u-{name}",
                                        "ownerReferences": [owner]}}  # fmt: skip
        kube.event(on_controller(obj), "Normal", "Started", "code abc started in subprocess")
    assert await kube.recorder.flush()
    [event] = (await api.list(EVENTS, "ns"))["items"]
    involved = event["involvedObject"]
    assert (involved["kind"], involved["name"], involved["uid"]) == (
        "SandboxReplicaSet", "fn-abc", "rs-uid",
    )  # fmt: skip
    assert event["count"] == 3 and api.writes["create", "events"] == 1


async def test_a_long_message_is_cut_with_an_ellipsis_and_an_event_failure_stays_inside() -> None:
    api = FakeApi()
    obj = api.put(SANDBOXES, sandbox())
    api.fail("create", Unreachable("connection refused"))
    kube = shell(api)
    kube.event(obj, "Warning", "Failed", "lost")  # dropped, not raised
    kube.event(obj, "Warning", "Failed", "x" * 5000)
    assert await kube.recorder.flush()
    [event] = (await api.list(EVENTS, "ns"))["items"]
    assert len(event["message"]) == 1024 and event["message"].endswith("…")


# -- reads ---------------------------------------------------------------------------------------


async def test_the_configmap_read_gives_its_data_or_none() -> None:
    api = FakeApi()
    api.put(CONFIGMAPS, {"metadata": {"name": "code", "namespace": "ns"}, "data": {"a.py": "x"}})
    kube = shell(api)
    assert await kube.read_configmap("ns", "code") == {"a.py": "x"}
    assert await kube.read_configmap("ns", "missing") is None
    api.fail("get", ApiError(500, "InternalError"))
    with pytest.raises(ApiError):
        await kube.read_configmap("ns", "code")


async def test_the_secret_read_decodes_and_tells_forbidden_from_missing() -> None:
    api = FakeApi()
    raw = b'{"auths": {}}'
    api.put(SECRETS, {
        "metadata": {"name": "creds", "namespace": "ns"},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(raw).decode()},
    })  # fmt: skip
    kube = shell(api)
    assert await kube.read_secret("ns", "creds") == SecretData(
        "kubernetes.io/dockerconfigjson", {".dockerconfigjson": raw}
    )
    assert await kube.read_secret("ns", "other") is None
    api.fail("get", ApiError(403, "Forbidden"))
    with pytest.raises(PermissionError, match="get secrets ns/creds"):
        await kube.read_secret("ns", "creds")
    api.fail("get", ApiError(500, "InternalError"))
    with pytest.raises(ApiError):
        await kube.read_secret("ns", "creds")
