"""One worker per bound Sandbox: the kubelet's pod worker, for sandboxes.

A worker owns one Sandbox's life in this pod — fetch its code, create it in the runtime, watch it
run, restart it per its restartPolicy with back-off, stop it on deletion and only then release the
finalizer. Its phase moves only along `crds.can_transition`; an illegal move is a bug and raises.
Everything it learns it reports as an `Observed` snapshot to the status manager, the only writer of
Sandbox status. Inputs arrive as notifications (`update` from the informer, `runtime_changed` and
`runtime_outage` from the runtime pump) that wake the worker, so it never polls.

Ready means the sandbox serves now, not only that it runs: while the pump has declared the
runtime lost, a Running sandbox is reported Ready=False (reason `RuntimeUnavailable`, phase and
restart count unchanged), as a pod is NotReady while its node's container runtime is down; it is
Ready again when the runtime answers and still runs it, and restarted (counted) when it does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from kubernetes.utils.quantity import parse_quantity
from pydantic import ValidationError

from crds import SandboxPhase, can_transition
from crds.constants import FUNCTION_LABEL, REVISION_ANNOTATION, SIDECAR_FINALIZER
from crds.sandbox import (
    PERMANENT_FAILURE_REASONS,
    POD_FINAL_FAILURE_REASONS,
    CodeSource,
    RestartPolicy,
    Sandbox,
)
from nest_sidecar.cri import RUNTIME_UNAVAILABLE, RuntimeAPI
from nest_sidecar.errors import (
    CodeFetchFailed,
    SidecarError,
    describe_exception,
    describe_validation,
)
from nest_sidecar.fetcher import CodeFetcher, CodeRef
from nest_sidecar.status import Observed
from sandbox.api import CreateSandbox, LimitsModel, SandboxInfo
from sandbox.errors import (
    CreateFailed,
    RuntimeAPIError,
    RuntimeUnavailable,
    SandboxNotFoundError,
)

log = logging.getLogger(__name__)

RUNTIME_FAILED = frozenset({"Failed", "Stopped"})


class IllegalPhaseTransition(SidecarError):
    """A worker tried a phase move the transition table forbids: a bug, never user input."""


class Kube(Protocol):
    """The API writes a worker needs (besides status, which goes through the status manager).

    No finalizer is added here: the binder adds it in the binding write (the scheduler's bind,
    and admission refuses a binding without it), so the sidecar only ever releases it."""

    async def release_finalizer(self, obj: Mapping[str, Any]) -> None: ...

    def event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None: ...


@dataclass(frozen=True)
class PodIdentity:
    """Where this pod's sandboxes are reached."""

    name: str
    ip: str
    port: int


@dataclass(frozen=True)
class Backoff:
    """Exponential restart back-off, reset after a sandbox ran `reset_after` seconds."""

    initial: float = 0.5
    cap: float = 60.0
    reset_after: float = 60.0

    def delay(self, failures: int) -> float:
        return float(min(self.cap, self.initial * 2 ** max(0, failures - 1)))


def should_restart(policy: RestartPolicy, reason: str, clean_exit: bool) -> bool:
    """Whether a stopped sandbox runs again in this pod (restartPolicy, as for Pods)."""
    if reason in PERMANENT_FAILURE_REASONS or policy == RestartPolicy.NEVER:
        return False
    if reason in POD_FINAL_FAILURE_REASONS:  # would fail the same way in this pod's runtime
        return False
    return policy == RestartPolicy.ALWAYS or not clean_exit


def function_name(obj: Mapping[str, Any]) -> str:
    """`namespace/function` for a deployment's sandbox, `namespace/sandbox` for a lone one."""
    meta = obj["metadata"]
    return f"{meta['namespace']}/{(meta.get('labels') or {}).get(FUNCTION_LABEL, meta['name'])}"


def boundary(info: SandboxInfo | None) -> tuple[bool | None, str, str | None]:
    """The Isolated condition from the runtime's report: (status, reason, message)."""
    if info is None:
        return None, "", None
    if info.isolation == "namespace":
        return (
            False,
            "InProcess",
            (
                "namespace isolation shares the runtime's interpreter, so only sandboxes of its "
                "own Kubernetes namespace share this pod"
            ),
        )
    if info.confined is None:
        return None, "", None
    return info.confined, "Confined" if info.confined else "BoundaryReduced", info.confinement


def memory_mb(quantity: str | int) -> int:
    return max(1, int(parse_quantity(quantity) / (1024 * 1024)))


