"""The function API's models: what downstream platforms (and the CLI) send and receive.

A platform thinks in functions, not in SandboxDeployments, so requests are flat (name, handler,
files, replicas, autoscaling bounds) while responses embed the `crds` models' own shapes (spec,
status, endpoint addresses) so nothing is re-described by hand. The OpenAPI components are
generated from these classes (gateway.openapi); the wire format is the CRDs' (camelCase, unknown
fields rejected).
"""

from __future__ import annotations

from pydantic import ConfigDict, Field, model_validator
from pydantic.config import JsonDict

from crds import (
    ConfigMapSource,
    Interface,
    Isolation,
    NestModel,
    SandboxDeploymentSpec,
    SandboxDeploymentStatus,
    SandboxEndpointsStatus,
    SandboxSpec,
    SandboxStatus,
)
from crds.common import LABEL_VALUE_PATTERN, ConditionStatus, Quantity
from crds.sandbox import BuildSource, OciSource
from crds.validation import HANDLER_PATTERN, SHA256_PATTERN

# RFC 1123 label: what Kubernetes accepts as a namespace name, and Nest as a function name (it
# also becomes a label value and part of generated object names).
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_LABEL_MAX = 63


class CodeReference(NestModel):
    """Code that is not uploaded: a ConfigMap, a pinned URL, a path in the pool image, a
    function package (code and dependency layers) in an OCI registry, by digest, or a build
    context (`POST .../contexts`) the cluster builds into a package."""

    model_config = NestModel.model_config | {
        "json_schema_extra": {
            "oneOf": [
                {"required": ["configMap"]},
                {"required": ["url", "sha256"]},
                {"required": ["path"]},
                {"required": ["oci"]},
                {"required": ["build"]},
            ]
        }
    }

    config_map: ConfigMapSource | None = Field(
        default=None, description="A ConfigMap of the function's namespace whose keys are files."
    )
    url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        max_length=2048,
        description="HTTP(S) address of a .zip/.tar.gz or a .py file; needs sha256.",
    )
    sha256: str | None = Field(
        default=None, pattern=SHA256_PATTERN, description="Lower-case hex SHA-256 of url."
    )
    path: str | None = Field(
        default=None, pattern=r"^/", description="Absolute path of code in the pool image."
    )
    oci: OciSource | None = Field(
        default=None, description="A function package (`nest deploy DIR`) in a registry."
    )
    build: BuildSource | None = Field(
        default=None,
        description="A build context (the `context` an upload to /contexts answered) that the "
        "cluster builds into a package with its requirements; see the function's `build`.",
    )


class AutoscalingRequest(NestModel):
    """Scale on demand between minReplicas (reserved, 0 = scale to zero) and maxReplicas."""

    min_replicas: int = Field(default=0, ge=0, le=10000, description="Reserved instances.")
    max_replicas: int = Field(ge=1, le=10000, description="Upper bound on replicas.")
    target_concurrency: int | None = Field(
        default=None, ge=1, le=1000, description="In-flight invocations per sandbox to aim for."
    )


EXAMPLE_CODE: JsonDict = {"main.py": "def handler(event, context):\n    return {'hello': event}\n"}


