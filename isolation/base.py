"""The backend interface every isolation mode implements, and the state machine they share.

Why: the runtime daemon (and the conformance suite) must treat `subprocess` and `namespace`
sandboxes identically — create, invoke, stop, status, usage — so that a function can move between
isolation modes by changing one field. Status is reported as immutable snapshots so that a reader
(the runtime's control API, the event stream) can never observe a half-updated sandbox.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import TracebackType
from typing import Any, Protocol

from isolation.contract import Request, Response
from isolation.errors import IllegalTransition, Overloaded


class SandboxState(StrEnum):
    CREATING = "Creating"
    RUNNING = "Running"
    STOPPING = "Stopping"
    STOPPED = "Stopped"
    FAILED = "Failed"


TRANSITIONS: Mapping[SandboxState, frozenset[SandboxState]] = {
    SandboxState.CREATING: frozenset(
        {SandboxState.RUNNING, SandboxState.FAILED, SandboxState.STOPPING}
    ),
    SandboxState.RUNNING: frozenset({SandboxState.STOPPING, SandboxState.FAILED}),
    SandboxState.STOPPING: frozenset({SandboxState.STOPPED}),
    SandboxState.STOPPED: frozenset(),
    SandboxState.FAILED: frozenset(),
}

TERMINAL = frozenset({SandboxState.STOPPED, SandboxState.FAILED})


class Reason(StrEnum):
    """CamelCase failure reasons; the sidecar copies them into Kubernetes status verbatim."""

    SYNTAX_ERROR = "SyntaxError"
    IMPORT_ERROR = "ImportError"
    HANDLER_NOT_FOUND = "HandlerNotFound"
    OOM_KILLED = "OOMKilled"
    TIMEOUT = "Timeout"
    IMPORT_TIMEOUT = "ImportTimeout"  # namespace: the import overran the function's timeout
    UNHEALTHY = "Unhealthy"  # namespace: calls past their timeout still hold its threads
    RUNTIME_CRASH = "RuntimeCrash"  # namespace: named as the one that ended the shared runtime
    DEPENDENCY_CONFLICT = "DependencyConflict"  # namespace: a native loaded at another version
    CRASHED = "Crashed"
    ERROR = "Error"
    COMPLETED = "Completed"


def check_transition(src: SandboxState, dst: SandboxState) -> None:
    if dst not in TRANSITIONS[src]:
        raise IllegalTransition(f"{src} -> {dst} is not allowed")


@dataclass(frozen=True, slots=True)
class Limits:
    concurrency: int = 1  # invocations in flight at once
    queue: int = 64  # invocations allowed to wait for a slot; beyond that: Overloaded
    timeout_s: float = 30.0  # a whole answer; a streamed one: first byte and every idle gap
    max_duration_s: float = 300.0  # the longest a streamed answer may last (never below timeout)
    memory_mb: int | None = None  # enforced by the subprocess backend only
    cpu_millis: int | None = None  # the CPU request: a subprocess sandbox's share of the pod


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    id: str
    code_dir: str
    handler: str  # "module:function" (or Lambda's "module.function")
    function_name: str = ""
    function_version: str = "$LATEST"
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str | None = None  # subprocess only; None: the code directory
    limits: Limits = field(default_factory=Limits)
    layers: tuple[str, ...] = ()  # runtime-level hooks, "module:attribute"
    interface: str = "nest"  # isolation.interfaces.Interface: nest, apigateway-v1/v2, asgi, wsgi
    # Import roots of the function's dependency layers, searched in order after code_dir.
    dependency_paths: tuple[str, ...] = ()
    native_distributions: tuple[str, ...] = ()  # "name==version", compiled: one per runtime


@dataclass(frozen=True, slots=True)
class SandboxStatus:
    id: str
    isolation: str
    state: SandboxState
    reason: str = ""
    message: str = ""
    pid: int | None = None
    exit_code: int | None = None
    signal: int | None = None
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    in_flight: int = 0
    queued: int = 0
    invocations: int = 0
    errors: int = 0
    timeouts: int = 0
    rejected: int = 0  # refused as Overloaded
    memory_bytes: int | None = None  # USS; None where it cannot be attributed (namespace)
    cpu_seconds: float | None = None


StatusListener = Callable[[SandboxStatus], None]


class StatusCell:
    """Holds a sandbox's current snapshot; every change goes through the transition table."""

    def __init__(self, spec: SandboxSpec, isolation: str, listener: StatusListener) -> None:
        self._listener = listener
        self.current = SandboxStatus(
            id=spec.id, isolation=isolation, state=SandboxState.CREATING, created_at=time.time()
        )
        listener(self.current)

    def move(self, state: SandboxState, **changes: Any) -> SandboxStatus:
        check_transition(self.current.state, state)
        now = time.time()
        if state is SandboxState.RUNNING:
            changes.setdefault("started_at", now)
        elif state in TERMINAL:
            changes.setdefault("finished_at", now)
        self.current = replace(self.current, state=state, **changes)
        self._listener(self.current)
        return self.current


