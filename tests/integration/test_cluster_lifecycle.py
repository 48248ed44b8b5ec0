"""`nest cluster up | status | env | down` on a second, private cluster.

A separate state directory gives a second control plane on other free ports, so bringing it down
does not disturb the cluster the rest of the suite uses. The build cache is shared.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from nest_cluster.control_plane import ControlPlane
from nest_cluster.paths import ClusterPaths

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("NEST_KUBECONFIG")), reason="uses the local control plane"
)


def _processes_of(state: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            text = " ".join(proc.cmdline())
            env = proc.environ()
        except psutil.Error:
            continue
        if str(state) in text or any(str(state) in v for v in env.values()):
            found.append(proc)
    return found


@pytest.fixture
def private_plane(tmp_path: Path) -> Iterator[ControlPlane]:
    plane = ControlPlane(ClusterPaths(cache=ClusterPaths.default().cache, state=tmp_path / "c"))
    yield plane
    plane.down(purge=True)


def _nest(plane: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NEST_STATE_DIR": str(plane.paths.state)}
    return subprocess.run(
        [sys.executable, "-m", "nest", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_up_is_idempotent_env_works_and_down_leaves_nothing(private_plane: ControlPlane) -> None:
    up = _nest(private_plane, "cluster", "up")
    assert up.returncode == 0, up.stderr
    apiserver = private_plane.procs.find("kube-apiserver")
    assert apiserver is not None

    env = _nest(private_plane, "cluster", "env", "--path")
    kubeconfig = env.stdout.strip()
    assert kubeconfig == str(private_plane.paths.kubeconfig)
    ns = subprocess.run(
        [private_plane.kubectl_path(), f"--kubeconfig={kubeconfig}", "get", "ns"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ns.returncode == 0, ns.stderr
    assert "kube-system" in ns.stdout

    # The registry is announced as kind and minikube announce theirs (KEP-1755).
    registry = private_plane.registry_address()
    assert registry is not None and registry.startswith("127.0.0.1:")
    announced = subprocess.run(
        [private_plane.kubectl_path(), f"--kubeconfig={kubeconfig}", "get", "configmap",
         "-n", "kube-public", "local-registry-hosting", "-o", "jsonpath={.data}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert f"host: {registry}" in announced.stdout, announced.stdout + announced.stderr

    # A cluster that lost only its registry (or predates it) gets just the registry back.
    private_plane.procs.stop("registry")
    again = _nest(private_plane, "cluster", "up")
    assert again.returncode == 0, again.stderr
    same = private_plane.procs.find("kube-apiserver")
    assert same is not None and same.pid == apiserver.pid
    assert private_plane.procs.find("registry") is not None
    assert private_plane.registry_address() == registry

    status = _nest(private_plane, "cluster", "status")
    assert status.returncode == 0, status.stdout + status.stderr
    for component in (
        "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "registry",
    ):  # fmt: skip
        assert component in status.stdout
    assert registry in status.stdout

    down = _nest(private_plane, "cluster", "down")
    assert down.returncode == 0, down.stderr
    assert _processes_of(private_plane.paths.state) == []
    after = _nest(private_plane, "cluster", "status")
    assert after.returncode == 1
    assert "not running" in after.stdout
