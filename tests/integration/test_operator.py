"""The operator end to end, driven by kubectl against the real control plane and deploy/.

Everything runs as a user would have it: `kubectl apply -k deploy/` (CRDs, operator, pool),
examples applied with kubectl, sandboxes invoked at the addresses SandboxEndpoints publishes.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nest_kube.leader import holder_pod
from tests.dataplane import signed_headers
from tests.kube import Kubectl, wait_for

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "deployments" / "hello-inline.yaml"


def example(replicas: int | None = None, name: str = "hello") -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    manifest["metadata"]["name"] = name
    if replicas is not None:
        manifest["spec"]["replicas"] = replicas
    return manifest


def settled(kubectl: Kubectl, name: str, replicas: int, timeout: float = 90) -> dict[str, Any]:
    """Wait until the deployment has exactly `replicas` updated, available sandboxes."""

    def probe() -> dict[str, Any] | None:
        d: dict[str, Any] = kubectl.json("get", "sbxd", name)
        s = d.get("status") or {}
        done = (
            s.get("observedGeneration") == d["metadata"]["generation"]
            and s.get("replicas", 0) == replicas
            and s.get("updatedReplicas", 0) == replicas
            and s.get("availableReplicas", 0) == replicas
        )
        return d if done else None

    return wait_for(probe, timeout=timeout, what=f"sbxd/{name} settled at {replicas}")


def sandboxes(kubectl: Kubectl, app: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kubectl.json("get", "sbx", "-l", f"app={app}")["items"]
    return [s for s in items if not s["metadata"].get("deletionTimestamp")]


def endpoints(kubectl: Kubectl, name: str) -> list[dict[str, Any]]:
    status = kubectl.json("get", "sbxep", name).get("status") or {}
    ready: list[dict[str, Any]] = status.get("ready") or []
    return ready


def invoke(address: dict[str, Any], event: Any) -> tuple[int, Any]:
    url = f"http://{address['podIP']}:{address['port']}/v1/sandboxes/{address['uid']}/invoke"
    body = json.dumps(event).encode()
    request = urllib.request.Request(url, data=body, headers=signed_headers(url, body))
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.fixture(autouse=True)
def default_pool_to_ourselves(kubectl: Kubectl) -> None:
    """Wait until no other namespace's sandboxes are on the shared `default` pool.

    These tests run namespace-mode functions there, and TenantIsolation lets those share a pod
    only with their own namespace; an earlier test's namespace is deleted in the background, so
    its sandboxes may still be leaving the pool pods when the next test starts.
    """

    def others() -> list[str]:
        items = kubectl.json("get", "sbx", "-A", "-l", "nest.sandbox.dev/pool=default")["items"]
        return [f"{s['metadata']['namespace']}/{s['metadata']['name']}" for s in items
                if s["metadata"]["namespace"] != kubectl.namespace]  # fmt: skip

    wait_for(lambda: not others(), timeout=120, what="other tenants' sandboxes to leave the pool")


def test_apply_five_scale_to_twenty_then_zero(kubectl: Kubectl, nest_pool: list[Any]) -> None:
    kubectl.apply(yaml.safe_dump(example()))
    settled(kubectl, "hello", 5)
    placed = sandboxes(kubectl, "hello")
    assert len(placed) == 5
    # ReplicaSpread outweighs MostAllocated: one replica set spans at least two pool pods.
    assert len({s["spec"]["podName"] for s in placed}) >= 2
    ready = wait_for(lambda: len(e := endpoints(kubectl, "hello")) == 5 and e, what="5 endpoints")
    for address in ready:
        code, body = invoke(address, {"name": "nest"})
        assert code == 200 and body["hello"] == "nest", body
    kubectl.run("scale", "sbxd/hello", "--replicas=20")
    settled(kubectl, "hello", 20)
    assert len(sandboxes(kubectl, "hello")) == 20
    kubectl.run("scale", "sbxd/hello", "--replicas=0")
    settled(kubectl, "hello", 0)
    wait_for(lambda: sandboxes(kubectl, "hello") == [], what="every sandbox gone at 0 replicas")
    header = kubectl.run("get", "sbxd", "hello").stdout.splitlines()[0].split()
    assert header[:5] == ["NAME", "DESIRED", "READY", "UP-TO-DATE", "AVAILABLE"]


class RequestLoop:
    """Invokes a function continuously through its endpoints, as a client would.

    A request that never ran (connection refused, the sandbox already gone: 404/503 before the
    handler) is retried on another address, as the gateway does; anything else is a failure.
    """

    def __init__(self, kubectl: Kubectl, name: str) -> None:
        self.kubectl, self.name = kubectl, name
        self.answers: list[int] = []
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            for address in endpoints(self.kubectl, self.name) or []:
                try:
                    code, body = invoke(address, {"name": "loop"})
                except (urllib.error.URLError, ConnectionError):
                    continue
                if code in (404, 503):
                    continue
                if code == 200:
                    self.answers.append(body["version"])
                else:
                    self.failures.append(f"{code}: {body}")
                break

    def __enter__(self) -> RequestLoop:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def _with_version(manifest: dict[str, Any], version: int) -> dict[str, Any]:
    changed = copy.deepcopy(manifest)
    source = changed["spec"]["template"]["spec"]["function"]["source"]["inline"]
    source["main.py"] = source["main.py"].replace('"version": 1', f'"version": {version}')
    return changed


def test_rolling_update_without_failed_invocations_then_rollback(
    kubectl: Kubectl, nest_pool: list[Any]
) -> None:
    v1 = example(replicas=4)
    kubectl.apply(yaml.safe_dump(v1))
    settled(kubectl, "hello", 4)
    with RequestLoop(kubectl, "hello") as loop:
        wait_for(lambda: len(loop.answers) > 5, what="the request loop to get answers")
        kubectl.apply(yaml.safe_dump(_with_version(v1, 2)))
        settled(kubectl, "hello", 4)
        wait_for(lambda: loop.answers[-1] == 2, what="answers from version 2")
        count = len(loop.answers)
        wait_for(lambda: len(loop.answers) > count + 5, what="more answers after the rollout")
    assert loop.failures == []
    assert set(loop.answers) == {1, 2}
    revisions = kubectl.json("get", "sbxrs", "-l", "app=hello")["items"]
    assert len(revisions) == 2
    # Roll back: the previous revision's template (less its hash label) becomes the spec again.
    old = min(
        revisions, key=lambda rs: int(rs["metadata"]["annotations"]["nest.sandbox.dev/revision"])
    )
    template = copy.deepcopy(old["spec"]["template"])
    template["metadata"]["labels"].pop("nest.sandbox.dev/template-hash")
    kubectl.run(
        "patch", "sbxd", "hello", "--type=merge", "-p", json.dumps({"spec": {"template": template}})
    )
    settled(kubectl, "hello", 4)
    ready = wait_for(
        lambda: (e := endpoints(kubectl, "hello")) and all(a["revision"] == 3 for a in e) and e,
        what="every endpoint at revision 3",
    )
    assert invoke(ready[0], {})[1]["version"] == 1


def test_deleting_a_pool_pod_reschedules_its_sandboxes(
    kubectl: Kubectl, nest_pool: list[Any]
) -> None:
    kubectl.apply(yaml.safe_dump(example(replicas=6)))
    settled(kubectl, "hello", 6)
    victim = sandboxes(kubectl, "hello")[0]["spec"]["podName"]
    on_victim = {
        s["metadata"]["name"] for s in sandboxes(kubectl, "hello") if s["spec"]["podName"] == victim
    }
    started = time.monotonic()
    kubectl.run("delete", "pod", victim, "-n", "nest-system", "--wait=false")

    def rescheduled() -> bool:
        current = sandboxes(kubectl, "hello")
        running = [s for s in current if (s.get("status") or {}).get("phase") == "Running"]
        return (
            len(current) == 6
            and len(running) == 6
            and all(s["spec"]["podName"] != victim for s in current)
        )

    wait_for(rescheduled, timeout=90, what=f"the sandboxes of {victim} running elsewhere")
    elapsed = time.monotonic() - started
    names = {s["metadata"]["name"] for s in sandboxes(kubectl, "hello")}
    assert not (names & on_victim), "evicted sandboxes must be replaced, not moved"
    print(f"\nrescheduled {len(on_victim)} sandboxes from a deleted pool pod in {elapsed:.2f}s")
    kubectl.run("get", "events", "--field-selector=reason=Evicted")


@pytest.fixture
def small_pool(kubectl: Kubectl, nest_pool: list[Any]) -> Iterator[str]:
    """A pool of its own (SandboxPool `small-<ns>`, one pod of 256Mi), deleted after the test."""
    name = f"small-{kubectl.namespace}"
    sandbox_pool = {
        "apiVersion": "nest.sandbox.dev/v1alpha1", "kind": "SandboxPool",
        "metadata": {"name": name},
        "spec": {"podNamespace": "nest-system",
                 "podSelector": {"matchLabels": {"app.kubernetes.io/name": name}}},
    }  # fmt: skip
    kubectl.apply(yaml.safe_dump(sandbox_pool))
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "pool" / "deployment.yaml").read_text()))
    pool = docs[0]
    pool["metadata"]["name"] = name
    pool["spec"]["replicas"] = 1
    labels = {"app.kubernetes.io/name": name, "nest.sandbox.dev/pool": name}
    pool["metadata"]["labels"] = labels
    pool["spec"]["selector"]["matchLabels"] = {"app.kubernetes.io/name": name}
    pool["spec"]["template"]["metadata"]["labels"] = labels
    runtime = pool["spec"]["template"]["spec"]["containers"][0]
    runtime["resources"]["limits"]["memory"] = "256Mi"
    kubectl.run("apply", "-n", "nest-system", "-f", "-", input=yaml.safe_dump(pool))
    yield name
    kubectl.run("delete", "deployment", name, "-n", "nest-system", "--wait=false")
    kubectl.run("delete", "sbxpool", name, "--wait=false")


def test_no_capacity_means_pending_with_a_reason_until_a_pool_pod_is_added(
    kubectl: Kubectl, small_pool: str
) -> None:
    manifest = example(replicas=3, name="big")
    manifest["spec"]["selector"]["matchLabels"] = {"app": "big"}
    manifest["spec"]["template"]["metadata"]["labels"] = {"app": "big"}
    spec = manifest["spec"]["template"]["spec"]
    spec["pool"] = small_pool
    spec["function"]["resources"] = {"memory": "100Mi", "cpu": "50m"}
    kubectl.apply(yaml.safe_dump(manifest))

    def two_running_one_pending() -> list[dict[str, Any]] | None:
        current = sandboxes(kubectl, "big")
        phases = sorted((s.get("status") or {}).get("phase", "Pending") for s in current)
        return current if phases == ["Pending", "Running", "Running"] else None

    current = wait_for(two_running_one_pending, timeout=90, what="2 Running and 1 Pending")
    pending = next(s for s in current if not s["spec"].get("podName"))["metadata"]["name"]
    events = wait_for(
        lambda: (
            "FailedScheduling" in (out := kubectl.run("describe", "sbx", pending).stdout) and out
        ),
        what="a FailedScheduling event",
    )
    assert "0/" in events and "insufficient memory" in events
    # The reason is in its status too, as a pod's PodScheduled=False (kubectl get shows it).
    status = kubectl.json("get", "sbx", pending)["status"]
    assert (status["phase"], status["reason"]) == ("Pending", "Unschedulable")
    assert "insufficient memory" in status["message"]
    [scheduled] = [cond for cond in status["conditions"] if cond["type"] == "Scheduled"]
    assert (scheduled["status"], scheduled["reason"]) == ("False", "Unschedulable")
    kubectl.run("scale", "deployment", small_pool, "-n", "nest-system", "--replicas=2")
    settled(kubectl, "big", 3)
    assert len({s["spec"]["podName"] for s in sandboxes(kubectl, "big")}) == 2


def _operator_pid(kubectl: Kubectl) -> tuple[str, int]:
    """The leading replica (the election Lease's holder) and its container's pid."""
    lease = kubectl.json("get", "lease", "nest-operator", "-n", "nest-system")
    leader = holder_pod(lease["spec"].get("holderIdentity") or "")
    pods = kubectl.json(
        "get", "pods", "-n", "nest-system", "-l", "app.kubernetes.io/name=nest-operator"
    )
    pod = next(
        p
        for p in pods["items"]
        if p["metadata"]["name"] == leader and not p["metadata"].get("deletionTimestamp")
    )
    status = pod["status"]["containerStatuses"][0]
    return pod["metadata"]["name"], int(status["containerID"].removeprefix("nest://"))


def test_killing_the_operator_mid_rollout_converges_without_duplicates(
    kubectl: Kubectl, nest_pool: list[Any]
) -> None:
    v1 = example(replicas=10)
    kubectl.apply(yaml.safe_dump(v1))
    settled(kubectl, "hello", 10)
    pod, pid = _operator_pid(kubectl)
    kubectl.apply(yaml.safe_dump(_with_version(v1, 2)))
    wait_for(
        lambda: len(kubectl.json("get", "sbxrs", "-l", "app=hello")["items"]) == 2,
        what="the rollout to start (a second replica set)",
    )
    os.kill(pid, signal.SIGKILL)
    # The other replica takes the Lease (test_operator_ha.py bounds how fast) and converges.
    wait_for(lambda: _operator_pid(kubectl)[1] != pid, timeout=60, what="a new leader")
    final = settled(kubectl, "hello", 10, timeout=120)
    current = sandboxes(kubectl, "hello")
    assert len(current) == 10, [s["metadata"]["name"] for s in current]
    new_hash = max(
        kubectl.json("get", "sbxrs", "-l", "app=hello")["items"],
        key=lambda rs: int(rs["metadata"]["annotations"]["nest.sandbox.dev/revision"]),
    )["metadata"]["labels"]["nest.sandbox.dev/template-hash"]
    assert {s["metadata"]["labels"]["nest.sandbox.dev/template-hash"] for s in current} == {
        new_hash
    }
    assert final["status"]["updatedReplicas"] == 10
    ready = wait_for(lambda: len(e := endpoints(kubectl, "hello")) == 10 and e, what="10 endpoints")
    assert all(invoke(a, {})[1]["version"] == 2 for a in ready)
    assert pod
