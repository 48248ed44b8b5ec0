"""The generated CRDs on a real API server: install, list, validate, scale, garbage-collect."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from tests.kube import Kubectl, wait_for

API = "nest.sandbox.dev/v1alpha1"
FUNCTION: dict[str, Any] = {
    "handler": "main:handler",
    "source": {"inline": {"main.py": "def handler(event, context):\n    return event\n"}},
    "isolation": "namespace",
    "resources": {"memory": "32Mi", "cpu": "50m"},
}


def sandbox(name: str, **function_overrides: Any) -> dict[str, Any]:
    function = copy.deepcopy(FUNCTION)
    function.update(function_overrides)
    return {
        "apiVersion": API,
        "kind": "Sandbox",
        "metadata": {"name": name},
        "spec": {"function": function},
    }


def deployment(name: str, replicas: int = 1) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": API,
        "kind": "SandboxDeployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"function": FUNCTION}},
        },
    }


def test_all_four_kinds_are_served_by_short_name_and_category(
    nest_crds: list[str], kubectl: Kubectl
) -> None:
    assert sorted(nest_crds) == [
        "sandboxdeployments.nest.sandbox.dev",
        "sandboxendpoints.nest.sandbox.dev",
        "sandboxes.nest.sandbox.dev",
        "sandboxpools.nest.sandbox.dev",
        "sandboxreplicasets.nest.sandbox.dev",
    ]
    listed = kubectl.run("get", "sbx,sbxrs,sbxd,sbxep")
    assert "No resources found" in listed.stdout + listed.stderr
    kubectl.apply(yaml.safe_dump(sandbox("valid")))
    by_category = kubectl.run("get", "nest").stdout
    assert "sandbox.nest.sandbox.dev/valid" in by_category


def test_sandbox_printer_columns_tell_phase_and_pod(nest_crds: list[str], kubectl: Kubectl) -> None:
    kubectl.apply(yaml.safe_dump(sandbox("columns")))
    header = kubectl.run("get", "sbx", "columns").stdout.splitlines()[0].split()
    for column in ("NAME", "PHASE", "POD", "ISOLATION", "RESTARTS", "AGE"):
        assert column in header


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"isolation": "vm"}, "spec.function.isolation", "supported values"),
        ({"resources": {"memory": "lots"}}, "spec.function.resources.memory", "should match"),
        ({"handler": None}, "spec.function.handler", "Required value"),
        (
            {"source": {"inline": {"a.py": ""}, "path": "/srv/code"}},
            "spec.function.source",
            "one and only one",
        ),
    ],
    ids=["unknown-isolation", "bad-memory", "missing-handler", "two-sources"],
)
def test_invalid_sandboxes_are_rejected_naming_the_field(
    nest_crds: list[str], kubectl: Kubectl, overrides: dict[str, Any], field: str, words: str
) -> None:
    manifest = sandbox("invalid", **overrides)
    function = manifest["spec"]["function"]
    for key in [k for k, v in function.items() if v is None]:
        del function[key]
    # --validate=false: the API server's own schema check must reject it, not kubectl's.
    result = kubectl.run(
        "apply", "--validate=false", "-f", "-", input=yaml.safe_dump(manifest), check=False
    )
    assert result.returncode != 0
    assert field in result.stderr, result.stderr
    assert words in result.stderr, result.stderr
    assert kubectl.run("get", "sbx", "invalid", check=False).returncode != 0


def test_kubectl_scale_goes_through_the_scale_subresource(
    nest_crds: list[str], kubectl: Kubectl
) -> None:
    kubectl.apply(yaml.safe_dump(deployment("scaled", replicas=1)))
    kubectl.run("scale", "sbxd/scaled", "--replicas=3")
    assert kubectl.json("get", "sbxd", "scaled")["spec"]["replicas"] == 3
    kubectl.run("scale", "sbxd/scaled", "--replicas=0")
    assert kubectl.json("get", "sbxd", "scaled")["spec"]["replicas"] == 0


def test_deleting_an_owner_garbage_collects_its_sandboxes(
    nest_crds: list[str], kubectl: Kubectl
) -> None:
    rs = {
        "apiVersion": API,
        "kind": "SandboxReplicaSet",
        "metadata": {"name": "owner"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "owner"}},
            "template": {"metadata": {"labels": {"app": "owner"}}, "spec": {"function": FUNCTION}},
        },
    }
    kubectl.apply(yaml.safe_dump(rs))
    uid = kubectl.json("get", "sbxrs", "owner")["metadata"]["uid"]
    child = sandbox("owned")
    # It matches the owner's selector: a replica set controller releases owned objects that don't.
    child["metadata"]["labels"] = {"app": "owner"}
    child["metadata"]["ownerReferences"] = [
        {"apiVersion": API, "kind": "SandboxReplicaSet", "name": "owner", "uid": uid,
         "controller": True, "blockOwnerDeletion": True}
    ]  # fmt: skip
    kubectl.apply(yaml.safe_dump(child))
    kubectl.run("delete", "sbxrs", "owner", "--wait=false")
    wait_for(
        lambda: kubectl.run("get", "sbx", "owned", check=False).returncode != 0,
        timeout=60,
        what="the garbage collector to delete the owned Sandbox",
    )
