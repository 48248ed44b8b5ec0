"""The `Sandbox` kind: one running function instance, Nest's equivalent of a Pod.

The operator's scheduler binds a Sandbox to a pool pod (spec.podName/podNamespace, like
pod.spec.nodeName), and that pod's sidecar runs it and alone writes its status. The phase enum and
its transition table live here, next to the type, because the sidecar's state machine, the
operator and the tests must agree on which moves are legal. The field rules the schema cannot
express (inline sizes, env names) and the grammars are crds.validation's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from crds.common import (
    LABEL_VALUE_PATTERN,
    REASON_PATTERN,
    Conditions,
    NestModel,
    Quantity,
    conditions_field,
)
from crds.constants import API_VERSION, SANDBOX_KIND
from crds.validation import (
    HANDLER_PATTERN,
    INLINE_MAX_FILES,
    OCI_REF_PATTERN,
    SHA256_PATTERN,
    EnvValue,
    FileContent,
    env_problems,
    inline_problems,
)

# The wire names of CodeSource's fields, in the order its validator names them.
CODE_SOURCES = ("inline", "configMap", "url", "path", "oci", "build")


class Isolation(StrEnum):
    """How a sandbox is isolated inside its pool pod."""

    SUBPROCESS = "subprocess"
    NAMESPACE = "namespace"


class Interface(StrEnum):
    """How an HTTP request reaches the handler and its answer returns (isolation.interfaces)."""

    NEST = "nest"
    APIGATEWAY_V1 = "apigateway-v1"
    APIGATEWAY_V2 = "apigateway-v2"
    ASGI = "asgi"
    WSGI = "wsgi"


class RestartPolicy(StrEnum):
    """When the sidecar restarts a sandbox that stopped, as a Pod's restartPolicy."""

    ALWAYS = "Always"
    ON_FAILURE = "OnFailure"
    NEVER = "Never"


class Resources(NestModel):
    """What one sandbox may use of its pool pod; the scheduler packs pods by these amounts."""

    memory: Quantity = Field(default="64Mi", description="Memory limit, a quantity (e.g. 64Mi).")
    cpu: Quantity = Field(default="100m", description="CPU share, a quantity (e.g. 100m).")


class ConfigMapSource(NestModel):
    """Code stored in a ConfigMap of the Sandbox's own namespace.

    There is deliberately no namespace field: the sidecar reads with its own credentials, and a
    cross-namespace reference would let any user ship any namespace's ConfigMap as code.
    """

    name: str = Field(min_length=1, max_length=253, description="Name of the ConfigMap.")
    key: str | None = Field(
        default=None,
        min_length=1,
        description="Only this key, as a single file; every key becomes a file when unset.",
    )


class OciSource(NestModel):
    """A function package (code and dependency layers) in an OCI registry, pulled by digest.

    `nest deploy DIR` builds and pushes one; the artifact format is sandbox.layers'.
    """

    ref: str = Field(
        max_length=1024,
        pattern=OCI_REF_PATTERN,
        description="registry/repository@sha256:<digest> of the package's manifest; the pull "
        "is verified against the digest.",
    )
    pull_secret: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description="A kubernetes.io/dockerconfigjson Secret of the Sandbox's namespace with the "
        "registry's credentials, as a Pod's imagePullSecrets.",
    )


class BuildSource(NestModel):
    """A function directory (a *context* artifact) the operator builds into a package in-cluster.

    Only a SandboxDeployment may name one: its operator runs a build Job, records the package it
    produced in `status.build`, and rolls out replica sets whose template has `source.oci` with
    that package instead (spec names the input, status the resolved digest, as Knative). A
    Sandbox or SandboxReplicaSet with `source.build` is refused at admission.
    """

    context: str = Field(
        max_length=1024,
        pattern=OCI_REF_PATTERN,
        description="registry/repository@sha256:<digest> of the context artifact (a gzip tar of "
        "the function directory, requirements.txt or pyproject.toml included).",
    )
    pull_secret: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description="A kubernetes.io/dockerconfigjson Secret of the namespace: the build pulls "
        "the context and pushes the package with it, and the Sandboxes pull the package with it.",
    )


