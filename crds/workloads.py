"""`SandboxReplicaSet` and `SandboxDeployment`: the controllers' view of "N copies of a function".

They mirror apps/v1 ReplicaSet and Deployment field for field where the meaning carries over, so
that anyone who knows Kubernetes can read them and `kubectl scale`/rollout habits apply; the
additions are Nest's (autoscaling with reserved instances and scale to zero). Checks that the
API server cannot express without CEL (unavailable on Kubernetes 1.20) are enforced here and
therefore by every Nest component that parses these objects; the cross-field ones (selector and
template labels, binding fields in templates) are plain functions the admission webhook applies
too, so the API server refuses what the models refuse.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Literal

from pydantic import Field, model_validator

from crds.common import (
    Conditions,
    IntOrPercent,
    LabelSelector,
    NestModel,
    TemplateMetadata,
    conditions_field,
)
from crds.constants import (
    API_VERSION,
    DEPLOYMENT_KIND,
    POD_UID_LABEL,
    POOL_LABEL,
    REPLICASET_KIND,
)
from crds.sandbox import SandboxSpec

# The labels the scheduler sets when it binds; a template carrying them would bind every replica.
BINDING_LABELS = (POD_UID_LABEL, POOL_LABEL)
TEMPLATE_BINDS = "a template may not bind its Sandboxes: only the scheduler binds"


def unusable_selector(selector: LabelSelector) -> str | None:
    """Why `selector` can be no workload's, whatever its template: empty, or by binding labels."""
    if selector.is_empty():
        return "must not be empty: it would select every Sandbox of the namespace"
    keys = set(selector.match_labels) | {r.key for r in selector.match_expressions}
    bound = sorted(keys.intersection(BINDING_LABELS))
    if bound:
        return (
            f"must not select by {', '.join(bound)}: the scheduler sets it when it binds a "
            "Sandbox, after creation"
        )
    return None


def selector_problem(selector: LabelSelector, labels: Mapping[str, str]) -> str | None:
    """Why `selector` cannot select Sandboxes labelled `labels`, or None: the one rule the models,
    the admission webhook (for template labels) and the replica set controller (for the labels
    it actually stamps) apply. A replica set whose Sandboxes its selector does not select
    releases each one it creates and creates another, without end."""
    unusable = unusable_selector(selector)
    if unusable is not None:
        return unusable
    if not selector.matches(labels):
        shown = json.dumps(dict(labels), sort_keys=True)
        return (
            f'"{selector.to_selector_string()}" does not match the template\'s labels {shown}: '
            "the Sandboxes it creates would not be its own"
        )
    return None


def template_binding_fields(labels: Mapping[str, str], spec: Mapping[str, object]) -> list[str]:
    """The binding fields a template sets, as paths under the template (`spec.podName`, ...)."""
    fields = [f"spec.{name}" for name in ("podName", "podNamespace") if spec.get(name)]
    return fields + [f"metadata.labels[{label}]" for label in BINDING_LABELS if labels.get(label)]


class SandboxTemplate(NestModel):
    """The Sandbox a workload stamps out: its labels/annotations and its spec."""

    metadata: TemplateMetadata = Field(
        default_factory=TemplateMetadata, description="Labels and annotations of each Sandbox."
    )
    spec: SandboxSpec = Field(description="Spec of each Sandbox.")

    @model_validator(mode="after")
    def _unbound(self) -> SandboxTemplate:
        spec = {"podName": self.spec.pod_name, "podNamespace": self.spec.pod_namespace}
        bound = template_binding_fields(self.metadata.labels, spec)
        if bound:
            raise ValueError("; ".join(f"{path}: {TEMPLATE_BINDS}" for path in bound))
        return self


class _WorkloadSpec(NestModel):
    """What a replica set and a deployment share: how many, which, and from what template."""

    replicas: int = Field(default=1, ge=0, description="Desired number of Sandboxes.")
    selector: LabelSelector = Field(
        description="Sandboxes counted as this workload's; must match the template's labels."
    )
    template: SandboxTemplate = Field(description="Sandbox created for each missing replica.")

    @model_validator(mode="after")
    def _selector_matches_template(self) -> _WorkloadSpec:
        why = selector_problem(self.selector, self.template.metadata.labels)
        if why is not None:
            raise ValueError(f"selector: {why}")
        return self


