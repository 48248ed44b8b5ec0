"""Nest's API: pydantic models of the four kinds and the CRDs generated from them.

Import the models from here (`from crds import Sandbox`) and the shared names (group, labels,
finalizer, ...) from `crds.constants`. This package depends on no other Nest package, so
every component can use it.
"""

from crds.common import (
    Condition,
    ConditionStatus,
    LabelSelector,
    LabelSelectorRequirement,
    NestModel,
    SelectorOperator,
    TemplateMetadata,
)
from crds.endpoints import EndpointAddress, SandboxEndpoints, SandboxEndpointsStatus
from crds.errors import CrdError, ManifestError, SchemaError
from crds.sandbox import (
    CodeSource,
    ConfigMapSource,
    Function,
    Isolation,
    Resources,
    RestartPolicy,
    Sandbox,
    SandboxConditionType,
    SandboxPhase,
    SandboxSpec,
    SandboxStatus,
    can_transition,
)
from crds.workloads import (
    Autoscaling,
    DeploymentConditionType,
    ReplicaSetConditionType,
    RollingUpdate,
    SandboxDeployment,
    SandboxDeploymentSpec,
    SandboxDeploymentStatus,
    SandboxReplicaSet,
    SandboxReplicaSetSpec,
    SandboxReplicaSetStatus,
    SandboxTemplate,
    Strategy,
    StrategyType,
)

__all__ = [
    "Autoscaling",
    "CodeSource",
    "Condition",
    "ConditionStatus",
    "ConfigMapSource",
    "CrdError",
    "DeploymentConditionType",
    "EndpointAddress",
    "Function",
    "Isolation",
    "LabelSelector",
    "LabelSelectorRequirement",
    "ManifestError",
    "NestModel",
    "ReplicaSetConditionType",
    "Resources",
    "RestartPolicy",
    "RollingUpdate",
    "Sandbox",
    "SandboxConditionType",
    "SandboxDeployment",
    "SandboxDeploymentSpec",
    "SandboxDeploymentStatus",
    "SandboxEndpoints",
    "SandboxEndpointsStatus",
    "SandboxPhase",
    "SandboxReplicaSet",
    "SandboxReplicaSetSpec",
    "SandboxReplicaSetStatus",
    "SandboxSpec",
    "SandboxStatus",
    "SandboxTemplate",
    "SchemaError",
    "SelectorOperator",
    "Strategy",
    "StrategyType",
    "TemplateMetadata",
    "can_transition",
]
