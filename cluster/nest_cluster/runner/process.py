"""Container processes: start through the shim, signal them, exec into them, sweep leftovers.

Every container runs in its own session, hence its own process group whose id is the pid the
runner knows (the shim's monitor when the runner is root, see shim.py): a Ctrl-C in the terminal
that started the cluster never reaches it. Stopping a container sends SIGTERM to the monitor,
which forwards it to the program alone (PID 1 of its namespace, as runc signals a container's
init); SIGKILL goes to the whole group, and the container's cgroup and PID namespace take care of
what left the group. Whatever escapes still carries the NEST_LOCAL_NODE marker in its
environment, which is what `sweep` (used by `nest cluster down` and by a starting runner) finds.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from nest_cluster.runner.env import NODE_MARKER
from nest_cluster.runner.security import Reach, Security
from nest_cluster.runner.volumes import Mount

SHIM = Path(__file__).with_name("shim.py")


class StartError(Exception):
    """The program could not be started; `code` follows the shell (127 missing, 126 not exec)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Launch:
    """Everything needed to start one container instance."""

    argv: Sequence[str]
    env: Mapping[str, str]
    cwd: str | None
    mounts: Sequence[Mount]
    log: Path
    isolate: bool  # namespaces, cgroups and credentials; needs root
    security: Security = field(default_factory=Security)
    cgroup: Mapping[str, Any] | None = None  # ContainerCgroup.shim_spec()
    pid_ns: str | None = None  # the pod's PID namespace to join; None: a new one
    readonly: Sequence[str] = ()  # system mounts made read-only (non-privileged containers)
    reach: Sequence[Reach] = ()  # directories re-shown so that its user reaches the image


def _spawn(
    spec: Mapping[str, Any], env: Mapping[str, str], log: Path | None
) -> subprocess.Popen[bytes]:
    """Start the shim with `spec`; returns once it exec'd (or paused), or raises `StartError`."""
    spec_r, spec_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        with log.open("ab") if log else open(os.devnull, "wb") as out:
            popen = subprocess.Popen(
                [sys.executable, "-I", "-S", str(SHIM), str(spec_r), str(err_w)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env),
                start_new_session=True,
                pass_fds=(spec_r, err_w),
            )
    except OSError as err:
        for fd in (spec_r, spec_w, err_r, err_w):
            os.close(fd)
        raise StartError(128, f"starting the process shim: {err}") from err
    os.close(spec_r)
    os.close(err_w)
    with os.fdopen(spec_w, "w") as f:
        json.dump(spec, f)
    with os.fdopen(err_r, "rb") as f:
        report = f.read()
    if report:
        popen.wait()
        failure = json.loads(report)
        raise StartError(int(failure["code"]), str(failure["message"]))
    return popen


def start(launch: Launch) -> subprocess.Popen[bytes]:
    """Start the container; returns once its program runs, or raises `StartError`."""
    if not launch.isolate:
        if launch.mounts:
            targets = ", ".join(m.target for m in launch.mounts)
            raise StartError(128, f"volume mounts ({targets}) need a mount namespace, hence root")
        sec = launch.security
        if sec.uid or sec.gid or sec.groups or sec.read_only_root or sec.no_new_privs:
            raise StartError(128, "securityContext needs a runner running as root")
    spec = {
        "mode": "run",
        "argv": list(launch.argv),
        "env": dict(launch.env),
        "cwd": launch.cwd,
        "isolate": launch.isolate,
        "mounts": [asdict(m) for m in launch.mounts],
        "security": launch.security.to_spec(),
        "cgroup": launch.cgroup,
        "pid_ns": launch.pid_ns,
        "readonly": list(launch.readonly),
        "reach": [r.to_spec() for r in launch.reach],
    }
    return _spawn(spec, launch.env, launch.log)


def start_pause(env: Mapping[str, str], procs: Sequence[str]) -> subprocess.Popen[bytes]:
    """The holder of a pod's shared PID namespace (the pause container): returns once it is up."""
    return _spawn({"mode": "pause", "procs": list(procs)}, env, None)


def pid_namespace(pause_pid: int) -> str:
    """The PID namespace the pause process holds, for containers to join."""
    return f"/proc/{pause_pid}/ns/pid_for_children"


def exec_in(
    target: int,
    argv: Sequence[str],
    env: Mapping[str, str],
    security: Security,
    procs: Sequence[str],
    timeout: float,
) -> int:
    """Run `argv` inside the container whose monitor is `target`; its exit code (exec probes).

    Raises `StartError` if it could not be started and `subprocess.TimeoutExpired` (after killing
    it) if it outlived `timeout`.
    """
    spec = {
        "mode": "join", "target": target, "argv": list(argv), "env": dict(env),
        "security": security.to_spec(), "procs": list(procs),
    }  # fmt: skip
    popen = _spawn(spec, env, None)
    try:
        return popen.wait(timeout)
    except subprocess.TimeoutExpired:
        signal_group(popen.pid, signal.SIGKILL)
        popen.wait()
        raise


def terminate(pid: int, isolate: bool) -> None:
    """SIGTERM the container: its program only, through the monitor (isolated), else its group."""
    if not isolate:
        signal_group(pid, signal.SIGTERM)
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)


def signal_group(pid: int, sig: int) -> None:
    """Signal the container's whole process group; a group already gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def host_pid(container: int, pid: int) -> int | None:
    """The host's pid of the process that is `pid` inside the PID namespace of the container
    whose containerID is `container` (its monitor), or None if there is no such process.

    What a program reports as its pid (os.getpid()) is its namespace's; a test or tool on the
    host that wants to signal or watch it needs this translation, while the container runs.
    """
    try:
        with open(f"/proc/{container}/task/{container}/children") as f:
            init = int(f.read().split()[0])
        namespace = os.readlink(f"/proc/{init}/ns/pid")
    except (OSError, ValueError, IndexError):
        return None
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/pid") != namespace:
                continue
            with open(f"/proc/{entry}/status") as f:
                nspid = next(line for line in f if line.startswith("NSpid:")).split()
        except (OSError, StopIteration):
            continue
        if int(nspid[-1]) == pid:
            return int(entry)
    return None


def marked(environ: Mapping[str, str], node_dir: str) -> bool:
    return environ.get(NODE_MARKER) == node_dir


def sweep(node_dir: str, grace: float = 5.0) -> list[int]:
    """SIGTERM, then SIGKILL, every process started for the node rooted at `node_dir`."""
    victims = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and marked(proc.environ(), node_dir):
                victims.append(proc)
        except (psutil.Error, OSError):
            continue
    for proc in victims:
        _send(proc, signal.SIGTERM)
    _, alive = psutil.wait_procs(victims, timeout=grace)
    for proc in alive:
        _send(proc, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=2)
    return [p.pid for p in victims]


def _send(proc: psutil.Process, sig: int) -> None:
    with contextlib.suppress(psutil.Error):
        proc.send_signal(sig)
