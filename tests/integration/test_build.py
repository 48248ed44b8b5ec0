"""In-cluster builds (`source.build`), end to end on the local cluster.

A function directory with a requirements.txt is pushed as a context artifact to the cluster's
registry; a SandboxDeployment names it; the operator runs its build Job (`nest-build` in the pool
image, on the local node), reads the package from the pod's termination message, records it in
status.build with condition Built, and only then rolls out a replica set running that package,
whose sandboxes answer through the gateway using the dependency. A requirement that does not
exist fails the build with a message naming it, a Warning Event and no replica set; a new
context rolls out a new replica set once its own build succeeded.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from crds import constants as c
from crds.validation import OCI_REF_PATTERN
from nest.package.push import hosting_from_cluster, repository_for
from tests.archives import tar_gz
from tests.integration.test_gateway import gateway_url, operator_active  # noqa: F401
from tests.kube import Kubectl, wait_for

# Pulling six from PyPI and building it: far below the operator's 900 s deadline.
BUILD_TIMEOUT = 300
HANDLER = (
    "import six\n\n"
    "def main(event, context):\n"
    "    return {'six': six.__version__, 'version': VERSION}\n"
)


@pytest.fixture(autouse=True)
def with_operator_and_gateway(operator_active: bool, gateway_url: str) -> None:  # noqa: F811
    if not operator_active:
        pytest.skip("needs the operator (deploy/operator/ or `nest operator run`)")
    if not (Path(sys.executable).parent / "nest-build").exists():
        pytest.skip("needs nest-build (nest/package/job.py) installed in the pool image's venv")


def push(api: client.ApiClient, namespace: str, files: dict[str, str]) -> str:
    from sandbox.context import push_context

    hosting = hosting_from_cluster(client.CoreV1Api(api))
    assert hosting is not None, "the local cluster announces its registry"
    data = tar_gz(files)
    return push_context(
        data, hosting.host, hosting.host_from_cluster_network, repository_for(namespace)
    )


def function_files(version: int, requirement: str = "six==1.16.0") -> dict[str, str]:
    return {"handler.py": f"VERSION = {version}\n{HANDLER}", "requirements.txt": requirement + "\n"}


def deployment(name: str, context: str) -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.DEPLOYMENT_KIND,
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "function": {
                        "handler": "handler:main",
                        "source": {"build": {"context": context}},
                        "resources": {"memory": "64Mi"},
                    }
                },
            },
        },
    }


class Cluster:
    """What the test reads of one namespace."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.namespace = namespace

    def get(self, plural: str, name: str) -> Any:
        return self.custom.get_namespaced_custom_object(
            c.GROUP, c.VERSION, self.namespace, plural, name
        )

    def deployment(self, name: str) -> Any:
        return self.get(c.DEPLOYMENT_PLURAL, name)

    def built(self, name: str) -> dict[str, Any] | None:
        conditions = (self.deployment(name).get("status") or {}).get("conditions") or []
        return next((x for x in conditions if x["type"] == "Built"), None)

    def replica_sets(self) -> list[Any]:
        return list(
            self.custom.list_namespaced_custom_object(
                c.GROUP, c.VERSION, self.namespace, c.REPLICASET_PLURAL
            )["items"]
        )

    def sandboxes_ready(self) -> list[Any]:
        items = self.custom.list_namespaced_custom_object(
            c.GROUP, c.VERSION, self.namespace, c.SANDBOX_PLURAL
        )["items"]
        ready = [
            s
            for s in items
            if any(
                x["type"] == "Ready" and x["status"] == "True"
                for x in (s.get("status") or {}).get("conditions") or []
            )
        ]
        return ready

    def events(self, name: str, reason: str) -> list[Any]:
        listed = self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name}"
        )
        return [e for e in listed.items if e.reason == reason]

    def jobs(self) -> list[str]:
        listed = self.batch.list_namespaced_job(self.namespace, label_selector=c.BUILD_LABEL)
        return sorted(j.metadata.name for j in listed.items if not j.metadata.deletion_timestamp)


def invoke(kubeconfig: Path, namespace: str, name: str) -> Any:
    env = {**os.environ, "NEST_KUBECONFIG": str(kubeconfig)}
    env.pop("NEST_GATEWAY", None)
    proc = subprocess.run(
        [sys.executable, "-m", "nest", "-v", "invoke", name, "{}", "-n", namespace],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr}{proc.stdout}"
    assert "through the gateway" in proc.stderr
    return json.loads(proc.stdout)


def first_built_state(cluster: Cluster, name: str) -> tuple[dict[str, Any], list[Any]]:
    """The first Built condition seen, with the replica sets listed just before it was read
    (so they are what existed while the deployment was in that state)."""

    def seen() -> tuple[dict[str, Any], list[Any]] | None:
        sets = cluster.replica_sets()
        built = cluster.built(name)
        return (built, sets) if built is not None else None

    return wait_for(seen, timeout=60, what=f"{name}'s Built condition")


