"""Pod lifecycle on the real control plane: a pool pod whose sidecar stops renewing its Lease is
evicted once the Lease expires, while one whose Lease is renewed keeps its sandboxes.

Why stand-in pool pods: stopping a real sidecar would evict the shared pool's sandboxes under
every other test. These pods are never run (a scheduler nobody serves) but are pool pods to the
operator (a SandboxPool of this test selects them); the test writes their Leases, as a sidecar
does. The rules around outages (a grace after reconnecting, no mass eviction, the rate) are
unit-tested (tests/unit/operator/test_lifecycle_*.py): this checks that eviction still happens.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from tests.kube import Kubectl, wait_for

API = "nest.sandbox.dev/v1alpha1"
POOL_LABEL = "nest.sandbox.dev/pool"
DURATION = 10  # seconds: the stand-ins' Leases, short to keep the test short


def micro_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def epoch(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


@pytest.fixture
def pool(kubectl: Kubectl, nest_deployed: Any) -> Iterator[str]:
    """A SandboxPool of this test's namespace: its pods labelled app=stand-in are nodes."""
    name = f"lifecycle-{kubectl.namespace}"
    kubectl.apply(yaml.safe_dump({
        "apiVersion": API, "kind": "SandboxPool", "metadata": {"name": name},
        "spec": {"podNamespace": kubectl.namespace,
                 "podSelector": {"matchLabels": {"app": "stand-in"}},
                 "isolation": ["subprocess"], "namespaceSelector": {}, "tenancy": "Shared"},
    }))  # fmt: skip
    yield name
    kubectl.run("delete", "sandboxpool", name, "--wait=false", check=False)


def stand_in(kubectl: Kubectl, pool: str, name: str) -> dict[str, Any]:
    """A pool pod that never runs, with a Lease renewed now, and one sandbox bound to it."""
    kubectl.apply(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {POOL_LABEL: pool, "app": "stand-in"}},
        "spec": {"schedulerName": "nobody-serves-this", "containers": [
            {"name": "c", "image": "never-pulled", "command": ["true"]}]},
    }))  # fmt: skip
    pod: dict[str, Any] = kubectl.json("get", "pod", name)
    renew(kubectl, pool, pod)
    uid = pod["metadata"]["uid"]
    kubectl.apply(yaml.safe_dump({
        "apiVersion": API, "kind": "Sandbox",
        "metadata": {"name": f"{name}-sbx", "finalizers": ["nest.sandbox.dev/sidecar"],
                     "labels": {POOL_LABEL: pool, "nest.sandbox.dev/pod-uid": uid}},
        "spec": {"pool": pool, "podName": name, "podNamespace": kubectl.namespace,
                 "function": {"handler": "main:handler",
                              "source": {"inline": {"main.py": "def handler(e, c): return 1"}}}},
    }))  # fmt: skip
    return pod


def renew(kubectl: Kubectl, pool: str, pod: dict[str, Any]) -> None:
    """What a sidecar writes: the pod's Lease, owned by the pod, renewed now."""
    meta = pod["metadata"]
    kubectl.apply(yaml.safe_dump({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": meta["name"], "labels": {POOL_LABEL: pool},
                     "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                                          "uid": meta["uid"]}]},
        "spec": {"holderIdentity": meta["name"], "leaseDurationSeconds": DURATION,
                 "renewTime": micro_now()},
    }))  # fmt: skip


def status(kubectl: Kubectl, name: str) -> dict[str, Any]:
    found: dict[str, Any] = kubectl.json("get", "sbx", name).get("status") or {}
    return found


def test_a_pool_pod_whose_lease_expires_is_evicted_and_a_renewing_one_is_not(
    kubectl: Kubectl, pool: str
) -> None:
    stand_in(kubectl, pool, "stops-renewing")
    alive = stand_in(kubectl, pool, "keeps-renewing")
    renewed_at = epoch(kubectl.json("get", "lease", "stops-renewing")["spec"]["renewTime"])
    stop = threading.Event()

    def heartbeat() -> None:  # the live sidecar's loop, every 2 s (a period, not a wait)
        while not stop.wait(2.0):
            renew(kubectl, pool, alive)

    def evicted_status() -> dict[str, Any] | None:
        found = status(kubectl, "stops-renewing-sbx")
        return found if found.get("reason") == "Evicted" else None

    beating = threading.Thread(target=heartbeat, daemon=True)
    beating.start()
    try:
        evicted = wait_for(
            evicted_status,
            timeout=180,  # the Lease's 10 s, and the operator's grace if it just (re)started
            what="the sandbox of the pod that stopped renewing to be evicted",
        )
        assert "Lease expired" in evicted["message"], evicted
        ready = next(c for c in evicted["conditions"] if c["type"] == "Ready")
        # Not before the Lease expired (the condition's time has whole seconds).
        assert epoch(ready["lastTransitionTime"]) >= int(renewed_at) + DURATION
        assert status(kubectl, "keeps-renewing-sbx").get("reason") != "Evicted"
    finally:
        stop.set()
        beating.join(timeout=30)

    def evicted_event() -> bool:
        events = kubectl.json("get", "events", "--field-selector=reason=Evicted")["items"]
        return any(e["involvedObject"]["name"] == "stops-renewing-sbx" for e in events)

    wait_for(evicted_event, timeout=30, what="the Evicted Event")
