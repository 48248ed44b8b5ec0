"""Detached, supervised-by-pidfile processes for the local control plane.

Each component runs in its own session (so a Ctrl-C in the terminal that ran `nest cluster up`
does not take the cluster down), logs to a file, and is found again through its pid file plus a
check of its command line, because pids are reused and a stale pid file must never make `down`
kill an unrelated process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from nest_cluster.errors import ClusterError


@dataclass(frozen=True)
class ProcessSpec:
    """How to start one component."""

    name: str
    argv: Sequence[str]
    env: dict[str, str] | None = None


class ProcessTable:
    """Starts, finds and stops the named processes of one state directory."""

    def __init__(self, run_dir: Path, log_dir: Path) -> None:
        self.run_dir = run_dir
        self.log_dir = log_dir

    def _pidfile(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def find(self, name: str) -> psutil.Process | None:
        """The live process recorded for `name`, or None (stale pid files do not count)."""
        try:
            pid_text, _, marker = self._pidfile(name).read_text().partition("\n")
            proc = psutil.Process(int(pid_text))
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            if marker and marker.strip() not in " ".join(proc.cmdline()):
                return None
        except (OSError, ValueError, psutil.Error):
            return None
        return proc

    def recorded(self, name: str) -> bool:
        """Whether a pid file names `name`: `stop` removes it, a crash leaves it behind."""
        return self._pidfile(name).exists()

    def start(self, spec: ProcessSpec) -> psutil.Process:
        running = self.find(spec.name)
        if running is not None:
            return running
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path(spec.name).open("ab") as log:
            popen = subprocess.Popen(
                list(spec.argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=spec.env,
                start_new_session=True,
                close_fds=True,
            )
        self._pidfile(spec.name).write_text(f"{popen.pid}\n{spec.argv[0]}\n")
        return psutil.Process(popen.pid)

    def stop(self, name: str, grace: float = 10.0) -> None:
        """SIGTERM the process and everything in its session, SIGKILL after `grace` seconds."""
        proc = self.find(name)
        # The pid file goes first: the supervisor restarts a process that died with its pid file
        # left, and this one is meant to die.
        self._pidfile(name).unlink(missing_ok=True)
        if proc is not None:
            group = _session_members(proc)
            for p in group:
                _signal(p, signal.SIGTERM)
            _, alive = psutil.wait_procs(group, timeout=grace)
            for p in alive:
                _signal(p, signal.SIGKILL)
            psutil.wait_procs(alive, timeout=5)


def _session_members(proc: psutil.Process) -> list[psutil.Process]:
    try:
        sid = os.getsid(proc.pid)
    except OSError:
        return [proc]
    members = [proc]
    for p in psutil.process_iter():
        try:
            if p.pid != proc.pid and os.getsid(p.pid) == sid:
                members.append(p)
        except (OSError, psutil.Error):
            continue
    return members


def _signal(proc: psutil.Process, sig: int) -> None:
    with contextlib.suppress(psutil.Error):
        proc.send_signal(sig)


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, alive: Callable[[], bool] | None = None
) -> None:
    """Poll `check` until it holds; fail early if the process behind it died."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while time.monotonic() < deadline:
        if check():
            return
        if alive is not None and not alive():
            raise ClusterError(f"{what}: the process exited")
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
    raise ClusterError(f"{what}: not ready after {timeout:.0f}s")
