"""Container processes: start through the mount shim, signal their process group, sweep leftovers.

Every container runs in its own session, hence its own process group whose id is the container's
pid: a Ctrl-C in the terminal that started the cluster never reaches it, and stopping a container
signals everything it spawned that stayed in its group. Whatever escapes the group still carries
the NEST_LOCAL_NODE marker in its environment, which is what `sweep` (used by `nest cluster down`
and by a starting runner) looks for.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from nest.cluster.runner.env import NODE_MARKER
from nest.cluster.runner.volumes import Mount

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
    isolate: bool  # private mount namespace; needs root


def start(launch: Launch) -> subprocess.Popen[bytes]:
    """Start the container; returns once its program runs, or raises `StartError`."""
    if launch.mounts and not launch.isolate:
        targets = ", ".join(m.target for m in launch.mounts)
        raise StartError(128, f"volume mounts ({targets}) need a mount namespace, hence root")
    spec_r, spec_w = os.pipe()
    err_r, err_w = os.pipe()
    spec = {
        "argv": list(launch.argv),
        "env": dict(launch.env),
        "cwd": launch.cwd,
        "isolate": launch.isolate,
        "mounts": [asdict(m) for m in launch.mounts],
    }
    try:
        with launch.log.open("ab") as log:
            popen = subprocess.Popen(
                [sys.executable, "-I", "-S", str(SHIM), str(spec_r), str(err_w)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(launch.env),
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


def signal_group(pid: int, sig: int) -> None:
    """Signal the container's whole process group; a group already gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


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
