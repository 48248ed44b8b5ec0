"""The fake answers as the API server does where shells depend on it."""

from __future__ import annotations

import pytest

from nest_kube import JSON_PATCH, ApiError
from nest_kube.fake import FakeApi, merge_patch
from nest_kube.resources import CONFIGMAPS, SANDBOX_DEPLOYMENTS


async def test_optimistic_concurrency_and_already_exists() -> None:
    api = FakeApi()
    created = await api.create(CONFIGMAPS, "a", {"metadata": {"generateName": "c-"}})
    name, version = created["metadata"]["name"], created["metadata"]["resourceVersion"]
    assert name.startswith("c-") and created["metadata"]["uid"]
    with pytest.raises(ApiError) as exists:
        await api.create(CONFIGMAPS, "a", {"metadata": {"name": name}})
    assert exists.value.status == 409
    await api.patch(CONFIGMAPS, "a", name, {"data": {"k": "1"}})  # no precondition: applies
    with pytest.raises(ApiError) as stale:
        await api.replace(
            CONFIGMAPS, "a", name, {"metadata": {"name": name, "resourceVersion": version}}
        )
    assert stale.value.status == 409 and "modified" in stale.value.message
    with pytest.raises(ApiError) as missing:
        await api.get(CONFIGMAPS, "a", "nope")
    assert missing.value.status == 404


async def test_json_patch_test_op_guards_a_finalizer_edit_and_deletion_waits_for_it() -> None:
    api = FakeApi()
    body = {"metadata": {"name": "c", "finalizers": ["x/keep"]}}
    await api.create(CONFIGMAPS, "a", body)
    await api.delete(CONFIGMAPS, "a", "c")
    held = await api.get(CONFIGMAPS, "a", "c")
    assert held["metadata"]["deletionTimestamp"]
    with pytest.raises(ApiError) as lost:
        await api.patch(
            CONFIGMAPS,
            "a",
            "c",
            [
                {"op": "test", "path": "/metadata/finalizers/0", "value": "other"},
                {"op": "remove", "path": "/metadata/finalizers/0"},
            ],
            content_type=JSON_PATCH,
        )
    assert lost.value.status == 422
    await api.patch(
        CONFIGMAPS,
        "a",
        "c",
        [
            {"op": "test", "path": "/metadata/finalizers/0", "value": "x/keep"},
            {"op": "remove", "path": "/metadata/finalizers/0"},
        ],
        content_type=JSON_PATCH,
    )
    assert (await api.list(CONFIGMAPS, "a"))["items"] == []  # last finalizer gone: deleted
    assert api.writes["patch", "configmaps"] == 2 and api.writes["delete", "configmaps"] == 1


async def test_scale_subresource_and_uid_preconditions() -> None:
    api = FakeApi()
    made = await api.create(
        SANDBOX_DEPLOYMENTS, "a", {"metadata": {"name": "f"}, "spec": {"replicas": 0}}
    )
    scale = await api.get(SANDBOX_DEPLOYMENTS, "a", "f", subresource="scale")
    assert scale["spec"]["replicas"] == 0
    patch = {"spec": {"replicas": 2}, "metadata": {"resourceVersion": "999"}}
    with pytest.raises(ApiError) as stale:
        await api.patch(SANDBOX_DEPLOYMENTS, "a", "f", patch, subresource="scale")
    assert stale.value.status == 409
    patch["metadata"] = {"resourceVersion": made["metadata"]["resourceVersion"]}
    scaled = await api.patch(SANDBOX_DEPLOYMENTS, "a", "f", patch, subresource="scale")
    assert scaled["spec"]["replicas"] == 2
    assert (await api.get(SANDBOX_DEPLOYMENTS, "a", "f"))["spec"]["replicas"] == 2
    with pytest.raises(ApiError) as other:
        await api.delete(SANDBOX_DEPLOYMENTS, "a", "f", preconditions={"uid": "someone-else"})
    assert other.value.status == 409


async def test_a_watch_from_a_compacted_version_is_410() -> None:
    api = FakeApi()
    await api.create(CONFIGMAPS, "a", {"metadata": {"name": "c"}})
    api.compact()
    with pytest.raises(ApiError) as gone:
        async for _ in api.watch(CONFIGMAPS, "a", resource_version="1"):
            pass
    assert gone.value.status == 410


def test_merge_patch_is_rfc_7386() -> None:
    target = {"a": {"b": 1, "c": 2}, "d": [1]}
    assert merge_patch(target, {"a": {"b": None, "e": 3}, "d": [2]}) == {
        "a": {"c": 2, "e": 3},
        "d": [2],
    }