class SandboxReplicaSetSpec(_WorkloadSpec):
    """Desired state of a SandboxReplicaSet."""


class ReplicaSetConditionType(StrEnum):
    """Condition types of a SandboxReplicaSet, as apps/v1 ReplicaSet."""

    REPLICA_FAILURE = "ReplicaFailure"


class SandboxReplicaSetStatus(NestModel):
    """Observed state of a SandboxReplicaSet, as apps/v1 ReplicaSetStatus."""

    replicas: int = Field(default=0, ge=0, description="Sandboxes that exist and are selected.")
    fully_labeled_replicas: int = Field(
        default=0, ge=0, description="Sandboxes carrying every template label."
    )
    ready_replicas: int = Field(default=0, ge=0, description="Sandboxes whose Ready is True.")
    available_replicas: int = Field(
        default=0, ge=0, description="Ready Sandboxes (Nest has no minReadySeconds)."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation this status describes."
    )
    conditions: Conditions = conditions_field("ReplicaFailure when creations fail.")
    selector: str | None = Field(
        default=None, description="spec.selector in -l syntax, for the scale subresource."
    )


class SandboxReplicaSet(NestModel):
    """Keeps a number of identical Sandboxes, owning them through ownerReferences."""

    api_version: Literal["nest.sandbox.dev/v1alpha1"] = Field(
        default=API_VERSION, description="nest.sandbox.dev/v1alpha1."
    )
    kind: Literal["SandboxReplicaSet"] = Field(
        default=REPLICASET_KIND, description="SandboxReplicaSet."
    )
    metadata: dict[str, Any] = Field(default_factory=dict, description="Standard metadata.")
    spec: SandboxReplicaSetSpec = Field(description="Desired state.")
    status: SandboxReplicaSetStatus = Field(
        default_factory=SandboxReplicaSetStatus, description="Observed state."
    )


class StrategyType(StrEnum):
    """How a deployment replaces old Sandboxes with new ones."""

    ROLLING_UPDATE = "RollingUpdate"
    RECREATE = "Recreate"


class RollingUpdate(NestModel):
    """Bounds of a rolling update, as apps/v1 RollingUpdateDeployment."""

    max_surge: IntOrPercent = Field(
        default="25%", description="Sandboxes above replicas during a rollout (count or %)."
    )
    max_unavailable: IntOrPercent = Field(
        default="25%", description="Sandboxes below replicas during a rollout (count or %)."
    )

    @model_validator(mode="after")
    def _can_progress(self) -> RollingUpdate:
        if self.max_surge in (0, "0%") and self.max_unavailable in (0, "0%"):
            raise ValueError("maxSurge and maxUnavailable must not both be zero")
        return self


class Strategy(NestModel):
    """Rollout strategy of a SandboxDeployment."""

    type: StrategyType = Field(
        default=StrategyType.ROLLING_UPDATE, description="RollingUpdate or Recreate."
    )
    rolling_update: RollingUpdate = Field(
        default_factory=RollingUpdate,
        description="Bounds for RollingUpdate; ignored by Recreate.",
    )


