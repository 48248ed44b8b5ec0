"""Dependency layers in namespace mode, on the real cluster (issue 11, item 1, isolation side).

Packages with real PyPI distributions are built and pushed to the cluster's registry, then run
as namespace-mode Sandboxes of one pool pod: two versions of one pure-Python package side by
side in one interpreter, each sandbox seeing its own; and a compiled one (MarkupSafe) that a
runtime loads once, so a second version fails there with DependencyConflict while the scheduler,
reading the pod's Lease, places it on another pod.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from crds import constants as c
from nest.package.build import Builder
from nest.package.push import hosting_from_cluster, push, repository_for
from nest.package.target import host_target
from nest_cluster.registry import RegistryHosting
from tests.integration.test_sidecar import bind, invoke, running, sandbox_where
from tests.kube import Kubectl, wait_for

pytestmark = pytest.mark.cluster

VERSIONED = """
import importlib.metadata
import {module}

def handler(event, context):
    return {{"module": {module}.__name__, "version": importlib.metadata.version("{dist}")}}
"""


@pytest.fixture
def hosting(api: client.ApiClient) -> RegistryHosting:
    found = hosting_from_cluster(client.CoreV1Api(api))
    if found is None:
        pytest.skip("the cluster announces no registry (kube-public/local-registry-hosting)")
    return found


def package(
    hosting: RegistryHosting, namespace: str, root: Path, requirement: str, module: str
) -> str:
    """Build and push a function importing `module` from `requirement`; its reference."""
    dist = requirement.split("==")[0]
    fn = root / requirement.replace("==", "-")
    fn.mkdir(parents=True)
    (fn / "main.py").write_text(VERSIONED.format(module=module, dist=dist))
    (fn / "requirements.txt").write_text(f"{requirement}\n")
    builder = Builder(root / "cache", lambda line: None)
    built = builder.build(fn, host_target())
    return push(built, hosting, repository_for(namespace), fn.name, lambda line: None)


def oci(ref: str) -> dict[str, Any]:
    return {"oci": {"ref": ref}}


@pytest.fixture
def pod(nest_pool: list[dict[str, Any]]) -> dict[str, Any]:
    return nest_pool[0]


def test_two_namespace_sandboxes_of_one_pod_each_see_their_own_version(
    kubectl: Kubectl, hosting: RegistryHosting, pod: dict[str, Any], tmp_path: Path
) -> None:
    old = package(hosting, kubectl.namespace, tmp_path, "six==1.16.0", "six")
    new = package(hosting, kubectl.namespace, tmp_path, "six==1.17.0", "six")
    bind(kubectl, "six-old", pod, oci(old), isolation="namespace")
    bind(kubectl, "six-new", pod, oci(new), isolation="namespace")
    first, second = running(kubectl, "six-old", 180), running(kubectl, "six-new", 180)
    assert first["status"]["podIP"] == second["status"]["podIP"]  # one pod, one interpreter
    status, got_old = invoke(first, {})
    assert status == 200 and got_old["version"] == "1.16.0"
    status, got_new = invoke(second, {})
    assert status == 200 and got_new["version"] == "1.17.0"
    # Each under its sandbox's own package, not the interpreter's shared `six`.
    assert got_old["module"] != got_new["module"]
    assert got_old["module"].endswith(".six") and got_new["module"].endswith(".six")


def lease_natives(kubectl: Kubectl, pod: dict[str, Any]) -> list[str]:
    lease = kubectl.json("get", "lease", pod["metadata"]["name"], "-n", "nest-system")
    raw = (lease["metadata"].get("annotations") or {}).get(c.NATIVE_DISTRIBUTIONS_ANNOTATION)
    listed: list[str] = json.loads(raw) if raw else []
    return listed


def test_a_native_conflict_is_refused_in_the_pod_and_placed_apart_by_the_scheduler(
    kubectl: Kubectl,
    kubeconfig: Path,
    hosting: RegistryHosting,
    nest_pool: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    # Natives stay loaded until a runtime restarts, so earlier runs may have left MarkupSafe in
    # the pods: take one holding at most 2.1.5, with another holding at most 3.0.2.
    def markupsafe_in(pod: dict[str, Any]) -> set[str]:
        return {
            n.split("==")[1] for n in lease_natives(kubectl, pod) if n.startswith("markupsafe==")
        }

    pod = next((p for p in reversed(nest_pool) if markupsafe_in(p) <= {"2.1.5"}), None)
    if pod is None or not [p for p in nest_pool if p is not pod and markupsafe_in(p) <= {"3.0.2"}]:
        pytest.skip("the pool's runtimes already hold other MarkupSafe versions: restart the pool")
    old = package(hosting, kubectl.namespace, tmp_path, "markupsafe==2.1.5", "markupsafe")
    new = package(hosting, kubectl.namespace, tmp_path, "markupsafe==3.0.2", "markupsafe")
    bind(kubectl, "ms-old", pod, oci(old), isolation="namespace")
    first = running(kubectl, "ms-old", 180)
    status, got = invoke(first, {})
    assert status == 200 and got == {"module": "markupsafe", "version": "2.1.5"}  # shared name
    # Bound to the same pod anyway (the test plays a scheduler that does not know): refused.
    bind(kubectl, "ms-new", pod, oci(new), isolation="namespace")
    refused = sandbox_where(
        kubectl, "ms-new", lambda s: s.get("phase") == "Failed", "phase Failed", 180
    )["status"]
    assert refused["reason"] == "DependencyConflict"
    assert "markupsafe==3.0.2" in refused["message"] and "markupsafe==2.1.5" in refused["message"]
    assert refused.get("restartCount", 0) == 0  # it would fail the same way in this pod
    # The pod's Lease says what its runtime loaded; the scheduler keeps the new one off it.
    wait_for(
        lambda: "markupsafe==2.1.5" in lease_natives(kubectl, pod) or None,
        timeout=60, what="the pod's Lease to list markupsafe==2.1.5",
    )  # fmt: skip
    # `nest deploy` records the package's natives on the template, so on its Sandboxes.
    fn = tmp_path / "markupsafe-3.0.2"
    env = {**os.environ, "NEST_KUBECONFIG": str(kubeconfig), "NEST_CACHE_DIR": str(tmp_path)}
    env.pop("NEST_REGISTRY", None)
    deployed = subprocess.run(
        [sys.executable, "-m", "nest", "deploy", str(fn), "--name", "ms-placed",
         "--isolation", "namespace", "--no-wait", "-n", kubectl.namespace],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert deployed.returncode == 0, deployed.stderr

    def placed_sandbox() -> dict[str, Any] | None:
        items = kubectl.json("get", "sbx", "-l", f"{c.FUNCTION_LABEL}=ms-placed")["items"]
        done = [s for s in items if (s.get("status") or {}).get("phase") == "Running"]
        return done[0] if done else None

    placed = wait_for(placed_sandbox, timeout=180, what="the deployed function Running")
    annotations = placed["metadata"].get("annotations") or {}
    assert json.loads(annotations[c.NATIVE_DISTRIBUTIONS_ANNOTATION]) == ["markupsafe==3.0.2"]
    assert placed["spec"]["podName"] != pod["metadata"]["name"]
    status, got = invoke(placed, {})
    assert status == 200 and got == {"module": "markupsafe", "version": "3.0.2"}
