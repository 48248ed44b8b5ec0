"""`source.build`: a context to build in-cluster, the sixth code source; `status.build`."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from crds import CodeSource
from crds.sandbox import CODE_SOURCES, native_distributions_value
from crds.workloads import DeploymentConditionType, SandboxDeploymentStatus

CONTEXT = "127.0.0.1:5000/nest/team-a@sha256:" + "0" * 64


def test_a_build_source_alone_is_valid() -> None:
    source = {"build": {"context": CONTEXT, "pullSecret": "regcred"}}
    assert CodeSource.model_validate(source).to_k8s() == source
    assert CODE_SOURCES[-1] == "build"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"build": {"context": CONTEXT}, "oci": {"ref": CONTEXT}}, "exactly one code source"),
        ({"build": {"context": "127.0.0.1:5000/nest/team-a:latest"}}, "context"),
        ({"build": {}}, "context"),
        ({"build": {"context": CONTEXT, "pullSecret": ""}}, "pullSecret"),
        ({"build": {"context": CONTEXT, "dir": "."}}, "dir"),
    ],
)
def test_bad_build_sources(source: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        CodeSource.model_validate(source)


def test_status_build_and_the_built_condition() -> None:
    status = {
        "build": {"context": CONTEXT, "ref": CONTEXT, "natives": ["numpy==1.26.4"], "job": "j"},
        "conditions": [{"type": "Built", "status": "True", "reason": "Succeeded",
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    }  # fmt: skip
    parsed = SandboxDeploymentStatus.model_validate(status)
    assert parsed.build is not None and parsed.build.natives == ["numpy==1.26.4"]
    assert parsed.conditions[0].type == DeploymentConditionType.BUILT == "Built"
    assert SandboxDeploymentStatus().build is None


def test_natives_are_written_sorted_with_pep_503_names() -> None:
    value = native_distributions_value(["Pillow==10.0.0", "ruamel.yaml.clib==0.2.8", "a_b==1"])
    assert json.loads(value) == ["a-b==1", "pillow==10.0.0", "ruamel-yaml-clib==0.2.8"]
    assert native_distributions_value([]) == "[]"
