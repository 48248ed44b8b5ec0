"""Nest's API: pydantic models of its kinds and the CRDs generated from them.

Import the models from here (`from crds import Sandbox`) and the shared names (group, labels,
finalizer, ...) from `crds.constants`. This package depends on no other Nest package, so
every component can use it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# The models load on first use (PEP 562), so `crds.constants` costs no pydantic: the `nest`
# command reads only names from here on its common paths (issue 14).
if TYPE_CHECKING:
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
    from crds.pool import (
        PoolConditionType,
        SandboxPool,
        SandboxPoolSpec,
        SandboxPoolStatus,
        Tenancy,
    )
    from crds.sandbox import (
        CodeSource,
        ConfigMapSource,
        Function,
        Interface,
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
    "Interface",
    "Isolation",
    "LabelSelector",
    "LabelSelectorRequirement",
    "ManifestError",
    "NestModel",
    "PoolConditionType",
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
    "SandboxPool",
    "SandboxPoolSpec",
    "SandboxPoolStatus",
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
    "Tenancy",
    "can_transition",
]

_MODULES = ("common", "endpoints", "errors", "pool", "sandbox", "workloads")

if not TYPE_CHECKING:  # mypy reads the imports above, and still flags a misspelt name

    def __getattr__(name: str) -> object:
        if name in __all__:
            for module in _MODULES:
                found = importlib.import_module(f"crds.{module}").__dict__
                if name in found:
                    globals()[name] = found[name]
                    return found[name]
        raise AttributeError(f"module 'crds' has no attribute {name!r}")