def cpu_millis(quantity: str | int) -> int:
    millis: int = math.ceil(parse_quantity(quantity) * 1000)
    return max(1, millis)


class SandboxWorker:
    """Drives one Sandbox to its desired state in this pod."""

    def __init__(
        self,
        obj: Mapping[str, Any],
        *,
        runtime: RuntimeAPI,
        fetcher: CodeFetcher,
        kube: Kube,
        report: Callable[[Mapping[str, Any], Observed], None],
        pod: PodIdentity,
        backoff: Backoff,
        grace_seconds: float = 5.0,
    ) -> None:
        self.obj: Mapping[str, Any] = obj
        self.uid = str(obj["metadata"]["uid"])
        self.runtime = runtime
        self.fetcher = fetcher
        self.kube = kube
        self._report = report
        self.pod = pod
        self.backoff = backoff
        self.grace = grace_seconds
        status = obj.get("status") or {}
        self.observed = Observed(
            phase=SandboxPhase(status.get("phase") or SandboxPhase.PENDING),
            generation=int(obj["metadata"].get("generation", 1)),
            restart_count=int(status.get("restartCount", 0)),
            pod_name=pod.name,
        )
        self.runtime_info: SandboxInfo | None = None
        self.outage: str | None = None  # why the pump declared the runtime lost; None: it answers
        self._wake = asyncio.Event()
        self.failures = 0
        self.retry_at: float | None = None  # monotonic time a pending restart is due
        self._runtime_events = 0  # runtime_changed calls so far: orders replies against events
        self._running_since = 0.0

    # -- inputs --------------------------------------------------------------------------------

    def update(self, obj: Mapping[str, Any]) -> None:
        self.obj = obj
        self._wake.set()

    def runtime_changed(self, info: SandboxInfo | None) -> None:
        self.runtime_info = info
        self._runtime_events += 1
        self._wake.set()

    def runtime_outage(self, why: str | None) -> None:
        """The pump declared the runtime lost (`why`), or it answers again (None)."""
        self.outage = why
        self._wake.set()

    @property
    def deleting(self) -> bool:
        return bool(self.obj["metadata"].get("deletionTimestamp"))

    # -- state ---------------------------------------------------------------------------------

    def _move(self, phase: SandboxPhase, **changes: Any) -> None:
        current = self.observed.phase
        if phase != current and not can_transition(current, phase):
            raise IllegalPhaseTransition(f"sandbox {self.uid}: {current} -> {phase}")
        self.observed = replace(self.observed, phase=phase, **changes)
        self._report(self.obj, self.observed)

    def _event(self, type_: str, reason: str, message: str) -> None:
        self.kube.event(self.obj, type_, reason, message)

    async def _wait(self, timeout: float | None = None) -> None:
        """Sleep until an input arrives (or the timeout passes).

        Level-triggered: an input that came while the worker was busy (a crash during create)
        ends the next wait at once, and every caller re-reads the state after waking.
        """
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except Exception:  # one sandbox's bug must never take the sidecar down
            log.exception("worker for sandbox %s failed", self.uid)
            raise

    async def _run(self) -> None:
        finalizers = self.obj["metadata"].get("finalizers") or []
        final = self.observed.phase in (SandboxPhase.FAILED, SandboxPhase.SUCCEEDED)
        if SIDECAR_FINALIZER not in finalizers and not (self.deleting or final):
            # Bound without it (no admission webhook, or someone removed it): deleting the
            # Sandbox will not wait for the sandbox to stop; the sidecar still stops it then.
            log.warning("sandbox %s is bound without the %s finalizer", self.uid, SIDECAR_FINALIZER)
        if self.observed.phase == SandboxPhase.PENDING:
            self._move(SandboxPhase.SCHEDULED)
        info = self.runtime_info
        if self.observed.phase == SandboxPhase.RUNNING:
            if info is not None and info.state == "Running":
                log.info("adopted running sandbox %s (pid %s)", self.uid, info.pid)
                self._running(started=self.observed.start_time)
            elif info is not None and info.state in RUNTIME_FAILED and info.reason:
                # It failed while no sidecar watched (Unhealthy, say), or the pump reported
                # the runtime's crash with the culprit named (RuntimeCrash, RuntimeRestarted).
                self._event("Warning", "Failed", f"{info.reason}: {info.message}")
                self._stopped(info.reason, info.message or info.reason, ran=True)
            else:  # it ran, and the runtime no longer has it: the runtime restarted
                self._stopped("RuntimeRestarted", "the pod's runtime restarted", ran=True)
        while not self.deleting:
            phase = self.observed.phase
            if phase == SandboxPhase.RUNNING:
                await self._watch_running()
            elif phase in (SandboxPhase.FAILED, SandboxPhase.SUCCEEDED):
                await self._wait()  # final: only deletion moves it now
            elif await self._back_off():
                await self._start()
        await self._terminate()

    async def _start(self) -> None:
        try:
            spec = Sandbox.model_validate(self.obj).spec
        except ValidationError as exc:
            self._stopped("InvalidSpec", describe_validation(exc), ran=False)
            return
        except ValueError as exc:
            self._stopped("InvalidSpec", describe_exception(exc), ran=False)
            return
        self._move(SandboxPhase.STARTING)
        try:
            code = await self._fetch(spec.function.source)
        except SidecarError as exc:
            self._fetch_failed(exc)
            return
        except Exception as exc:  # a fetcher bug, or an error nobody typed: name it all the same
            log.exception("fetching the code of sandbox %s failed", self.uid)
            self._fetch_failed(CodeFetchFailed(describe_exception(exc)))
            return
        if code is None:  # deleted while fetching
            return
        self.observed = replace(self.observed, code_ready=True, code_message=None)
        await self._create(spec, code)

    async def _fetch(self, source: CodeSource) -> CodeRef | None:
        """The fetched code, or None when the Sandbox was deleted first (the fetch is dropped:
        a download that hangs must not hold the deletion up for its deadline)."""
        namespace = self.obj["metadata"]["namespace"]
        fetch = asyncio.ensure_future(self.fetcher.fetch(source, namespace, user=self.uid))
        woken = False
        wake: asyncio.Future[Any] | None = None
        try:
            while not fetch.done() and not self.deleting:
                wake = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait({fetch, wake}, return_when=asyncio.FIRST_COMPLETED)
                wake.cancel()
                if self._wake.is_set():
                    self._wake.clear()
                    woken = True
        finally:
            if wake is not None:
                wake.cancel()
            if woken:  # level-triggered: what woke us here still ends the next wait at once
                self._wake.set()
            if not fetch.done():
                fetch.cancel()
                with contextlib.suppress(BaseException):
                    await fetch
        if fetch.cancelled():
            return None
        code = fetch.result()
        return None if self.deleting else code

    def _fetch_failed(self, exc: SidecarError) -> None:
        message = str(exc) or exc.reason
        self._event("Warning", exc.reason, message)
        self.observed = replace(self.observed, code_ready=False, code_message=message)
        self._stopped(exc.reason, message, ran=False)

    async def _create(self, spec: Any, code: CodeRef) -> None:
        fn = spec.function
        meta = self.obj["metadata"]
        request = CreateSandbox(
            id=self.uid,
            code_dir=str(code.path),
            handler=fn.handler,
            isolation=fn.isolation.value,
            interface=fn.interface.value,
            function_name=function_name(self.obj),
            function_version=(meta.get("annotations") or {}).get(REVISION_ANNOTATION, "$LATEST"),
            env=dict(fn.env),
            dependency_paths=[str(path) for path in code.dependency_paths],
            native_distributions=list(code.native_distributions),
            limits=LimitsModel(
                concurrency=fn.concurrency,
                timeout_seconds=float(fn.timeout_seconds),
                max_duration_seconds=float(fn.max_duration_seconds),
                memory_mb=memory_mb(fn.resources.memory),
                cpu_millis=cpu_millis(fn.resources.cpu),
            ),
        )
        events_before = self._runtime_events
        try:
            if self.runtime_info is not None:  # a failed leftover under our id blocks a create
                with contextlib.suppress(SandboxNotFoundError):
                    await self.runtime.remove(self.uid, 0)
            info = await self.runtime.create(request)
        except RuntimeUnavailable as exc:  # it died or restarts: try again after a back-off
            message = f"the pod's runtime is not answering: {exc or type(exc).__name__}"
            self._event("Warning", "RuntimeUnavailable", message)
            self._stopped("RuntimeUnavailable", message, ran=False)
            return
        except CreateFailed as exc:
            self._event("Warning", "Failed", f"{exc.error}: {exc.message}")
            self._stopped(exc.error, exc.message, ran=True)
            return
        except (RuntimeAPIError, ValueError) as exc:  # an error the runtime did not type (a 500)
            detail = (
                f"{exc.status} {exc.error}: {exc.message}"
                if isinstance(exc, RuntimeAPIError)
                else describe_exception(exc)
            )
            message = f"the runtime could not create it: {detail}"
            self._event("Warning", "CreateFailed", message)
            self._stopped("CreateFailed", message, ran=False)
            return
        if self._runtime_events == events_before:  # else an event already told us more
            self.runtime_info = info
        if info.state != "Running":
            message = info.message or f"runtime state {info.state}"
            self._stopped(info.reason or "Error", message, ran=True)
            return
        # A first start is told by the status this start writes (CodeReady, Ready and Isolated,
        # with their times). An Event as well, counted on the replica set per pool pod, was
        # most of a big apply's Event writes: an Event object per 4 sandboxes (a set's spread
        # over 25 pods) and a count for each. A start after a failure is news among the
        # Warnings before it: it is told on the sandbox they are about.
        if self.failures:
            message = f"code {code.digest[:12]} started again in {fn.isolation.value} isolation"
            self._event("Normal", "Started", message)
        self._running(started=datetime.now(UTC))

    def _running(self, started: datetime | None) -> None:
        self.retry_at = None
        isolated, isolation_reason, isolation_message = boundary(self.runtime_info)
        self._move(
            SandboxPhase.RUNNING,
            **self._readiness(),
            start_time=started or datetime.now(UTC),
            pod_ip=self.pod.ip,
            port=self.pod.port,
            isolated=isolated,
            isolation_reason=isolation_reason,
            isolation_message=isolation_message,
        )
        self._running_since = time.monotonic()

    def _readiness(self) -> dict[str, Any]:
        """The Running status's readiness: ready unless the runtime is declared lost."""
        if self.outage is None:
            return {"ready": True, "reason": None, "message": None}
        return {"ready": False, "reason": RUNTIME_UNAVAILABLE, "message": self.outage}

    async def _watch_running(self) -> None:
        await self._wait()
        info = self.runtime_info
        if self.deleting:
            return
        if info is not None and info.state not in RUNTIME_FAILED:
            # Still running as far as anyone knows: only its readiness may have changed (one
            # write when the runtime is declared lost, one when it answers again).
            if self.observed.ready != (self.outage is None):
                self._move(SandboxPhase.RUNNING, **self._readiness())
            return
        if time.monotonic() - self._running_since >= self.backoff.reset_after:
            self.failures = 0
        if info is None:
            self._stopped("RuntimeRestarted", "the pod's runtime lost this sandbox", ran=True)
            return
        detail = info.message or f"exit code {info.exit_code}, signal {info.signal}"
        if info.state == "Stopped" and info.exit_code in (0, None) and not info.reason:
            self._stopped("Completed", detail, ran=True, clean=True)
            return
        self._event("Warning", "Failed", f"{info.reason or 'Crashed'}: {detail}")
        self._stopped(info.reason or "Crashed", detail, ran=True)

    def _stopped(self, reason: str, message: str, *, ran: bool, clean: bool = False) -> None:
        """It stopped (or never started): restart it after a back-off, or settle for good.

        A restart pending shows as Starting with reason CrashLoopBackOff (or, when it never
        ran, the reason it could not start), so Failed always means final: replica sets then
        know what to replace.
        """
        policy = RestartPolicy(
            (self.obj.get("spec") or {}).get("restartPolicy") or RestartPolicy.ALWAYS
        )
        if not should_restart(policy, reason, clean):
            final = SandboxPhase.SUCCEEDED if clean else SandboxPhase.FAILED
            self._move(final, ready=False, reason=reason, message=message)
            return
        self.failures += 1
        delay = self.backoff.delay(self.failures)
        self.retry_at = time.monotonic() + delay
        last = f"{reason}: {message}" if message else reason
        self._event("Warning", "BackOff", f"back-off {delay:g}s restarting sandbox ({last})")
        self._move(
            SandboxPhase.STARTING,
            ready=False,
            reason="CrashLoopBackOff" if ran else reason,
            message=f"back-off {delay:g}s before starting again; last: {last}",
            restart_count=self.observed.restart_count + (1 if ran else 0),
        )

    async def _back_off(self) -> bool:
        """Wait until a pending restart is due; False when deletion came first."""
        while self.retry_at is not None and not self.deleting:
            remaining = self.retry_at - time.monotonic()
            if remaining <= 0:
                break
            await self._wait(remaining)
        self.retry_at = None
        return not self.deleting

    async def _terminate(self) -> None:
        self._move(SandboxPhase.TERMINATING, ready=False)
        if self.runtime_info is not None:
            self._event("Normal", "Killing", f"stopping sandbox (grace {self.grace:g}s)")
            with contextlib.suppress(SandboxNotFoundError):
                await self.runtime.remove(self.uid, self.grace)
        await self.kube.release_finalizer(self.obj)
