"""The supervisor process's loop on stand-in components (`sleep`), without a cluster: a killed
component comes back under the same name, its restarts and exit are recorded, a component
stopped on purpose stays stopped, and the supervisor leaves once nothing is meant to run."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from nest_cluster.control_plane import COMPONENTS, ControlPlane
from nest_cluster.paths import ClusterPaths
from nest_cluster.procs import ProcessSpec
from nest_cluster.supervision import Backoff, Track
from nest_cluster.supervisor import Supervisor
from tests.kube import wait_for

FAST = Backoff(initial=0.05, cap=0.2, reset_after=60.0)


class StandIns(ControlPlane):
    """A control plane whose every component is a `sleep`."""

    def component_spec(self, name: str) -> ProcessSpec:
        return ProcessSpec(name, ["sleep", "300"])


def _supervise(state: Path) -> None:
    plane = StandIns(ClusterPaths(cache=state.parent / "cache", state=state))
    Supervisor(plane, FAST, interval=0.02).run()


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[StandIns]:
    plane = StandIns(ClusterPaths(cache=tmp_path / "cache", state=tmp_path / "state"))
    for name in COMPONENTS:
        plane.procs.start(plane.component_spec(name))
    yield plane
    for name in COMPONENTS:
        plane.procs.stop(name, grace=1.0)


@pytest.fixture
def supervisor(plane: StandIns) -> Iterator[multiprocessing.process.BaseProcess]:
    # Its own process, as in a cluster: it reaps its children with waitpid(-1).
    proc = multiprocessing.get_context("fork").Process(target=_supervise, args=(plane.paths.state,))
    proc.start()
    yield proc
    proc.terminate()
    proc.join(10)


def _track(plane: ControlPlane, name: str) -> Track | None:
    return plane._supervision().get(name)


def _replaced(plane: ControlPlane, name: str, old: int) -> psutil.Process | None:
    proc = plane.procs.find(name)
    return proc if proc is not None and proc.pid != old else None


def test_a_killed_component_is_restarted_and_counted(
    plane: StandIns, supervisor: multiprocessing.process.BaseProcess
) -> None:
    first = plane.procs.find("kube-apiserver")
    assert first is not None
    wait_for(lambda: _track(plane, "kube-apiserver"), what="the supervisor's first record")
    first.kill()
    second = wait_for(lambda: _replaced(plane, "kube-apiserver", first.pid), what="a restart")
    track = wait_for(lambda: _track(plane, "kube-apiserver"), what="its record")
    wait_for(lambda: (_track(plane, "kube-apiserver") or Track()).restarts == 1, what="restarts=1")
    assert track.last_exit == "died"  # started by the test, not its child: no exit code

    second.kill()  # its own child now: the exit is known
    third = wait_for(lambda: _replaced(plane, "kube-apiserver", second.pid), what="a 2nd restart")
    done = wait_for(
        lambda: (t := _track(plane, "kube-apiserver")) and t.restarts == 2 and t, what="restarts=2"
    )
    assert done.last_exit == "killed by SIGKILL" and done.pid == third.pid

    # Stopped on purpose (no pid file): never brought back. The restart of the API server below
    # proves the supervisor looked again since; etcd's back-off would have been the shorter.
    plane.procs.stop("etcd", grace=1.0)
    third.kill()
    wait_for(lambda: _replaced(plane, "kube-apiserver", third.pid), what="a 3rd restart")
    assert plane.procs.find("etcd") is None
    assert (_track(plane, "etcd") or Track()).restarts == 0


def test_the_supervisor_leaves_when_the_cluster_is_stopped(
    plane: StandIns, supervisor: multiprocessing.process.BaseProcess
) -> None:
    wait_for(lambda: _track(plane, "node"), what="the supervisor at work")
    for name in COMPONENTS:
        plane.procs.stop(name, grace=1.0)
    supervisor.join(10)
    assert supervisor.exitcode == 0
    assert all(plane.procs.find(name) is None for name in COMPONENTS)
