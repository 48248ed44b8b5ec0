"""Tenancy on the real API server: SandboxPools decide which pods are nodes and who shares them.

Each test brings its own SandboxPool and pool pods (a copy of deploy/pool's Deployment in
nest-system, under a pool name of its own), so that other tests' sandboxes on the shared
`default` pool never take part in the question. Tenants are namespaces: the test's own and
extra ones it creates and deletes.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.kube import Kubectl, wait_for

ROOT = Path(__file__).resolve().parents[2]
API = "nest.sandbox.dev/v1alpha1"
POOL_LABEL = "nest.sandbox.dev/pool"
HANDLER = "def handler(event, context):\n    return {'ns': context.function_name}\n"


def pool_manifest(name: str, tenancy: str = "Shared", namespace: str = "nest-system") -> str:
    return yaml.safe_dump({
        "apiVersion": API, "kind": "SandboxPool", "metadata": {"name": name},
        "spec": {"podNamespace": namespace,
                 "podSelector": {"matchLabels": {"app.kubernetes.io/name": name}},
                 "tenancy": tenancy},
    })  # fmt: skip


def pool_pods_manifest(name: str, replicas: int, namespace: str = "nest-system") -> str:
    """deploy/pool's Deployment as pods of pool `name` (labels and selector renamed)."""
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "pool" / "deployment.yaml").read_text()))
    deployment = docs[0]
    labels = {"app.kubernetes.io/name": name, POOL_LABEL: name}
    deployment["metadata"].update(name=name, namespace=namespace, labels=labels)
    deployment["spec"]["replicas"] = replicas
    deployment["spec"]["selector"]["matchLabels"] = {"app.kubernetes.io/name": name}
    deployment["spec"]["template"]["metadata"]["labels"] = labels
    return yaml.safe_dump(deployment)


def sandbox_deployment(name: str, pool: str, replicas: int, isolation: str) -> str:
    labels = {"app": name}
    function = {"handler": "main:handler", "isolation": isolation,
                "resources": {"memory": "32Mi", "cpu": "50m"},
                "source": {"inline": {"main.py": HANDLER}}}  # fmt: skip
    return yaml.safe_dump({
        "apiVersion": API, "kind": "SandboxDeployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"pool": pool, "function": function}}},
    })  # fmt: skip


def sandboxes(kubectl: Kubectl, namespace: str, app: str) -> list[dict[str, Any]]:
    items = kubectl.json("get", "sbx", "-n", namespace, "-l", f"app={app}")["items"]
    return [s for s in items if not s["metadata"].get("deletionTimestamp")]


def bound(kubectl: Kubectl, namespace: str, app: str, count: int) -> list[dict[str, Any]]:
    """Wait until exactly `count` sandboxes of `app` exist and every one is bound to a pod.

    Placement is what tenancy decides; whether the code then runs is the sidecar's business
    (tests/integration/test_sidecar.py), so these tests do not wait for it.
    """

    def probe() -> list[dict[str, Any]] | None:
        current = sandboxes(kubectl, namespace, app)
        done = len(current) == count and all(s["spec"].get("podName") for s in current)
        return current if done else None

    return wait_for(probe, timeout=90, what=f"{count} bound sandboxes of {namespace}/{app}")


