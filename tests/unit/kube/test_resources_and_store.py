"""REST paths, selector matching, and what the store reports for watch events and relists."""

from __future__ import annotations

import pytest

from nest_kube.resources import (
    CONFIGMAPS,
    NAMESPACES,
    SANDBOX_DEPLOYMENTS,
    SANDBOX_POOLS,
    fields_match,
    labels_match,
    path,
)
from nest_kube.store import NAMESPACE_INDEX, Store, by_label, by_namespace


def obj(name: str, rv: str, ns: str = "a", uid: str = "u", **labels: str) -> dict[str, object]:
    meta = {"name": name, "namespace": ns, "resourceVersion": rv, "uid": uid, "labels": labels}
    return {"metadata": meta}


def test_paths_of_core_group_and_cluster_scoped_resources() -> None:
    assert path(CONFIGMAPS, "a") == "/api/v1/namespaces/a/configmaps"
    assert path(CONFIGMAPS) == "/api/v1/configmaps"  # all namespaces
    assert path(NAMESPACES, "ignored", "x") == "/api/v1/namespaces/x"
    assert (
        path(SANDBOX_DEPLOYMENTS, "a", "f", "scale")
        == "/apis/nest.sandbox.dev/v1alpha1/namespaces/a/sandboxdeployments/f/scale"
    )
    assert path(SANDBOX_POOLS, None, "p") == "/apis/nest.sandbox.dev/v1alpha1/sandboxpools/p"
    with pytest.raises(ValueError):
        path(CONFIGMAPS, "a", None, "status")


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", True),
        ("app=web", True),
        ("app==web,tier!=front", True),
        ("app!=web", False),
        ("app in (web, api)", True),
        ("app notin (web)", False),
        ("tier", False),
        ("!tier", True),
        ("app in (web),!tier", True),
        ("app=api", False),
    ],
)
def test_label_selectors_match_as_the_api_server_does(selector: str, expected: bool) -> None:
    assert labels_match(selector, {"app": "web"}) is expected


def test_field_selectors_on_name_and_namespace_only() -> None:
    o = obj("x", "1", ns="a")
    assert fields_match("metadata.name=x,metadata.namespace=a", o)
    assert not fields_match("metadata.name!=x", o)
    with pytest.raises(ValueError):
        fields_match("spec.nodeName=n", o)


def test_watch_events_become_deltas_by_what_the_store_holds() -> None:
    store = Store()
    added = store.apply("MODIFIED", obj("x", "1"))  # unknown key: an add, whatever the type
    assert added is not None and added.type == "ADDED"
    assert store.apply("MODIFIED", obj("x", "1")) is None  # same version: already seen
    updated = store.apply("ADDED", obj("x", "2"))
    assert updated is not None and updated.type == "MODIFIED"
    assert updated.old is not None and updated.old["metadata"]["resourceVersion"] == "1"
    deleted = store.apply("DELETED", obj("x", "3"))
    assert deleted is not None and deleted.type == "DELETED" and "a/x" not in store


def test_a_relist_reports_only_what_changed_meanwhile() -> None:
    store = Store()
    store.replace([obj("same", "1"), obj("changed", "1"), obj("gone", "1"), obj("new-uid", "1")])
    deltas = store.replace(
        [obj("same", "1"), obj("changed", "5"), obj("new-uid", "6", uid="v"), obj("fresh", "7")]
    )
    seen = [(d.type, d.key) for d in deltas]
    assert seen == [
        ("DELETED", "a/gone"),
        ("DELETED", "a/new-uid"),  # deleted and created again: not an update
        ("MODIFIED", "a/changed"),
        ("ADDED", "a/new-uid"),
        ("ADDED", "a/fresh"),
    ]
    assert sorted(store.keys()) == ["a/changed", "a/fresh", "a/new-uid", "a/same"]


def test_indices_follow_updates_and_deletes() -> None:
    store = Store({NAMESPACE_INDEX: by_namespace, "app": by_label("app")})
    store.apply("ADDED", obj("x", "1", app="web"))
    store.apply("ADDED", obj("y", "1", ns="b", app="web"))
    assert [o["metadata"]["name"] for o in store.by_index("app", "web")] == ["x", "y"]
    store.apply("MODIFIED", obj("x", "2", app="api"))
    assert [o["metadata"]["name"] for o in store.by_index("app", "web")] == ["y"]
    store.apply("DELETED", obj("y", "3", ns="b", app="web"))
    assert store.by_index("app", "web") == [] and store.index_values("app") == ["api"]
    assert store.index_values(NAMESPACE_INDEX) == ["a"]
    assert store.get_by("a", "x") is not None and len(store) == 1