class FunctionUpdate(NestModel):
    """A function's desired state; PUT replaces it whole (omitted replicas keep the current)."""

    model_config = NestModel.model_config | ConfigDict(
        json_schema_extra={
            "oneOf": [{"required": ["files"]}, {"required": ["code"]}],
            "examples": [{"handler": "main:handler", "files": EXAMPLE_CODE, "replicas": 0}],
        }
    )

    handler: str = Field(pattern=HANDLER_PATTERN, description="Entry point as module:function.")
    files: dict[str, str] | None = Field(
        default=None,
        min_length=1,
        description="Uploaded code: files by relative path with their content.",
    )
    code: CodeReference | None = Field(
        default=None, description="Code by reference instead of uploaded files."
    )
    isolation: Isolation = Field(
        default=Isolation.SUBPROCESS, description="subprocess or namespace (trusted code)."
    )
    interface: Interface = Field(
        default=Interface.NEST,
        description="nest, apigateway-v1, apigateway-v2 (a Lambda handler), asgi or wsgi (the "
        "handler names the app).",
    )
    replicas: int | None = Field(
        default=None,
        ge=0,
        le=10000,
        description="Desired sandboxes; default 1, or autoscaling.minReplicas when autoscaled.",
    )
    memory: Quantity | None = Field(default=None, description="Memory limit per sandbox.")
    cpu: Quantity | None = Field(default=None, description="CPU share per sandbox.")
    timeout_seconds: int = Field(
        default=30,
        ge=1,
        le=900,
        description="Longest one invocation may run (streamed: to the first byte, and between "
        "chunks).",
    )
    max_duration_seconds: int = Field(
        default=300, ge=1, le=3600, description="Longest a streamed answer may last in all."
    )
    concurrency: int = Field(
        default=1, ge=1, le=1000, description="Invocations in flight per sandbox."
    )
    env: dict[str, str] = Field(default_factory=dict, description="Environment variables.")
    pool: str = Field(
        default="default",
        min_length=1,
        max_length=63,
        pattern=LABEL_VALUE_PATTERN,
        description="Pool whose pods may run the function.",
    )
    autoscaling: AutoscalingRequest | None = Field(
        default=None, description="Request-driven autoscaling; fixed replicas when unset."
    )

    @model_validator(mode="after")
    def _one_code_source(self) -> FunctionUpdate:
        if (self.files is None) == (self.code is None):
            raise ValueError("exactly one of files (uploaded code) or code (a reference) is needed")
        return self


class FunctionCreate(FunctionUpdate):
    """A new function: its name plus its desired state."""

    model_config = FunctionUpdate.model_config | ConfigDict(
        json_schema_extra={
            "oneOf": [{"required": ["files"]}, {"required": ["code"]}],
            "examples": [
                {
                    "name": "hello",
                    "handler": "main:handler",
                    "files": EXAMPLE_CODE,
                    "isolation": "namespace",
                    "autoscaling": {"maxReplicas": 2},
                },
            ],
        }
    )

    name: str = Field(
        pattern=DNS_LABEL_PATTERN,
        max_length=DNS_LABEL_MAX,
        description="Function name (RFC 1123 label); also the SandboxDeployment's name.",
    )


class Revision(NestModel):
    """One rollout revision: a SandboxReplicaSet of the function."""

    revision: int = Field(ge=0, description="nest.sandbox.dev/revision of the replica set.")
    name: str = Field(description="Name of the SandboxReplicaSet.")
    template_hash: str | None = Field(default=None, description="Template hash label.")
    replicas: int = Field(default=0, ge=0, description="Desired sandboxes of this revision.")
    ready_replicas: int = Field(default=0, ge=0, description="Ready sandboxes of this revision.")
    handler: str = Field(description="Entry point of this revision.")
    created: str | None = Field(default=None, description="Creation time (RFC 3339).")


class BuildView(NestModel):
    """The in-cluster build of a function's `code.build` context, from its status."""

    status: ConditionStatus = Field(
        description="The Built condition: Unknown while building, True when built, False failed."
    )
    reason: str | None = Field(
        default=None, description="Building, Succeeded or BuildFailed (the condition's reason)."
    )
    message: str | None = Field(
        default=None, description="What was built, or why it failed (the build's own words)."
    )
    context: str | None = Field(default=None, description="The context being built.")
    ref: str | None = Field(default=None, description="The package built (registry/repo@sha256).")
    job: str | None = Field(
        default=None, description="The build Job of the function's namespace (its pod's log)."
    )


