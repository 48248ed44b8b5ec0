"""`nest deploy DIR --build-in-cluster`: what gets deployed, and how the wait reads the build."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from crds.constants import NATIVE_DISTRIBUTIONS_ANNOTATION
from nest import functions
from nest.deploy_cmd import with_package
from nest.package.incluster import build_readiness, with_build

CONTEXT = "127.0.0.1:5000/nest/ns@sha256:" + "c" * 64
OLD = "127.0.0.1:5000/nest/ns@sha256:" + "0" * 64
PACKAGE = "127.0.0.1:5000/nest/ns@sha256:" + "1" * 64


def _deployment() -> dict[str, Any]:
    stand_in = functions.Code({"main.py": ""}, "api", "main:handler")
    request = functions.function_request(stand_in, functions.DeployOptions(replicas=2))
    return functions.manifest("ns", request)


def test_the_deployment_names_the_context_and_no_stale_natives() -> None:
    local = with_package(_deployment(), PACKAGE, None, ["numpy==2.0"])  # an earlier local build
    assert NATIVE_DISTRIBUTIONS_ANNOTATION in local["spec"]["template"]["metadata"]["annotations"]
    deployment = with_build(local, CONTEXT, "regcred")
    template = deployment["spec"]["template"]
    assert template["spec"]["function"]["source"] == {
        "build": {"context": CONTEXT, "pullSecret": "regcred"}
    }
    assert NATIVE_DISTRIBUTIONS_ANNOTATION not in template["metadata"].get("annotations", {})
    assert deployment["spec"]["replicas"] == 2
    with pytest.raises(ValidationError):
        with_build(local, "127.0.0.1:5000/nest/ns:latest", None)


def _with_status(conditions: list[dict[str, str]], build: dict[str, str]) -> dict[str, Any]:
    deployment = with_build(_deployment(), CONTEXT, None)
    deployment["metadata"]["name"] = "api"
    deployment["status"] = {"conditions": conditions, "build": build}
    return deployment


def _built(status: str, reason: str, message: str) -> dict[str, str]:
    return {"type": "Built", "status": status, "reason": reason, "message": message}


def test_the_wait_follows_the_built_condition_of_this_context() -> None:
    assert build_readiness(with_package(_deployment(), PACKAGE, None)) is None  # no build

    waiting = build_readiness(_with_status([], {}))
    assert waiting is not None and "waiting for the build to start" in waiting.progress

    stale = build_readiness(_with_status([_built("True", "Succeeded", "")], {"context": OLD}))
    assert stale is not None and not stale.ready and stale.failure is None

    building = build_readiness(
        _with_status([_built("Unknown", "Building", "pip")], {"context": CONTEXT, "job": "j1"})
    )
    assert building is not None and building.progress == "api: building (job j1): pip"

    failed = build_readiness(
        _with_status(
            [_built("False", "BuildFailed", "foo: no wheel for foo==1.0 fits cp311")],
            {"context": CONTEXT},
        )
    )
    assert failed is not None and failed.failure is not None
    assert failed.failure.endswith("foo: no wheel for foo==1.0 fits cp311")

    done = _with_status([_built("True", "Succeeded", PACKAGE)], {"context": CONTEXT})
    assert build_readiness(done) is None  # the rollout decides from here
