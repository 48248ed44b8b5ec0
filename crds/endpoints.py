"""`SandboxEndpoints`: where a SandboxDeployment's sandboxes can be reached, for routing.

The gateway and downstream platforms watch one small object per function instead of every
Sandbox, just as kube-proxy watches Endpoints rather than Pods.

The addresses live in `status`, not `spec`. They are observations the endpoints controller makes
of Sandbox status, never an intent anyone declares; keeping them in status means
`metadata.generation` does not churn on every sandbox start, RBAC can grant the controller only
`sandboxendpoints/status`, and the object reads like every other Nest object (spec = wishes,
status = facts). There is no `spec` at all: the object's name, equal to its SandboxDeployment's,
is the only input. The cost is one extra call on creation (create, then update status).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_serializer, model_validator

from crds.common import NestModel
from crds.constants import API_VERSION, ENDPOINTS_KIND


class EndpointAddress(NestModel):
    """One sandbox that can (or soon can) serve invocations."""

    sandbox: str = Field(min_length=1, description="Name of the Sandbox.")
    uid: str = Field(min_length=1, description="UID of the Sandbox; names are reused, UIDs not.")
    pod_name: str = Field(min_length=1, description="Pool pod serving it.")
    pod_ip: str | None = Field(default=None, description="IP of that pod; unset until it has one.")
    port: int | None = Field(default=None, ge=1, le=65535, description="Port on podIP.")
    revision: int | None = Field(
        default=None,
        ge=0,
        description="Deployment revision (nest.sandbox.dev/revision) the sandbox runs.",
    )


class SandboxEndpointsStatus(NestModel):
    """The addresses of a SandboxDeployment's sandboxes, split by readiness."""

    ready: list[EndpointAddress] = Field(
        default_factory=list, description="Sandboxes whose Ready condition is True."
    )
    not_ready: list[EndpointAddress] = Field(
        default_factory=list, description="Bound sandboxes not (yet, or no longer) Ready."
    )
    ready_count: int = Field(
        default=0, ge=0, description="len(ready); derived, for printer columns."
    )
    not_ready_count: int = Field(
        default=0, ge=0, description="len(notReady); derived, for printer columns."
    )

    @model_validator(mode="after")
    def _derive_counts(self) -> SandboxEndpointsStatus:
        # Printer columns cannot count a list on Kubernetes 1.20, so the counts are stored;
        # recomputing them here keeps them from ever disagreeing with the lists.
        self.ready_count = len(self.ready)
        self.not_ready_count = len(self.not_ready)
        return self

    @field_serializer("ready_count")
    def _serialize_ready_count(self, _: int) -> int:
        # Lists are appended to after parsing; the wire value is always recounted.
        return len(self.ready)

    @field_serializer("not_ready_count")
    def _serialize_not_ready_count(self, _: int) -> int:
        return len(self.not_ready)


class SandboxEndpoints(NestModel):
    """Routing table of one SandboxDeployment (same name, same namespace)."""

    api_version: Literal["nest.sandbox.dev/v1alpha1"] = Field(
        default=API_VERSION, description="nest.sandbox.dev/v1alpha1."
    )
    kind: Literal["SandboxEndpoints"] = Field(
        default=ENDPOINTS_KIND, description="SandboxEndpoints."
    )
    metadata: dict[str, Any] = Field(default_factory=dict, description="Standard metadata.")
    status: SandboxEndpointsStatus = Field(
        default_factory=SandboxEndpointsStatus, description="Observed addresses."
    )