class Autoscaling(NestModel):
    """Request-driven autoscaling (Knative-style stable and panic windows)."""

    min_replicas: int = Field(
        default=0, ge=0, description="Reserved instances kept even when idle; 0 scales to zero."
    )
    max_replicas: int = Field(ge=1, description="Upper bound on replicas.")
    target_concurrency: int | None = Field(
        default=None,
        ge=1,
        description="In-flight invocations per sandbox to aim for; the template's concurrency "
        "when unset.",
    )
    target_utilization: float = Field(
        default=0.7,
        gt=0,
        le=1,
        description="Fraction of targetConcurrency to aim for, leaving headroom for bursts.",
    )
    scale_to_zero_after_seconds: int = Field(
        default=120, ge=0, description="Idle time before the last sandbox goes (minReplicas 0)."
    )
    stable_window_seconds: int = Field(
        default=60, ge=1, le=3600, description="Window averaged for normal scaling decisions."
    )
    panic_window_seconds: int = Field(
        default=6, ge=1, le=3600, description="Short window that detects bursts."
    )
    panic_threshold: float = Field(
        default=2.0,
        gt=1,
        le=10,
        description="Panic (scale up fast, never down) when the panic window's demand exceeds "
        "this multiple of current capacity.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("minReplicas must not exceed maxReplicas")
        if self.panic_window_seconds > self.stable_window_seconds:
            raise ValueError("panicWindowSeconds must not exceed stableWindowSeconds")
        return self


class SandboxDeploymentSpec(_WorkloadSpec):
    """Desired state of a SandboxDeployment."""

    strategy: Strategy = Field(
        default_factory=Strategy, description="How new Sandboxes replace old ones."
    )
    revision_history_limit: int = Field(
        default=10, ge=0, description="Old SandboxReplicaSets kept for rollback."
    )
    paused: bool = Field(default=False, description="Stop rolling out template changes.")
    progress_deadline_seconds: int = Field(
        default=600,
        ge=1,
        description="Seconds without progress before Progressing turns False.",
    )
    autoscaling: Autoscaling | None = Field(
        default=None, description="Scale on demand; replicas is then managed by the autoscaler."
    )


class DeploymentConditionType(StrEnum):
    """Condition types of a SandboxDeployment, as apps/v1 Deployment."""

    AVAILABLE = "Available"
    PROGRESSING = "Progressing"
    # Only with source.build: Unknown (Building) while the build Job runs, True (Succeeded) once
    # status.build.ref holds the package, False (BuildFailed) with the build's own message.
    BUILT = "Built"


class BuildStatus(NestModel):
    """The last build of the template's `source.build` context: what was built, by which Job,
    and the package it produced (the ref the replica sets run)."""

    context: str | None = Field(default=None, description="The context this build is of.")
    ref: str | None = Field(
        default=None, description="The package it produced (registry/repo@sha256:...)."
    )
    natives: list[str] = Field(
        default_factory=list, description="The package's compiled distributions, name==version."
    )
    job: str | None = Field(default=None, description="The build Job (its pod has the log).")
    message: str | None = Field(default=None, description="Why the last build failed.")


class SandboxDeploymentStatus(NestModel):
    """Observed state of a SandboxDeployment, as apps/v1 DeploymentStatus."""

    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation this status describes."
    )
    replicas: int = Field(default=0, ge=0, description="Sandboxes of all its replica sets.")
    updated_replicas: int = Field(default=0, ge=0, description="Sandboxes of the current template.")
    ready_replicas: int = Field(default=0, ge=0, description="Sandboxes whose Ready is True.")
    available_replicas: int = Field(default=0, ge=0, description="Ready Sandboxes.")
    unavailable_replicas: int = Field(
        default=0, ge=0, description="Desired Sandboxes not yet available."
    )
    conditions: Conditions = conditions_field("Available, Progressing, and Built with a build.")
    build: BuildStatus | None = Field(
        default=None, description="The in-cluster build of source.build, when the template has one."
    )
    collision_count: int | None = Field(
        default=None, ge=0, description="Template-hash collisions seen; salts the next hash."
    )
    selector: str | None = Field(
        default=None, description="spec.selector in -l syntax, for the scale subresource."
    )


class SandboxDeployment(NestModel):
    """Declares a function: rolls out its SandboxReplicaSets and optionally autoscales it."""

    api_version: Literal["nest.sandbox.dev/v1alpha1"] = Field(
        default=API_VERSION, description="nest.sandbox.dev/v1alpha1."
    )
    kind: Literal["SandboxDeployment"] = Field(
        default=DEPLOYMENT_KIND, description="SandboxDeployment."
    )
    metadata: dict[str, Any] = Field(default_factory=dict, description="Standard metadata.")
    spec: SandboxDeploymentSpec = Field(description="Desired state.")
    status: SandboxDeploymentStatus = Field(
        default_factory=SandboxDeploymentStatus, description="Observed state."
    )
