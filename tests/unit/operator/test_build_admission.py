"""SandboxRestriction and `source.build`: only a SandboxDeployment builds its code."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from crds import constants as c
from nest_operator import admission as adm
from nest_operator.admission_specs import NOT_BUILDER

ALICE = adm.User("alice", groups=("system:authenticated",))
BUILD = {"build": {"context": "127.0.0.1:5000/nest/team@sha256:" + "0" * 64}}
OCI = {"oci": {"ref": "127.0.0.1:5000/nest/team@sha256:" + "1" * 64}}


def function(source: dict[str, Any]) -> dict[str, Any]:
    return {"handler": "handler:main", "source": copy.deepcopy(source)}


def sandbox(source: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "s1"}, "spec": {"function": function(source)}}


def workload(source: dict[str, Any]) -> dict[str, Any]:
    template = {"metadata": {"labels": {"app": "a"}}, "spec": {"function": function(source)}}
    selector = {"matchLabels": {"app": "a"}}
    return {"metadata": {"name": "w"}, "spec": {"selector": selector, "template": template}}


def decide(resource: str, obj: Any, old: Any = None) -> adm.Verdict:
    operation = adm.UPDATE if old is not None else adm.CREATE
    request = adm.Request(operation, c.GROUP, resource, "team", "x", ALICE, obj=obj, old=old)
    return adm.decide(request, adm.Config(), adm.Answers())


@pytest.mark.parametrize(
    ("resource", "make", "field"),
    [
        (c.SANDBOX_PLURAL, sandbox, "spec.function.source.build"),
        (c.REPLICASET_PLURAL, workload, "spec.template.spec.function.source.build"),
    ],
)
def test_only_a_deployment_may_name_a_build(resource: str, make: Any, field: str) -> None:
    refused = decide(resource, make(BUILD))
    assert not refused.allowed
    assert refused.message == f"{field}: {NOT_BUILDER}"
    assert decide(resource, make(OCI)).allowed
    assert not decide(resource, make(BUILD), old=make(OCI)).allowed  # introduced by an update
    assert decide(resource, make(BUILD), old=make(BUILD)).allowed  # stored before the rule


def test_a_deployment_may_build() -> None:
    assert decide(c.DEPLOYMENT_PLURAL, workload(BUILD)).allowed
