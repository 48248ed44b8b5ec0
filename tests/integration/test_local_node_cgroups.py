"""A cgroup per container on the local node: limits from resources, delegated to the container.

What the sandbox runtime relies on: a container finds its own cgroup at /sys/fs/cgroup/<controller>
(v1), writable, and creates per-sandbox child cgroups there; its own limits it cannot raise. The
runner removes the cgroup, children included, when the container ends.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from nest_cluster.control_plane import NODE_NAME, ControlPlane
from nest_cluster.runner import cgroups
from tests.integration.test_local_node import _create, _logs, _phase, _status
from tests.kube import wait_for

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("NEST_KUBECONFIG")), reason="needs the local node of `nest cluster up`"
)


@pytest.fixture(scope="module")
def support() -> cgroups.Support:
    found = cgroups.discover()
    if found.version != 1:
        pytest.skip(f"these tests read cgroup v1 files; this machine: {found.problem or 'v2'}")
    return found


def _host_dir(pod: dict[str, Any], support: cgroups.Support) -> Path:
    node_dir = str((ControlPlane().paths.state / "node").resolve())
    key = cgroups.node_key(NODE_NAME, node_dir)
    return Path(support.dirs["memory"], cgroups.pod_path(key, pod["metadata"]["uid"]))


# Runs in /sys/fs/cgroup; "echo 0" moves the writer itself (and `$$` would be Kubernetes-expanded).
DELEGATION = """
set -e
cd /sys/fs/cgroup
cat memory/memory.limit_in_bytes cpu/cpu.shares cpu/cpu.cfs_quota_us
(echo 9999999999 > memory/memory.limit_in_bytes) 2>/dev/null && echo raised || echo kept
for c in memory pids cpu; do mkdir $c/sandbox; done
echo 33554432 > memory/sandbox/memory.limit_in_bytes
echo 16 > pids/sandbox/pids.max
for c in memory pids cpu; do echo 0 > $c/sandbox/cgroup.procs; done
grep -E ':(memory|pids):' /proc/self/cgroup | cut -d: -f3 | sort -u
cat memory/sandbox/memory.limit_in_bytes
"""


@pytest.mark.parametrize("user", [0, 1000], ids=["root-without-capabilities", "non-root"])
def test_the_container_owns_its_cgroup_and_makes_children_in_it(
    api: client.ApiClient, namespace: str, support: cgroups.Support, user: int
) -> None:
    container = {
        "name": "main", "image": "x", "command": ["sh", "-c", DELEGATION],
        "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}, "requests": {"cpu": "250m"}},
        # What a sandbox runtime runs with: no capabilities at all, not even DAC_OVERRIDE.
        "securityContext": {"runAsUser": user, "capabilities": {"drop": ["ALL"]},
                            "allowPrivilegeEscalation": False},
    }  # fmt: skip
    name = f"delegated-{user}"
    _create(api, namespace, name, {"restartPolicy": "Never", "containers": [container]})
    pod = _phase(api, namespace, name, "Succeeded")
    assert _logs(namespace, name).split() == [
        "67108864",  # limits.memory
        "256",  # cpu.shares from requests.cpu
        "50000",  # the CFS quota from limits.cpu, per 100 ms period
        "kept",  # its own limit is read-only to it
        "/sandbox",  # a cgroup namespace: the container's cgroup is its root
        "33554432",
    ]
    # The container's cgroup, and the child it made, are gone with it.
    container_dir = _host_dir(pod, support) / "main-0"
    wait_for(lambda: not container_dir.exists(), what=f"{container_dir} removed")


def test_the_memory_limit_is_enforced_by_the_kernel(
    api: client.ApiClient, namespace: str, support: cgroups.Support
) -> None:
    hog = "x = bytearray(256 * 1024 * 1024); print('survived')"
    container = {"name": "main", "image": "x", "command": ["/usr/bin/python3", "-c", hog],
                 "resources": {"limits": {"memory": "64Mi"}}}  # fmt: skip
    _create(api, namespace, "hog", {"restartPolicy": "Never", "containers": [container]})
    pod = _phase(api, namespace, "hog", "Failed")
    terminated = _status(pod, "main")["state"]["terminated"]
    assert (terminated["reason"], terminated["exitCode"]) == ("OOMKilled", 137)
    assert "survived" not in _logs(namespace, "hog")


def test_the_pod_cgroup_goes_with_the_pod(
    api: client.ApiClient, namespace: str, support: cgroups.Support
) -> None:
    container = {"name": "main", "image": "x", "command": ["sleep", "600"]}
    _create(api, namespace, "brief", {"terminationGracePeriodSeconds": 1,
                                      "containers": [container]})  # fmt: skip
    pod = _phase(api, namespace, "brief", "Running")
    pod_dir = _host_dir(pod, support)
    assert (pod_dir / "main-0" / "cgroup.procs").read_text().split()  # the container is in it
    client.CoreV1Api(api).delete_namespaced_pod("brief", namespace)
    wait_for(lambda: not pod_dir.exists(), timeout=60, what=f"{pod_dir} removed")
