"""SandboxPool: the model accepts what the schema accepts, and its membership/tenant rules."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from crds import SandboxPool, Tenancy
from crds.generate import KINDS, crd_manifest
from crds.pool import SandboxPoolSpec

POOL_CRD = crd_manifest(next(k for k in KINDS if k.kind == "SandboxPool"))
SPEC_SCHEMA = POOL_CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def pool_doc(**spec: Any) -> dict[str, Any]:
    body = {"podNamespace": "nest-system", "podSelector": {"matchLabels": {"app": "pool"}}}
    return {"metadata": {"name": "default"}, "spec": {**body, **spec}}


def test_defaults_offer_both_modes_to_every_namespace_shared() -> None:
    pool = SandboxPool.model_validate(pool_doc())
    wire = pool.to_k8s()
    assert wire["kind"] == "SandboxPool" and pool.name == "default"
    assert wire["spec"]["isolation"] == ["subprocess", "namespace"]
    assert wire["spec"]["tenancy"] == "Shared"
    assert wire["spec"]["namespaceSelector"] == {"matchLabels": {}, "matchExpressions": []}
    assert wire["status"] == {"pods": 0, "readyPods": 0, "conditions": []}
    assert pool.spec.allows_namespace({})  # {} selects every namespace
    assert SandboxPool.model_validate(wire) == pool


def test_the_default_list_is_not_shared_between_objects() -> None:
    a = SandboxPool.model_validate(pool_doc()).spec
    a.isolation.pop()
    assert len(SandboxPool.model_validate(pool_doc()).spec.isolation) == 2


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"isolation": []}, "isolation"),
        ({"isolation": ["vm"]}, "isolation"),
        ({"isolation": ["subprocess", "subprocess"]}, "duplicate isolation modes: subprocess"),
        ({"tenancy": "Exclusive"}, "tenancy"),
        ({"podNamespace": "Nest_System"}, "podNamespace"),
        ({"podNamespace": "x" * 64}, "podNamespace"),
        ({"podSelector": None}, "podSelector"),
        ({"podSelector": {"matchExpressions": [{"key": "k", "operator": "In"}]}}, "In"),
        ({"namespaceSelector": {"matchLabel": {}}}, "matchLabel"),
    ],
)
def test_invalid_specs_are_refused_naming_the_rule(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        SandboxPool.model_validate(pool_doc(**spec))


def test_pod_namespace_and_selector_are_required() -> None:
    for missing in ("podNamespace", "podSelector"):
        doc = pool_doc()
        del doc["spec"][missing]
        with pytest.raises(ValidationError, match=missing):
            SandboxPool.model_validate(doc)
        assert missing in SPEC_SCHEMA["required"]


def test_schema_mirrors_the_model_rules() -> None:
    props = SPEC_SCHEMA["properties"]
    assert props["isolation"]["minItems"] == 1
    assert props["isolation"]["x-kubernetes-list-type"] == "set"  # the server refuses duplicates
    assert props["isolation"]["items"]["enum"] == ["subprocess", "namespace"]
    assert props["isolation"]["default"] == ["subprocess", "namespace"]
    assert props["tenancy"]["enum"] == [t.value for t in Tenancy]
    assert props["tenancy"]["default"] == "Shared"
    assert props["podNamespace"]["pattern"] == r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
    assert props["namespaceSelector"]["default"] == {}


def test_a_pod_is_a_member_only_in_the_namespace_and_matching_the_selector() -> None:
    spec = SandboxPool.model_validate(pool_doc()).spec
    assert spec.pod_problem("default", "nest-system", {"app": "pool", "x": "y"}) is None
    wrong_ns = spec.pod_problem("default", "tenant-a", {"app": "pool"})
    assert wrong_ns == "namespace tenant-a is not SandboxPool default's podNamespace nest-system"
    wrong_labels = spec.pod_problem("default", "nest-system", {"app": "other"})
    assert wrong_labels == "its labels do not match SandboxPool default's podSelector app=pool"


def test_an_empty_pod_selector_takes_every_labelled_pod_of_the_namespace() -> None:
    spec = SandboxPoolSpec.model_validate({"podNamespace": "pools", "podSelector": {}})
    assert spec.pod_problem("p", "pools", {}) is None
    assert spec.pod_problem("p", "elsewhere", {}) is not None


def test_namespace_selector_decides_which_namespaces_may_use_the_pool() -> None:
    selector = {"matchExpressions": [{"key": "team", "operator": "In", "values": ["a", "b"]}]}
    spec = SandboxPool.model_validate(pool_doc(namespaceSelector=selector)).spec
    assert spec.allows_namespace({"team": "a"})
    assert not spec.allows_namespace({"team": "c"})
    assert not spec.allows_namespace({})


def test_a_dedicated_pool_offering_one_mode() -> None:
    pool = SandboxPool.model_validate(pool_doc(tenancy="Dedicated", isolation=["subprocess"]))
    assert pool.spec.tenancy is Tenancy.DEDICATED
    assert pool.to_k8s()["spec"]["isolation"] == ["subprocess"]