def canonical_name(name: str) -> str:
    """A distribution's name as PEP 503 normalises it (what Leases and annotations carry)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def native_distributions_value(natives: Iterable[str]) -> str:
    """The NATIVE_DISTRIBUTIONS_ANNOTATION value for "name==version" items: a sorted JSON list
    with PEP 503 names, as pool pods' Leases spell them (`nest deploy` and the operator's
    resolved build templates both write it; the scheduler compares it with the Leases')."""
    named = (n.partition("==") for n in natives)
    return json.dumps(sorted(f"{canonical_name(n)}=={v}" for n, _, v in named))


class CodeSource(NestModel):
    """Where the function's code comes from; exactly one of inline, configMap, url, path, oci,
    build."""

    model_config = NestModel.model_config | {
        # Structural schemas allow oneOf of `required` lists: the API server rejects zero or
        # two sources with "must validate one and only one schema (oneOf)" on this path.
        "json_schema_extra": {
            "oneOf": [
                {"required": ["inline"]},
                {"required": ["configMap"]},
                {"required": ["url", "sha256"]},
                {"required": ["path"]},
                {"required": ["oci"]},
                {"required": ["build"]},
            ]
        }
    }

    inline: dict[str, FileContent] | None = Field(
        default=None,
        min_length=1,
        max_length=INLINE_MAX_FILES,
        description="Files by relative path (e.g. handler.py) with their UTF-8 content, empty "
        "files included; at most 512 KiB each and 1 MiB in all as stored (see docs/api.md).",
    )
    config_map: ConfigMapSource | None = Field(
        default=None, description="A ConfigMap whose keys are files."
    )
    url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        max_length=2048,
        description="HTTP(S) address of a .zip/.tar.gz or a single .py file; needs sha256.",
    )
    sha256: str | None = Field(
        default=None,
        pattern=SHA256_PATTERN,
        description="Lower-case hex SHA-256 of the file at url; the code is rejected on mismatch.",
    )
    path: str | None = Field(
        default=None,
        pattern=r"^/",
        description="Absolute path of code already present in the pool image.",
    )
    oci: OciSource | None = Field(
        default=None, description="A function package in an OCI registry, by digest."
    )
    build: BuildSource | None = Field(
        default=None,
        description="A function directory the operator builds into a package (SandboxDeployment "
        "only; its replica sets get the built package as oci).",
    )

    @field_validator("inline")
    @classmethod
    def _storable_files(cls, files: dict[str, str] | None) -> dict[str, str] | None:
        problems = inline_problems(files or {})
        if problems:
            raise ValueError("; ".join(f"{n!r} {why}" if n else why for n, why in problems))
        return files

    @model_validator(mode="after")
    def _exactly_one_source(self) -> CodeSource:
        given = [
            wire
            for wire, value in zip(
                CODE_SOURCES,
                (self.inline, self.config_map, self.url, self.path, self.oci, self.build),
                strict=True,
            )
            if value is not None
        ]
        if len(given) != 1:
            found = ", ".join(given) if given else "none"
            raise ValueError(
                f"exactly one code source of {', '.join(CODE_SOURCES)} is required (got {found})"
            )
        if (self.url is None) != (self.sha256 is None):
            raise ValueError("url and sha256 go together: code fetched by url must be pinned")
        return self


