"""The observed state of one container, as an explicit state machine, plus the restart rules.

Everything the pod status reports about a container derives from a `ContainerRecord`; keeping the
allowed moves in one table means an impossible sequence (say, a restart while the old process is
still running) fails loudly in the runner's log instead of silently leaking a process.

`recover` rebuilds a record from the status a previous runner instance reported, so that a runner
restart shows up as a restart of the container (restartCount + 1, last state `Killed`).
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from nest_cluster.errors import RunnerError

Obj = Mapping[str, Any]


class ContainerState(StrEnum):
    PENDING = "pending"  # never started in this pod: volumes, env or earlier init containers first
    RUNNING = "running"
    STOPPING = "stopping"  # SIGTERM sent; still running until it exits or the grace period ends
    EXITED = "exited"  # the process ended (or could not be started at all)
    BACKOFF = "backoff"  # waiting out the restart back-off after an exit


TRANSITIONS: dict[ContainerState, frozenset[ContainerState]] = {
    ContainerState.PENDING: frozenset({ContainerState.RUNNING, ContainerState.EXITED}),
    ContainerState.RUNNING: frozenset({ContainerState.STOPPING, ContainerState.EXITED}),
    ContainerState.STOPPING: frozenset({ContainerState.EXITED}),
    ContainerState.EXITED: frozenset({ContainerState.BACKOFF}),
    ContainerState.BACKOFF: frozenset({ContainerState.RUNNING, ContainerState.EXITED}),
}

#: Reason of a termination that never got a process: missing binary, no command, bad env.
START_FAILED = "RunContainerError"


@dataclass(frozen=True)
class Termination:
    """How one instance of a container ended."""

    exit_code: int
    finished_at: float
    started_at: float | None = None
    signal: int | None = None
    reason: str = ""
    message: str = ""
    pid: int | None = None

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0

    @property
    def display_reason(self) -> str:
        return self.reason or ("Completed" if self.succeeded else "Error")


@dataclass(frozen=True)
class ContainerRecord:
    """One container's observed state; replaced (never mutated) on every change."""

    name: str
    init: bool = False
    state: ContainerState = ContainerState.PENDING
    restart_count: int = 0
    pid: int | None = None
    started_at: float | None = None
    ready: bool = False
    last: Termination | None = None  # the current termination (EXITED) or the previous one
    previous: Termination | None = None  # the one before `last`, for lastState while EXITED
    waiting_reason: str = "ContainerCreating"  # why a PENDING container has not started yet
    waiting_message: str = ""
    backoff_until: float = 0.0
    backoff: float = 0.0  # the delay used for the latest restart; 0 = none yet

    def move(self, to: ContainerState, **changes: object) -> ContainerRecord:
        if to not in TRANSITIONS[self.state]:
            raise RunnerError(f"container {self.name}: illegal move {self.state} -> {to}")
        return replace(self, state=to, **changes)  # type: ignore[arg-type]


def should_restart(policy: str, termination: Termination, init: bool = False) -> bool:
    """Whether the kubelet would run the container again after this termination."""
    if init:
        # Init containers run to completion: restarted on failure unless the pod never restarts.
        return not termination.succeeded and policy != "Never"
    if policy == "Always":
        return True
    if policy == "OnFailure":
        return not termination.succeeded
    return False


@dataclass(frozen=True)
class BackoffPolicy:
    """Kubelet-like crash-loop back-off, tuned for a dev cluster."""

    initial: float = 1.0
    cap: float = 60.0
    reset_after: float = 600.0

    def next_delay(self, previous: float, ran_for: float) -> float:
        """Delay before the next restart, given the previous delay and how long the run lasted."""
        if previous <= 0 or ran_for >= self.reset_after:
            return self.initial
        return min(previous * 2, self.cap)


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))


def _termination(raw: Obj) -> Termination:
    return Termination(
        exit_code=int(raw.get("exitCode", 0)),
        finished_at=parse_time(raw.get("finishedAt")) or time.time(),
        started_at=parse_time(raw.get("startedAt")),
        signal=raw.get("signal"),
        reason=raw.get("reason") or "",
        message=raw.get("message") or "",
    )


def recover(name: str, init: bool, reported: Obj | None) -> ContainerRecord:
    """A container's record rebuilt from the status a previous runner instance reported."""
    record = ContainerRecord(name=name, init=init)
    if not reported:
        return record
    state, last = reported.get("state") or {}, (reported.get("lastState") or {}).get("terminated")
    count = int(reported.get("restartCount") or 0)
    if "running" in state:
        started = parse_time(state["running"].get("startedAt"))
        killed = Termination(
            exit_code=137, signal=9, finished_at=time.time(), started_at=started,
            reason="Killed", message="stopped by a restart of the local node's runner",
        )  # fmt: skip
        prev = _termination(last) if last else None
        return replace(record, state=ContainerState.EXITED, restart_count=count, last=killed,
                       previous=prev)  # fmt: skip
    if "terminated" in state:
        prev = _termination(last) if last else None
        return replace(record, state=ContainerState.EXITED, restart_count=count,
                       last=_termination(state["terminated"]), previous=prev)  # fmt: skip
    if last:
        return replace(
            record, state=ContainerState.EXITED, restart_count=count, last=_termination(last)
        )
    return replace(record, restart_count=count)
