"""The local control plane's supervisor: restarts a component that died, with back-off.

On a real node the kubelet restarts the static pods of etcd and kube-apiserver; here nothing did,
so one kill (or one OOM) left the cluster down until somebody ran `nest cluster up`. `up` starts
this small process, detached like the components (`python -m nest_cluster.supervisor`): every
half second it looks at each component's pid file and process, lets `nest_cluster.supervision`
decide, and starts what is due through the same ProcessTable and specs `up` uses, on the recorded
ports. Components stay in their own sessions, so a dead or stopped supervisor never takes one
down; `up` starts it again if it is missing.

It starts anything only while holding the state directory's lifecycle lock, taken without
waiting: while `up`, `down` or a node restart holds it, the supervisor only watches, so it never
races them. It exits when no component has a pid file (the cluster was stopped, by any version of
`down`) and on SIGTERM, which `down` sends before it stops anything. At most one runs per state
directory (an exclusive lock on run/supervisor.lock, held for its life).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

from nest_cluster import supervision
from nest_cluster.control_plane import COMPONENTS, SUPERVISOR_MODULE, ControlPlane
from nest_cluster.paths import ClusterPaths
from nest_cluster.supervision import Backoff, Seen, Track

log = logging.getLogger("nest_cluster.supervisor")
INTERVAL = 0.5  # how often it looks: a death is noticed within this


def _reap() -> dict[int, int]:
    """Exit codes of the children it started that have exited (zombies otherwise), by pid."""
    done: dict[int, int] = {}
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return done
        if pid == 0:
            return done
        done[pid] = os.waitstatus_to_exitcode(status)


def _seen(plane: ControlPlane, name: str) -> Seen:
    proc = plane.procs.find(name)
    if proc is None:
        return Seen(wanted=plane.procs.recorded(name))
    try:
        started = proc.create_time()
    except psutil.Error:
        started = None
    return Seen(wanted=True, pid=proc.pid, started=started)


class Supervisor:
    """The loop; one instance per process."""

    def __init__(self, plane: ControlPlane, policy: Backoff, interval: float) -> None:
        self.plane = plane
        self.policy = policy
        self.interval = interval
        self.stop = threading.Event()
        path = plane.supervision_path
        self.tracks = supervision.loads(path.read_text()) if path.exists() else {}
        self.exits: dict[int, int] = {}  # reaped, not yet matched to a component's death

    def run(self) -> None:
        written = ""
        while not self.stop.is_set():
            seen = {name: _seen(self.plane, name) for name in COMPONENTS}
            # After looking: a child dead by then is still a zombie, so its code is here now;
            # one that dies after the look keeps its code in self.exits for the next tick.
            self.exits.update(_reap())
            if supervision.cluster_stopped(seen):
                log.info("no component is meant to run any more: exiting")
                return
            now = time.time()
            before = self.tracks
            self.tracks, due = supervision.step(
                self.tracks, seen, COMPONENTS, now, self.exits, self.policy
            )
            live = {t.pid for t in self.tracks.values()}
            self.exits = {pid: code for pid, code in self.exits.items() if pid in live}
            for name, track in self.tracks.items():
                if track.died is not None and before.get(name, Track()).died is None:
                    log.warning("%s %s; restarting in %.0fs", name, track.last_exit,
                                (track.restart_at or now) - now)  # fmt: skip
            if due:
                self._restart(due)
            text = supervision.dumps(self.tracks)
            if text != written:
                _write(self.plane.supervision_path, text)
                written = text
            self.stop.wait(self.interval)

    def _restart(self, due: list[str]) -> None:
        with self.plane.try_locked() as locked:
            if not locked:  # up, down or a node restart is at work: it decides
                return
            for name in due:
                # Re-read under the lock: whoever held it may have started or stopped it.
                if self.plane.procs.find(name) is not None or not self.plane.procs.recorded(name):
                    continue
                now = time.time()
                # Two runners would run every pod twice; other components fail on their port.
                if name == "node" and (strays := self.plane.runner_pids()):
                    log.warning("node: runner(s) %s serve the node: not starting one", strays)
                    self.tracks[name] = supervision.crashed(
                        self.tracks[name], now, 0.0, f"runner(s) {strays} left", self.policy
                    )
                    continue
                try:
                    proc = self.plane.procs.start(self.plane.component_spec(name))
                except Exception as exc:  # a bad binary, a full disk: back off and try again
                    log.exception("%s: cannot start", name)
                    self.tracks[name] = supervision.crashed(
                        self.tracks[name], now, 0.0, f"cannot start: {exc}", self.policy
                    )
                    continue
                self.tracks[name] = supervision.restarted(self.tracks[name], proc.pid, now)
                log.info("%s restarted: pid %d (restart %d)", name, proc.pid,
                         self.tracks[name].restarts)  # fmt: skip


def _write(path: Path, text: str) -> None:
    """Atomically: `nest cluster status` may read it at any moment."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {SUPERVISOR_MODULE}")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--interval", type=float, default=INTERVAL)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    plane = ControlPlane(ClusterPaths(cache=args.cache_dir, state=args.state_dir))
    plane.paths.run.mkdir(parents=True, exist_ok=True)
    with open(plane.paths.run / "supervisor.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another supervisor runs for %s: exiting", args.state_dir)
            return 0
        supervisor = Supervisor(plane, Backoff(), args.interval)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: supervisor.stop.set())
        with contextlib.suppress(KeyboardInterrupt):
            supervisor.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