def test_a_context_is_built_then_rolled_out_and_a_new_context_rolls_out_anew(
    api: client.ApiClient, kubectl: Kubectl, kubeconfig: Path
) -> None:
    cluster = Cluster(api, kubectl.namespace)
    context = push(api, kubectl.namespace, function_files(1))
    kubectl.apply(json.dumps(deployment("six-built", context)))

    built, sets = first_built_state(cluster, "six-built")
    assert (built["status"], built["reason"]) == ("Unknown", "Building"), built
    assert sets == []  # nothing rolls out while the build runs
    wait_for(lambda: cluster.events("six-built", "BuildStarted"), what="a BuildStarted Event")

    def succeeded() -> Any:
        built = cluster.built("six-built")
        assert built is None or built["status"] != "False", built["message"]
        return built if built is not None and built["status"] == "True" else None

    wait_for(succeeded, timeout=BUILD_TIMEOUT, what="the build to succeed")
    status = cluster.deployment("six-built")["status"]
    ref = status["build"]["ref"]
    assert re.match(OCI_REF_PATTERN, ref) and status["build"]["context"] == context
    assert cluster.events("six-built", "BuildSucceeded")
    [rs] = wait_for(cluster.replica_sets, what="the replica set of the built package")
    assert rs["spec"]["template"]["spec"]["function"]["source"] == {"oci": {"ref": ref}}
    wait_for(cluster.sandboxes_ready, timeout=120, what="a Ready sandbox of the package")
    assert invoke(kubeconfig, kubectl.namespace, "six-built") == {"six": "1.16.0", "version": 1}

    # A new context: a new build, then a new replica set; the old build's Job goes.
    second = push(api, kubectl.namespace, function_files(2))
    patch = {
        "spec": {"template": {"spec": {"function": {"source": {"build": {"context": second}}}}}}
    }
    kubectl.run("patch", "sbxd", "six-built", "--type=merge", "-p", json.dumps(patch))

    def rebuilt() -> str | None:
        b = (cluster.deployment("six-built").get("status") or {}).get("build") or {}
        return b.get("ref") if b.get("context") == second and b.get("ref") else None

    new_ref = wait_for(rebuilt, timeout=BUILD_TIMEOUT, what="the new context's build")
    assert len(cluster.jobs()) == 1  # the current build's Job only

    def rolled_out() -> bool:
        refs = {
            r["spec"]["template"]["spec"]["function"]["source"]["oci"]["ref"]
            for r in cluster.replica_sets()
        }
        return (
            new_ref in refs and invoke(kubeconfig, kubectl.namespace, "six-built")["version"] == 2
        )

    wait_for(rolled_out, timeout=180, interval=1.0, what="the new package to answer")


def test_a_requirement_that_does_not_exist_fails_the_build_and_rolls_out_nothing(
    api: client.ApiClient, kubectl: Kubectl
) -> None:
    cluster = Cluster(api, kubectl.namespace)
    files = function_files(1, requirement="nest-no-such-package-xyz==1.0")
    context = push(api, kubectl.namespace, files)
    kubectl.apply(json.dumps(deployment("no-such", context)))

    def failed() -> Any:
        built = cluster.built("no-such")
        return built if built is not None and built["status"] == "False" else None

    built = wait_for(failed, timeout=BUILD_TIMEOUT, what="the build to fail")
    assert built["reason"] == "BuildFailed"
    assert "nest-no-such-package-xyz" in built["message"]
    status = cluster.deployment("no-such")["status"]
    assert "nest-no-such-package-xyz" in status["build"]["message"]
    assert "ref" not in status["build"]
    progressing = next(x for x in status["conditions"] if x["type"] == "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("False", "BuildFailed")
    [event] = wait_for(lambda: cluster.events("no-such", "BuildFailed"), what="the Warning Event")
    assert event.type == "Warning" and "nest-no-such-package-xyz" in event.message
    assert cluster.replica_sets() == []


def test_only_a_deployment_may_name_a_build(kubectl: Kubectl) -> None:
    context = "127.0.0.1:5000/nest/x@sha256:" + "0" * 64
    function = {"handler": "handler:main", "source": {"build": {"context": context}}}
    sandbox = {
        "apiVersion": c.API_VERSION,
        "kind": c.SANDBOX_KIND,
        "metadata": {"name": "unbuilt"},
        "spec": {"function": function},
    }
    proc = kubectl.run("apply", "-f", "-", input=json.dumps(sandbox), check=False)
    assert proc.returncode != 0
    assert "spec.function.source.build: only a SandboxDeployment builds" in proc.stderr
    rs = deployment("unbuilt", context) | {"kind": c.REPLICASET_KIND}
    proc = kubectl.run("apply", "-f", "-", input=json.dumps(rs), check=False)
    assert proc.returncode != 0
    assert "spec.template.spec.function.source.build: only a SandboxDeployment" in proc.stderr