class Admission:
    """Per-sandbox concurrency gate with a bounded FIFO wait queue."""

    def __init__(self, concurrency: int, queue: int) -> None:
        self._free = max(1, concurrency)
        self._max_waiting = max(0, queue)
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.in_flight = 0
        self.rejected = 0

    @property
    def queued(self) -> int:
        return len(self._waiters)

    async def __aenter__(self) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
        elif len(self._waiters) >= self._max_waiting:
            self.rejected += 1
            raise Overloaded(f"{self.in_flight} in flight and {self.queued} queued")
        else:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._release_slot()  # the slot was handed to us just as we were cancelled
                else:
                    self._waiters.remove(fut)
                raise
        self.in_flight += 1

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.leave()

    def leave(self) -> None:
        """Give back a slot taken by entering (what leaving the `async with` block does)."""
        self.in_flight -= 1
        self._release_slot()

    def slot(self) -> Slot:
        """`async with admission.slot() as slot:` — like `async with admission`, and the slot
        may outlive the block (`slot.keep()`: a streamed answer holds it until it ends)."""
        return Slot(self)

    def _release_slot(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # hand the slot over directly: FIFO, no barging
                return
        self._free += 1


class Slot:
    """One invocation's place in an `Admission`, released when its block ends unless kept."""

    __slots__ = ("_admission", "_kept")

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._kept = False

    async def __aenter__(self) -> Slot:
        await self._admission.__aenter__()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._kept:
            self._admission.leave()

    def keep(self) -> Callable[[], None]:
        """Keep the slot past the block; the function returned releases it (once)."""
        self._kept = True
        admission: Admission | None = self._admission

        def release() -> None:
            nonlocal admission
            held, admission = admission, None
            if held is not None:
                held.leave()

        return release


class Backend(Protocol):
    """What the runtime daemon needs from an isolation mode."""

    name: str

    async def create(self, spec: SandboxSpec) -> SandboxStatus:
        """Load the function; returns Running, or raises LoadError after recording Failed."""
        ...

    async def invoke(self, sandbox_id: str, request: Request) -> Response: ...

    async def stop(self, sandbox_id: str, grace_s: float = 5.0) -> SandboxStatus:
        """Idempotent: stopping a stopped or failed sandbox returns its status unchanged."""
        ...

    async def remove(self, sandbox_id: str) -> None:
        """Stop (without grace) if needed, then forget the sandbox; unknown ids are a no-op."""
        ...

    def status(self, sandbox_id: str) -> SandboxStatus: ...

    def usage(self, sandbox_id: str) -> Usage: ...

    def list(self) -> list[SandboxStatus]: ...

    async def close(self) -> None:
        """Stop every sandbox and release the backend's own resources."""
        ...
