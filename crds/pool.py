"""`SandboxPool`: which pods are Nest's nodes, which isolation they offer, and to which tenants.

Kubernetes answers "which machines may run this pod, and next to whom" with NodePools,
RuntimeClasses, taints and namespace-scoped admission; Nest answers it with this one
cluster-scoped kind. A pool names its pods (a namespace plus a label selector: a pod elsewhere
that merely carries the pool label is not a node, or anyone allowed to create a pod anywhere
could attract other tenants' code), the isolation modes they offer, the namespaces that may use
them, and whether a pod may hold several namespaces' subprocess sandboxes at once (`Shared`) or
serves one namespace at a time (`Dedicated`). Namespace-mode sandboxes never share a pod across
namespaces, whatever the pool says: in-process isolation's trust boundary is the tenant.

The membership and namespace rules are methods here, next to the fields they read, so that the
operator (nodes, scheduling) and admission agree on them word for word.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Literal

from pydantic import Field, field_validator

from crds.common import Conditions, LabelSelector, NestModel, conditions_field
from crds.constants import API_VERSION, POOL_KIND
from crds.sandbox import Isolation

# A Kubernetes namespace name (DNS-1123 label).
NAMESPACE_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class Tenancy(StrEnum):
    """Whether a pool pod may hold several namespaces' (subprocess) sandboxes at once."""

    SHARED = "Shared"
    DEDICATED = "Dedicated"


class PoolConditionType(StrEnum):
    """Condition types of a SandboxPool."""

    # True while at least one member pod is Ready: the pool can take sandboxes.
    AVAILABLE = "Available"


class SandboxPoolSpec(NestModel):
    """Which pods form the pool, what they offer, and to whom."""

    pod_namespace: str = Field(
        min_length=1,
        max_length=63,
        pattern=NAMESPACE_PATTERN,
        description="Namespace whose pods form the pool; a pod elsewhere is never a node of it.",
    )
    pod_selector: LabelSelector = Field(
        description="Pods of podNamespace (labelled nest.sandbox.dev/pool=<pool name>) that are "
        "its nodes; {} selects every such pod of podNamespace.",
    )
    isolation: list[Isolation] = Field(
        # A plain default (pydantic copies it), so the schema carries it for the API server too.
        default=[Isolation.SUBPROCESS, Isolation.NAMESPACE],
        min_length=1,
        description="Isolation modes the pool offers (subprocess, namespace), each at most once.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    namespace_selector: LabelSelector = Field(
        default_factory=LabelSelector,
        description="Namespaces (by their labels) whose sandboxes may use the pool; {} = all.",
    )
    tenancy: Tenancy = Field(
        default=Tenancy.SHARED,
        description="Shared: subprocess sandboxes of allowed namespaces may share a pod. "
        "Dedicated: a pod serves one namespace at a time. Namespace-mode sandboxes share a pod "
        "only with their own namespace's either way.",
    )

    @field_validator("isolation")
    @classmethod
    def _unique_modes(cls, modes: list[Isolation]) -> list[Isolation]:
        # x-kubernetes-list-type: set says the same to the API server.
        duplicates = sorted({m.value for m in modes if modes.count(m) > 1})
        if duplicates:
            raise ValueError(f"duplicate isolation modes: {', '.join(duplicates)}")
        return modes

    def pod_problem(self, pool: str, namespace: str, labels: Mapping[str, str]) -> str | None:
        """Why a pod (labelled with this pool `pool`) is not one of its nodes; None if it is."""
        if namespace != self.pod_namespace:
            return (
                f"namespace {namespace} is not SandboxPool {pool}'s podNamespace "
                f"{self.pod_namespace}"
            )
        if not self.pod_selector.matches(labels):
            wanted = self.pod_selector.to_selector_string()
            return f"its labels do not match SandboxPool {pool}'s podSelector {wanted}"
        return None

    def allows_namespace(self, labels: Mapping[str, str]) -> bool:
        """Whether a namespace with these labels may run sandboxes in the pool."""
        return self.namespace_selector.matches(labels)


class SandboxPoolStatus(NestModel):
    """Observed state of a SandboxPool, written by the operator."""

    pods: int = Field(default=0, ge=0, description="Pods that are nodes of the pool.")
    ready_pods: int = Field(default=0, ge=0, description="Of those, the Ready ones.")
    conditions: Conditions = conditions_field("Available: some member pod is Ready.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the status was computed from."
    )


class SandboxPool(NestModel):
    """A set of pool pods (Nest's nodes) with the isolation and tenants they accept."""

    api_version: Literal["nest.sandbox.dev/v1alpha1"] = Field(
        default=API_VERSION, description="nest.sandbox.dev/v1alpha1."
    )
    kind: Literal["SandboxPool"] = Field(default=POOL_KIND, description="SandboxPool.")
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description="Standard metadata; the name is the pool (Sandbox spec.pool, pod label).",
    )
    spec: SandboxPoolSpec = Field(description="Pods, modes and tenants.")
    status: SandboxPoolStatus = Field(
        default_factory=SandboxPoolStatus, description="Observed state."
    )

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))