def events(kubectl: Kubectl, namespace: str, reason: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = kubectl.json(
        "get", "events", "-n", namespace, f"--field-selector=reason={reason}"
    )["items"]
    return found


def pending_naming(kubectl: Kubectl, namespace: str, app: str, count: int, words: str) -> None:
    """Wait until `count` sandboxes of `app` are unbound, each with a FailedScheduling event
    whose message contains `words`."""

    def probe() -> bool:
        current = sandboxes(kubectl, namespace, app)
        unbound = {s["metadata"]["name"] for s in current if not s["spec"].get("podName")}
        told = {
            e["involvedObject"]["name"]
            for e in events(kubectl, namespace, "FailedScheduling")
            if words in e["message"]
        }
        return len(current) == count and len(unbound) == count and unbound <= told

    wait_for(probe, timeout=60, what=f"{count} sandboxes of {app} Pending, naming {words!r}")


def tenants_by_pod(kubectl: Kubectl, namespaces: list[str]) -> dict[str, set[str]]:
    """Pool pod name -> the namespaces whose sandboxes are bound to it."""
    placed: dict[str, set[str]] = {}
    for namespace in namespaces:
        for s in kubectl.json("get", "sbx", "-n", namespace)["items"]:
            if s["spec"].get("podName"):
                placed.setdefault(s["spec"]["podName"], set()).add(namespace)
    return placed


@pytest.fixture
def make_pool(kubectl: Kubectl, nest_pool: list[Any]) -> Iterator[Callable[..., str]]:
    """make_pool(suffix, pods, tenancy): a SandboxPool with its own Ready pool pods."""
    made: list[str] = []

    def make(suffix: str, pods: int, tenancy: str = "Shared") -> str:
        name = f"{kubectl.namespace}-{suffix}"
        made.append(name)
        kubectl.apply(pool_manifest(name, tenancy))
        kubectl.run("apply", "-n", "nest-system", "-f", "-", input=pool_pods_manifest(name, pods))

        def ready() -> bool:
            status = kubectl.json("get", "sbxpool", name).get("status") or {}
            return status.get("pods") == pods and status.get("readyPods") == pods

        wait_for(ready, timeout=120, what=f"SandboxPool {name}: {pods} Ready pods")
        return name

    yield make
    for name in made:
        kubectl.run("delete", "deployment", name, "-n", "nest-system", "--wait=false")
        kubectl.run("delete", "sbxpool", name, "--wait=false", check=False)


@pytest.fixture
def tenant(api: client.ApiClient) -> Iterator[Callable[[], str]]:
    """tenant(): one more namespace, deleted after the test."""
    core = client.CoreV1Api(api)
    made: list[str] = []

    def make() -> str:
        name = f"t-{uuid.uuid4().hex[:8]}"
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        made.append(name)
        return name

    yield make
    for name in made:
        core.delete_namespace(name, propagation_policy="Background")


def test_namespace_mode_tenants_never_share_a_pod(
    kubectl: Kubectl, make_pool: Callable[..., str], tenant: Callable[[], str]
) -> None:
    pool = make_pool("shared", pods=2)
    a, b = kubectl.namespace, tenant()
    kubectl.apply(sandbox_deployment("fn", pool, 4, "namespace"))
    placed = bound(kubectl, a, "fn", 4)
    # The question is forced: A's replicas are spread over both pods, so B has nowhere to go.
    assert len({s["spec"]["podName"] for s in placed}) == 2
    kubectl.run("apply", "-n", b, "-f", "-", input=sandbox_deployment("fn", pool, 2, "namespace"))
    pending_naming(kubectl, b, "fn", 2, "TenantIsolation: holds another namespace's")
    out = kubectl.run("describe", "sbx", "-n", b).stdout
    assert "0/" in out and "TenantIsolation" in out
    # A shrinks to one pod's worth: the other pod frees up, and B takes it whole.
    kubectl.run("scale", "sbxd/fn", "--replicas=1")
    bound(kubectl, a, "fn", 1)
    bound(kubectl, b, "fn", 2)
    by_pod = tenants_by_pod(kubectl, [a, b])
    assert sorted(by_pod.values(), key=sorted) == sorted([{a}, {b}], key=sorted), by_pod
    # A subprocess sandbox of B cannot join A's interpreter either: it lands on B's pod.
    b_pod = next(pod for pod, spaces in by_pod.items() if spaces == {b})
    kubectl.run("apply", "-n", b, "-f", "-", input=sandbox_deployment("sub", pool, 1, "subprocess"))
    (sub,) = bound(kubectl, b, "sub", 1)
    assert sub["spec"]["podName"] == b_pod


def rogue_lease(name: str, pool: str) -> str:
    """A pool pod's heartbeat as a sidecar writes it (nest_sidecar/lease.py), renewed now."""
    capacity = {"memory_bytes": 2 * 1024**3, "cpu_millis": 2000, "max_sandboxes": 200,
                "isolation": ["subprocess", "namespace"]}  # fmt: skip
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return yaml.safe_dump({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "labels": {POOL_LABEL: pool},
                     "annotations": {"nest.sandbox.dev/capacity": json.dumps(capacity)}},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now},
    })  # fmt: skip


