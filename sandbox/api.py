"""The control API's wire models (pydantic), shared by the runtime daemon and `RuntimeClient`.

Why pydantic here and dataclasses in `isolation`: these are the CRI-like contract with the
sidecar — validated at the boundary, versioned by path (`/v1`), JSON on the wire — while the
isolation layer stays dependency-free. The conversion functions below are the only place where
one becomes the other.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from isolation.base import Limits, SandboxSpec, SandboxStatus, Usage

Isolation = Literal["subprocess", "namespace"]
# isolation.interfaces.Interface: how a request reaches the handler and its answer returns.
Interface = Literal["nest", "apigateway-v1", "apigateway-v2", "asgi", "wsgi"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LimitsModel(_Model):
    concurrency: int = Field(default=1, ge=1, description="invocations in flight at once")
    queue: int = Field(default=64, ge=0, description="invocations that may wait; beyond: 429")
    timeout_seconds: float = Field(default=30.0, gt=0)
    max_duration_seconds: float = Field(
        default=300.0, gt=0, description="longest a streamed answer may last"
    )
    memory_mb: int | None = Field(default=None, ge=1, description="enforced in subprocess mode")
    cpu_millis: int | None = Field(
        default=None, ge=1, description="CPU request; subprocess sandboxes share CPU by it"
    )


class CreateSandbox(_Model):
    id: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    code_dir: str = Field(min_length=1, description="directory holding the function's code")
    handler: str = Field(min_length=3, description="module:function")
    isolation: Isolation = "subprocess"
    interface: Interface = "nest"
    function_name: str = ""
    function_version: str = "$LATEST"
    env: dict[str, str] = Field(default_factory=dict)
    working_dir: str | None = Field(
        default=None, min_length=1, description="subprocess only; default: code_dir"
    )
    limits: LimitsModel = Field(default_factory=LimitsModel)
    # The function package's dependency layers as unpacked by the sidecar: import roots, searched
    # in this order after code_dir. Namespace mode loads the pure-Python ones child-first per
    # sandbox (isolation.loader); subprocess sandboxes put them on their own sys.path.
    dependency_paths: list[str] = Field(default_factory=list)
    # Its compiled distributions, "name==version": a runtime loads one version of each.
    native_distributions: list[str] = Field(default_factory=list)


class StopSandbox(_Model):
    grace_seconds: float = Field(default=5.0, ge=0)


class UsageModel(_Model):
    in_flight: int
    queued: int
    invocations: int
    errors: int
    timeouts: int
    memory_bytes: int | None
    cpu_seconds: float | None


class SandboxInfo(_Model):
    id: str
    isolation: Isolation
    state: str
    reason: str
    message: str
    pid: int | None
    exit_code: int | None
    signal: int | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    usage: UsageModel | None = None
    # The boundary around this sandbox: True only when every part of it holds; `confinement`
    # says what it is, or what is missing. None for namespace sandboxes (in-process).
    confined: bool | None = None
    confinement: str = ""


class SandboxList(_Model):
    items: list[SandboxInfo]


class SandboxEvent(_Model):
    """One state change, streamed as a line of NDJSON from `GET /v1/events`."""

    type: Literal["StateChanged"] = "StateChanged"
    sandbox: SandboxInfo


class LastCrash(_Model):
    """How the previous runtime of this pod died, as this one found it (isolation.crashlog)."""

    at: float = Field(description="the dead runtime's last heartbeat: it died within ~1 s of it")
    detected_at: float
    pid: int
    exit_status: str = Field(description="the fatal signal faulthandler saw, or why none is known")
    sandboxes: list[str] = Field(description="namespace sandboxes running code when it died")
    importing: list[str] = Field(default_factory=list, description="of those, the importing")
    culprits: list[str] = Field(
        default_factory=list, description="named as the cause: failed, never loaded here again"
    )
    rule: str = Field(default="", description="why these culprits (or none)")


class ThreadsInfo(_Model):
    """The namespace sandboxes' threads: `overdue` ones run calls that overran their timeout."""

    limit: int
    started: int
    busy: int
    overdue: int
    quota_cap: int


class RuntimeInfo(_Model):
    pid: int
    started_at: float
    data_host: str
    data_port: int
    zygote_pid: int | None
    sandboxes: int
    # What confines subprocess sandboxes here (None: nothing), and what this pod cannot enforce.
    boundary: dict[str, str] | None = None
    boundary_reduced: list[str] = Field(default_factory=list)
    last_crash: LastCrash | None = None
    threads: ThreadsInfo | None = None
    # The compiled distributions loaded in (or promised by) this runtime's interpreter, as
    # "name==version" (normalised names): namespace sandboxes needing another version of one
    # of them fail here with DependencyConflict; the sidecar publishes this on its Lease.
    native_distributions: list[str] = Field(default_factory=list)
    # The import roots (dependency layers) those natives load from: the sidecar keeps them in
    # its code cache while this runtime lives (an imported package reads its directory again).
    native_roots: list[str] = Field(default_factory=list)


class ErrorBody(_Model):
    error: str
    message: str
    sandbox: SandboxInfo | None = None


def to_spec(request: CreateSandbox, layers: tuple[str, ...]) -> SandboxSpec:
    limits = request.limits
    return SandboxSpec(
        id=request.id,
        code_dir=request.code_dir,
        handler=request.handler,
        function_name=request.function_name,
        function_version=request.function_version,
        env=dict(request.env),
        workdir=request.working_dir,
        limits=Limits(
            concurrency=limits.concurrency,
            queue=limits.queue,
            timeout_s=limits.timeout_seconds,
            max_duration_s=limits.max_duration_seconds,
            memory_mb=limits.memory_mb,
            cpu_millis=limits.cpu_millis,
        ),
        layers=layers,
        interface=request.interface,
        dependency_paths=tuple(request.dependency_paths),
        native_distributions=tuple(request.native_distributions),
    )


def to_info(status: SandboxStatus, usage: Usage | None = None) -> SandboxInfo:
    return SandboxInfo(
        id=status.id,
        isolation="namespace" if status.isolation == "namespace" else "subprocess",
        state=status.state.value,
        reason=str(status.reason),
        message=status.message,
        pid=status.pid,
        exit_code=status.exit_code,
        signal=status.signal,
        created_at=status.created_at,
        started_at=status.started_at,
        finished_at=status.finished_at,
        usage=None
        if usage is None
        else UsageModel(
            in_flight=usage.in_flight,
            queued=usage.queued,
            invocations=usage.invocations,
            errors=usage.errors,
            timeouts=usage.timeouts,
            memory_bytes=usage.memory_bytes,
            cpu_seconds=usage.cpu_seconds,
        ),
    )