class Function(NestModel):
    """The function a sandbox runs and how."""

    handler: str = Field(
        pattern=HANDLER_PATTERN,
        description="Entry point as module:function or module.function, e.g. main:handler, "
        "main.handler or pkg.app:handle.",
    )
    source: CodeSource = Field(description="Where the code comes from; exactly one source.")
    isolation: Isolation = Field(
        default=Isolation.SUBPROCESS,
        description="subprocess (own process, strong isolation) or namespace (shared "
        "interpreter, highest density, trusted code only).",
    )
    interface: Interface = Field(
        default=Interface.NEST,
        description="What the handler is: nest (Nest's contract), apigateway-v1 or "
        "apigateway-v2 (a Lambda handler behind API Gateway's REST or HTTP API), asgi or wsgi "
        "(the handler names an ASGI or WSGI app).",
    )
    resources: Resources = Field(
        default_factory=Resources, description="Memory and CPU of one sandbox."
    )
    timeout_seconds: int = Field(
        default=30,
        ge=1,
        le=900,
        description="Longest a single invocation may run; for a streamed answer, the longest "
        "wait for its first byte and between two chunks.",
    )
    max_duration_seconds: int = Field(
        default=300,
        ge=1,
        le=3600,
        description="Longest a streamed answer may last in all (never less than "
        "timeoutSeconds); then it is ended.",
    )
    concurrency: int = Field(
        default=1,
        ge=1,
        le=1000,
        description="Most invocations in flight in one sandbox; more wait or go elsewhere.",
    )
    env: dict[str, EnvValue] = Field(
        default_factory=dict,
        description="Environment variables of the function, name to value.",
    )

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        problems = env_problems(env)
        if problems:
            raise ValueError("; ".join(f"env {name!r}: {why}" for name, why in problems))
        return env


class SandboxSpec(NestModel):
    """Desired state of a Sandbox: what to run, where it may run, and where it is bound."""

    function: Function = Field(description="The function to run.")
    pool: str = Field(
        default="default",
        min_length=1,
        max_length=63,
        pattern=LABEL_VALUE_PATTERN,
        description="Pool whose pods (label nest.sandbox.dev/pool) may run this sandbox.",
    )
    restart_policy: RestartPolicy = Field(
        default=RestartPolicy.ALWAYS,
        description="When the sidecar restarts a stopped sandbox: Always, OnFailure or Never.",
    )
    pod_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description="Pool pod the sandbox is bound to; set once by the scheduler.",
    )
    pod_namespace: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        description="Namespace of the pool pod; set together with podName.",
    )


class SandboxPhase(StrEnum):
    """Where a sandbox is in its life; see `can_transition` for the legal moves."""

    PENDING = "Pending"
    SCHEDULED = "Scheduled"
    STARTING = "Starting"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    TERMINATING = "Terminating"


_P = SandboxPhase
# Every edge, and why it exists:
_TRANSITIONS: dict[SandboxPhase, frozenset[SandboxPhase]] = {
    # The scheduler binds it; deletion before binding still goes through Terminating.
    _P.PENDING: frozenset({_P.SCHEDULED, _P.TERMINATING}),
    # The sidecar picks it up; the pod may vanish first (Evicted) before anything started.
    _P.SCHEDULED: frozenset({_P.STARTING, _P.FAILED, _P.TERMINATING}),
    # Code fetched and imported; or fetch/import fails (ImportError, checksum, Timeout).
    _P.STARTING: frozenset({_P.RUNNING, _P.FAILED, _P.TERMINATING}),
    # Stops cleanly (Succeeded) or crashes, is OOMKilled or evicted (Failed) for good; or it
    # crashed and the sidecar restarts it in place (Starting, restartCount + 1, CrashLoopBackOff
    # while backing off), as a Pod stays Running while its containers restart.
    _P.RUNNING: frozenset({_P.STARTING, _P.SUCCEEDED, _P.FAILED, _P.TERMINATING}),
    # restartPolicy Always restarts even a clean stop in the same pod.
    _P.SUCCEEDED: frozenset({_P.STARTING, _P.TERMINATING}),
    # Always/OnFailure restart in the same pod (restartCount + 1, with back-off).
    _P.FAILED: frozenset({_P.STARTING, _P.TERMINATING}),
    # Final: the object disappears once the sidecar releases its finalizer.
    _P.TERMINATING: frozenset(),
}