class ContextUpload(NestModel):
    """A stored build context: the reference to put into `code.build.context`."""

    context: str = Field(description="registry/repository@sha256:<digest> of the context.")
    files: int = Field(ge=1, description="Files in the context.")
    bytes: int = Field(ge=1, description="Size of the uploaded .tar.gz.")


class FunctionView(NestModel):
    """A function as stored: the SandboxDeployment's spec and status, its endpoints, revisions."""

    name: str = Field(description="Function name.")
    namespace: str = Field(description="Namespace.")
    uid: str | None = Field(default=None, description="UID of the SandboxDeployment.")
    resource_version: str | None = Field(default=None, description="For optimistic updates.")
    spec: SandboxDeploymentSpec = Field(description="The SandboxDeployment's spec.")
    status: SandboxDeploymentStatus = Field(description="The SandboxDeployment's status.")
    endpoints: SandboxEndpointsStatus = Field(description="Ready and not-ready sandboxes.")
    build: BuildView | None = Field(
        default=None, description="The in-cluster build, for a function with code.build."
    )
    revisions: list[Revision] = Field(
        default_factory=list, description="Revisions, oldest first (single-function reads only)."
    )


class FunctionList(NestModel):
    """The functions of a namespace."""

    items: list[FunctionView] = Field(description="Functions, by name.")


class Scale(NestModel):
    """Desired and observed replicas, as the scale subresource."""

    replicas: int = Field(ge=0, le=10000, description="Desired sandboxes.")
    status_replicas: int | None = Field(default=None, ge=0, description="Existing sandboxes.")
    selector: str | None = Field(default=None, description="Label selector of its sandboxes.")


class ScaleRequest(NestModel):
    """New desired replicas."""

    replicas: int = Field(ge=0, le=10000, description="Desired sandboxes.")


class RolloutStatus(NestModel):
    """Where a rollout is, as `kubectl rollout status` reports it."""

    revision: int | None = Field(default=None, description="Current revision.")
    complete: bool = Field(description="Every desired sandbox runs the current template.")
    failed: bool = Field(default=False, description="The progress deadline was exceeded.")
    message: str = Field(description="Human-readable state.")
    replicas: int = Field(ge=0, description="Desired sandboxes.")
    updated_replicas: int = Field(ge=0, description="Sandboxes of the current template.")
    ready_replicas: int = Field(ge=0, description="Ready sandboxes.")
    available_replicas: int = Field(ge=0, description="Available sandboxes.")


class RolloutUndo(NestModel):
    """Roll back to a revision (the previous one when unset)."""

    to_revision: int | None = Field(default=None, ge=1, description="Revision to return to.")


class SandboxItem(NestModel):
    """One sandbox of a function."""

    name: str = Field(description="Sandbox name.")
    uid: str | None = Field(default=None, description="Sandbox UID.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels.")
    spec: SandboxSpec = Field(description="The Sandbox's spec.")
    status: SandboxStatus = Field(description="The Sandbox's status.")


class SandboxItemList(NestModel):
    """The sandboxes of a function."""

    items: list[SandboxItem] = Field(description="Sandboxes, by name.")


class Endpoints(NestModel):
    """A function's routing table."""

    name: str = Field(description="Function name.")
    namespace: str = Field(description="Namespace.")
    status: SandboxEndpointsStatus = Field(description="Ready and not-ready sandboxes.")


class ProblemFieldError(NestModel):
    """One rejected input."""

    field: str = Field(description="Dotted wire path of the field, or a parameter name.")
    message: str = Field(description="Why it was rejected.")


class ProblemDetails(NestModel):
    """An RFC 7807 problem document (application/problem+json)."""

    type: str = Field(description="URI identifying the kind of problem.")
    title: str = Field(description="Short summary of the kind.")
    status: int = Field(description="HTTP status code.")
    detail: str = Field(description="What went wrong, naming the field or cause.")
    instance: str | None = Field(default=None, description="The request path.")
    errors: list[ProblemFieldError] = Field(default_factory=list, description="Field errors.")