def test_a_labelled_pod_outside_the_pool_s_namespace_is_ignored_with_one_event(
    kubectl: Kubectl, make_pool: Callable[..., str]
) -> None:
    pool = make_pool("member", pods=1)
    ns = kubectl.namespace
    # What made a node before SandboxPools, as any tenant can create it in its own namespace:
    # a Ready pod with the pool label (and the pool pods' own labels) plus a fresh Lease.
    rogue = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "rogue",
                     "labels": {POOL_LABEL: pool, "app.kubernetes.io/name": pool}},
        "spec": {"containers": [{"name": "c", "image": "nest:latest",
                                 "command": ["sleep", "3600"]}]},
    }  # fmt: skip
    kubectl.apply(yaml.safe_dump(rogue))
    kubectl.apply(rogue_lease("rogue", pool))

    def rogue_ready() -> bool:
        conditions = (kubectl.json("get", "pod", "rogue").get("status") or {}).get("conditions")
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions or [])

    wait_for(rogue_ready, timeout=60, what="the rogue pod Ready")

    def warnings() -> list[dict[str, Any]]:
        return [e for e in events(kubectl, ns, "NotInPool")
                if e["involvedObject"]["name"] == "rogue"]  # fmt: skip

    (warning,) = wait_for(warnings, what="a NotInPool Event on the rogue pod")
    assert warning["type"] == "Warning" and warning["involvedObject"]["kind"] == "Pod"
    why = f"namespace {ns} is not SandboxPool {pool}'s podNamespace nest-system"
    assert why in warning["message"]
    # More events about the pod (an edit) while the sandboxes below are scheduled: still one.
    kubectl.run("annotate", "pod", "rogue", "nest.test/touched=1")
    kubectl.apply(rogue_lease("rogue", pool))  # fresh again: only membership keeps it out
    kubectl.apply(sandbox_deployment("fn", pool, 3, "subprocess"))
    placed = bound(kubectl, ns, "fn", 3)
    # Old rules would have spread these over both "nodes"; only the member takes them.
    assert {s["spec"]["podNamespace"] for s in placed} == {"nest-system"}
    status = kubectl.json("get", "sbxpool", pool)["status"]
    assert (status["pods"], status["readyPods"]) == (1, 1)
    assert len(warnings()) == 1


def test_a_dedicated_pool_keeps_namespaces_apart_for_subprocess_sandboxes(
    kubectl: Kubectl, make_pool: Callable[..., str], tenant: Callable[[], str]
) -> None:
    pool = make_pool("dedicated", pods=2, tenancy="Dedicated")
    a, b, c = kubectl.namespace, tenant(), tenant()
    kubectl.apply(sandbox_deployment("fn", pool, 1, "subprocess"))
    (first,) = bound(kubectl, a, "fn", 1)
    kubectl.run("apply", "-n", b, "-f", "-", input=sandbox_deployment("fn", pool, 1, "subprocess"))
    (second,) = bound(kubectl, b, "fn", 1)
    assert first["spec"]["podName"] != second["spec"]["podName"]
    kubectl.run("apply", "-n", c, "-f", "-", input=sandbox_deployment("fn", pool, 1, "subprocess"))
    pending_naming(kubectl, c, "fn", 1, "TenantIsolation: dedicated to another namespace")
    # A grows on its own pod; B's pod stays B's alone.
    kubectl.run("scale", "sbxd/fn", "--replicas=3")
    assert {s["spec"]["podName"] for s in bound(kubectl, a, "fn", 3)} == {first["spec"]["podName"]}
    # A leaves: its pod is free, and C gets it.
    kubectl.run("delete", "sbxd", "fn")
    (third,) = bound(kubectl, c, "fn", 1)
    assert third["spec"]["podName"] == first["spec"]["podName"]
    by_pod = tenants_by_pod(kubectl, [a, b, c])
    assert all(len(spaces) == 1 for spaces in by_pod.values()), by_pod