# A namespace-mode sandbox that crashed its pod's shared runtime (os._exit, a segfault): it would
# crash the next shared runtime too, so it is final; subprocess isolation is the fix.
RUNTIME_CRASH_REASON = "RuntimeCrash"
# Failure reasons that would recur identically in any pod: the code or its pin is wrong. A sandbox
# Failed for one of these is neither restarted by its sidecar nor replaced by its replica set
# (replacing would only churn); the fix is a new revision. Every other Failed is replaced.
PERMANENT_FAILURE_REASONS: frozenset[str] = frozenset(
    {"SyntaxError", "ImportError", "HandlerNotFound", "ChecksumMismatch", "InvalidCodeArchive",
     "CodePathNotFound", "InvalidSpec", RUNTIME_CRASH_REASON}
)  # fmt: skip
# The reason of a sandbox whose pod went away (deleted, NotReady too long, Lease expired).
EVICTED_REASON = "Evicted"
# A namespace-mode sandbox needs a native distribution at another version than the one its pod's
# shared runtime already loaded: final on that pod (its sidecar does not restart it there), but
# not in general, so its replica set replaces it and the scheduler places the new one elsewhere.
DEPENDENCY_CONFLICT_REASON = "DependencyConflict"
POD_FINAL_FAILURE_REASONS: frozenset[str] = frozenset({DEPENDENCY_CONFLICT_REASON})


def can_transition(current: SandboxPhase, new: SandboxPhase) -> bool:
    """Whether the phase may move from `current` to `new`; staying put is not a transition."""
    return new in _TRANSITIONS[current]


class SandboxConditionType(StrEnum):
    """Condition types of a Sandbox."""

    SCHEDULED = "Scheduled"
    CODE_READY = "CodeReady"
    READY = "Ready"
    # Whether the sandbox runs behind the full tenant boundary (subprocess: own uid, seccomp,
    # Landlock, cgroup limits); False names what this pod cannot enforce, or says it is in-process.
    ISOLATED = "Isolated"


class SandboxStatus(NestModel):
    """Observed state of a Sandbox: the sidecar of the pod it is bound to writes it (before
    that, only the scheduler, to say why no pod takes it; the lifecycle controller evicts)."""

    phase: SandboxPhase = Field(
        default=SandboxPhase.PENDING,
        description="Pending, Scheduled, Starting, Running, Succeeded, Failed or Terminating.",
    )
    conditions: Conditions = conditions_field("Scheduled, CodeReady and Ready.")
    pod_ip: str | None = Field(default=None, description="IP of the pool pod serving this sandbox.")
    port: int | None = Field(
        default=None, ge=1, le=65535, description="Port of the sandbox on podIP."
    )
    restart_count: int = Field(default=0, ge=0, description="Times the sidecar restarted it.")
    reason: str | None = Field(
        default=None,
        pattern=REASON_PATTERN,
        description="Why it is not running: ImportError, OOMKilled, Timeout, CrashLoopBackOff, "
        "Evicted, Unschedulable, ...",
    )
    message: str | None = Field(default=None, description="Human-readable details of reason.")
    start_time: datetime | None = Field(
        default=None, description="When the sidecar last started it (RFC 3339)."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the status was computed from."
    )


class Sandbox(NestModel):
    """One function instance, hot-plugged into a pool pod."""

    api_version: Literal["nest.sandbox.dev/v1alpha1"] = Field(
        default=API_VERSION, description="nest.sandbox.dev/v1alpha1."
    )
    kind: Literal["Sandbox"] = Field(default=SANDBOX_KIND, description="Sandbox.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Standard metadata.")
    spec: SandboxSpec = Field(description="Desired state.")
    status: SandboxStatus = Field(default_factory=SandboxStatus, description="Observed state.")
