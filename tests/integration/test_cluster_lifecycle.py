"""`nest cluster up | status | env | down` on a second, private cluster, the ports it keeps, and
its supervisor: kill -9 of kube-apiserver or of etcd, and it is back on the same port.

A separate state directory gives a second control plane on other free ports, so bringing it down
does not disturb the cluster the rest of the suite uses. The build cache is shared.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from nest_cluster.control_plane import ControlPlane
from nest_cluster.paths import ClusterPaths
from tests.kube import wait_for

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


@pytest.fixture(scope="module")
def private_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """One private cluster for the module (starting one costs most of these tests' time); each
    test begins with `up`, so each also runs alone."""
    state = tmp_path_factory.mktemp("private") / "c"
    plane = ControlPlane(ClusterPaths(cache=ClusterPaths.default().cache, state=state))
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


def _kill(plane: ControlPlane, name: str) -> int:
    proc = plane.procs.find(name)
    assert proc is not None, name
    proc.kill()
    proc.wait(10)
    return proc.pid


def test_up_keeps_the_ports_of_a_cluster_whose_state_exists(private_plane: ControlPlane) -> None:
    """The API server alone died (etcd still holds its ports): `up` restarts it on the recorded
    ports, keeps the kubeconfig, and refuses - naming the holder - a port something else took."""
    assert _nest(private_plane, "cluster", "up").returncode == 0
    config = private_plane.paths.config.read_text()
    kubeconfig = private_plane.paths.kubeconfig.read_bytes()
    etcd = private_plane.procs.find("etcd")
    assert etcd is not None and private_plane.procs.find("supervisor") is not None

    # Without the supervisor, so that `up` is the one to act.
    private_plane.procs.stop("supervisor")
    _kill(private_plane, "kube-apiserver")
    again = _nest(private_plane, "cluster", "up")
    assert again.returncode == 0, again.stderr
    assert private_plane.paths.config.read_text() == config
    assert private_plane.paths.kubeconfig.read_bytes() == kubeconfig
    same = private_plane.procs.find("etcd")
    assert same is not None and same.pid == etcd.pid
    assert private_plane.procs.find("supervisor") is not None  # `up` started it again

    private_plane.procs.stop("supervisor")
    _kill(private_plane, "kube-apiserver")
    port = json.loads(config)["ports"]["apiserver"]
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        refused = _nest(private_plane, "cluster", "up")
    assert refused.returncode != 0
    assert f"port {port} (apiserver)" in refused.stderr and f"pid {os.getpid()}" in refused.stderr
    assert private_plane.paths.config.read_text() == config  # nothing re-picked

    # A full stop and start keeps them too: ports are state, like the certificates.
    assert _nest(private_plane, "cluster", "down").returncode == 0
    assert _processes_of(private_plane.paths.state) == []
    back = _nest(private_plane, "cluster", "up")
    assert back.returncode == 0, back.stderr
    assert private_plane.paths.config.read_text() == config
    assert private_plane.paths.kubeconfig.read_bytes() == kubeconfig
    ns = subprocess.run(
        [private_plane.kubectl_path(), f"--kubeconfig={private_plane.paths.kubeconfig}", "get",
         "ns", "kube-system"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ns.returncode == 0, ns.stderr


def _answers(plane: ControlPlane) -> bool:
    """The API server is ready (etcd included) through the unchanged admin kubeconfig."""
    done = subprocess.run(
        [plane.kubectl_path(), f"--kubeconfig={plane.paths.kubeconfig}", "get", "--raw",
         "/readyz"],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    return done.returncode == 0 and done.stdout.strip() == "ok"


@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_the_supervisor_brings_a_killed_component_back_on_its_port(
    private_plane: ControlPlane, component: str
) -> None:
    plane = private_plane
    assert _nest(plane, "cluster", "up").returncode == 0
    wait_for(lambda: plane.procs.find("supervisor"), 10, "the supervisor (`up` starts it)")
    config, kubeconfig = plane.paths.config.read_text(), plane.paths.kubeconfig.read_bytes()
    rows = {row.name: row for row in plane.status()}
    before, pid = rows[component].restarts, rows[component].pid
    assert pid is not None, rows[component]
    os.kill(pid, signal.SIGKILL)

    def replaced() -> int | None:
        proc = plane.procs.find(component)
        return proc.pid if proc is not None and proc.pid != pid else None

    wait_for(replaced, 30, f"{component} restarted by the supervisor")
    wait_for(lambda: _answers(plane), 90, "the API server answering again")
    # Same ports, same kubeconfig: nothing was rewritten; the restart is counted.
    assert plane.paths.config.read_text() == config
    assert plane.paths.kubeconfig.read_bytes() == kubeconfig
    assert {row.name: row for row in plane.status()}[component].restarts >= before + 1
