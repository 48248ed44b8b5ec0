"""API objects (dicts from the store) into the pure core's snapshot types.

Why: the scheduler and the controllers' logic take small frozen records, not API objects, so they
stay independent of the wire format; this is the one place that knows where each field lives.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from crds import Function, Resources, SandboxDeploymentSpec, SandboxSpec, Strategy
from crds import constants as c
from nest_operator.conditions import Condition
from nest_operator.deployment_logic import DeploymentInfo, DeploymentStatus, ReplicaSetInfo
from nest_operator.replicaset_logic import OwnedSandbox
from nest_operator.scheduler import BoundSandbox, PoolPod, SandboxRequest, parse_cpu, parse_memory
from nest_operator.store import controller_uid

Obj = Mapping[str, Any]
# The CRD's defaults, read from the models that declare them (and generate the CRDs' `default:`),
# never re-typed: the API server fills them in on write, so these only cover objects it has not
# defaulted (tests' fakes, objects from before a default existed). Plain values, not a model
# parse per call: the scheduler converts every pending sandbox on every cycle.
_RESOURCES = Resources()
_STRATEGY = Strategy()
_FUNCTION = Function.model_fields
_SANDBOX = SandboxSpec.model_fields
_DEPLOYMENT = SandboxDeploymentSpec.model_fields
DEFAULT_MEMORY = _RESOURCES.memory
DEFAULT_CPU = _RESOURCES.cpu
DEFAULT_ISOLATION = str(_FUNCTION["isolation"].default)
DEFAULT_POOL = str(_SANDBOX["pool"].default)
DEFAULT_REPLICAS = int(_DEPLOYMENT["replicas"].default)


def timestamp(value: str | None) -> float:
    """RFC 3339 (with or without fractions) to epoch seconds; 0 when absent."""
    if not value:
        return 0.0
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def condition_true(obj: Obj, type_: str) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(cond.get("type") == type_ and cond.get("status") == "True" for cond in conditions)


def code_key(function: Obj) -> str:
    """A digest of where the code comes from: same source, same key, on every pod."""
    source = json.dumps(function.get("source") or {}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def native_distributions(annotations: Mapping[str, str] | None) -> frozenset[str]:
    """The "name==version" JSON list of NATIVE_DISTRIBUTIONS_ANNOTATION; unreadable: none."""
    raw = (annotations or {}).get(c.NATIVE_DISTRIBUTIONS_ANNOTATION)
    try:
        listed = json.loads(raw) if raw else []
    except ValueError:
        return frozenset()
    if not isinstance(listed, list):
        return frozenset()
    return frozenset(item for item in listed if isinstance(item, str))


def pool_pod(pod: Obj, lease: Obj | None) -> PoolPod:
    """A pool pod as the scheduler's node; capacity is what its sidecar declares in the Lease."""
    meta = pod["metadata"]
    annotations = (lease or {}).get("metadata", {}).get("annotations") or {}
    capacity = json.loads(annotations.get(c.CAPACITY_ANNOTATION) or "{}")
    renewed = ((lease or {}).get("spec") or {}).get("renewTime")
    return PoolPod(
        name=meta["name"],
        namespace=meta["namespace"],
        uid=meta["uid"],
        pool=(meta.get("labels") or {}).get(c.POOL_LABEL, ""),
        ready=condition_true(pod, "Ready") and not meta.get("deletionTimestamp"),
        lease_renewed_at=timestamp(renewed) if renewed else None,
        cordoned=(meta.get("annotations") or {}).get(c.CORDON_ANNOTATION) == "true",
        memory=int(capacity.get("memory_bytes", 0)),
        cpu=int(capacity.get("cpu_millis", 0)),
        max_sandboxes=int(capacity.get("max_sandboxes", 0)),
        isolation=frozenset(capacity.get("isolation") or ()),
        native_distributions=native_distributions(annotations),
        leaving="being deleted" if meta.get("deletionTimestamp") else None,
    )


def _function(sandbox: Obj) -> Obj:
    function: Obj = (sandbox.get("spec") or {}).get("function") or {}
    return function


def _resources(sandbox: Obj) -> tuple[int, int]:
    resources = _function(sandbox).get("resources") or {}
    return (
        parse_memory(resources.get("memory") or DEFAULT_MEMORY),
        parse_cpu(resources.get("cpu") or DEFAULT_CPU),
    )


def bound_sandbox(sandbox: Obj) -> BoundSandbox | None:
    """A bound sandbox as the scheduler counts it; None while unbound."""
    pod_uid = (sandbox["metadata"].get("labels") or {}).get(c.POD_UID_LABEL)
    if not pod_uid:
        return None
    memory, cpu = _resources(sandbox)
    function = _function(sandbox)
    return BoundSandbox(
        sandbox["metadata"]["uid"], pod_uid, memory, cpu,
        controller_uid(sandbox), code_key(function),
        sandbox["metadata"]["namespace"], function.get("isolation") or DEFAULT_ISOLATION,
        _promised_natives(sandbox),
    )  # fmt: skip


def _promised_natives(sandbox: Obj) -> frozenset[str]:
    """The natives a bound sandbox will have its pod's runtime load: none once it failed (one
    refused with DependencyConflict never loaded its own)."""
    if (sandbox.get("status") or {}).get("phase") == "Failed":
        return frozenset()
    return native_distributions(sandbox["metadata"].get("annotations"))


def sandbox_request(sandbox: Obj) -> SandboxRequest:
    memory, cpu = _resources(sandbox)
    meta = sandbox["metadata"]
    return SandboxRequest(
        name=meta["name"],
        namespace=meta["namespace"],
        uid=meta["uid"],
        pool=(sandbox.get("spec") or {}).get("pool") or DEFAULT_POOL,
        memory=memory,
        cpu=cpu,
        isolation=_function(sandbox).get("isolation") or DEFAULT_ISOLATION,
        code_digest=code_key(_function(sandbox)),
        replica_set=controller_uid(sandbox),
        native_distributions=native_distributions(meta.get("annotations")),
    )


def owned_sandbox(sandbox: Obj) -> OwnedSandbox:
    meta, status = sandbox["metadata"], sandbox.get("status") or {}
    return OwnedSandbox(
        name=meta["name"],
        phase=status.get("phase") or "Pending",
        ready=condition_true(sandbox, "Ready"),
        pod_uid=(meta.get("labels") or {}).get(c.POD_UID_LABEL),
        created_at=timestamp(meta.get("creationTimestamp")),
        deleting=bool(meta.get("deletionTimestamp")),
        labels=dict(meta.get("labels") or {}),
        reason=status.get("reason"),
    )


def replicaset_info(rs: Obj) -> ReplicaSetInfo:
    meta, spec, status = rs["metadata"], rs.get("spec") or {}, rs.get("status") or {}
    return ReplicaSetInfo(
        name=meta["name"],
        revision=int((meta.get("annotations") or {}).get(c.REVISION_ANNOTATION) or 0),
        replicas=int(spec.get("replicas", DEFAULT_REPLICAS)),
        template=spec.get("template") or {},
        created_at=timestamp(meta.get("creationTimestamp")),
        status_replicas=int(status.get("replicas", 0)),
        ready_replicas=int(status.get("readyReplicas", 0)),
        available_replicas=int(status.get("availableReplicas", 0)),
        conditions=conditions_from(status),
    )


def deployment_info(d: Obj, conditions: tuple[Any, ...]) -> DeploymentInfo:
    meta, spec, status = d["metadata"], d.get("spec") or {}, d.get("status") or {}
    # The strategy is small and its defaults nest (rollingUpdate's maxSurge/maxUnavailable), so
    # it is parsed with its model rather than read key by key.
    strategy = Strategy.model_validate(spec["strategy"]) if spec.get("strategy") else _STRATEGY
    return DeploymentInfo(
        name=meta["name"],
        generation=int(meta.get("generation", 1)),
        replicas=int(spec.get("replicas", DEFAULT_REPLICAS)),
        template=spec.get("template") or {},
        strategy=strategy.type.value,
        max_surge=strategy.rolling_update.max_surge,
        max_unavailable=strategy.rolling_update.max_unavailable,
        revision_history_limit=int(
            spec.get("revisionHistoryLimit", _DEPLOYMENT["revision_history_limit"].default)
        ),
        paused=bool(spec.get("paused", _DEPLOYMENT["paused"].default)),
        progress_deadline_seconds=int(
            spec.get("progressDeadlineSeconds", _DEPLOYMENT["progress_deadline_seconds"].default)
        ),
        status=DeploymentStatus(
            observed_generation=int(status.get("observedGeneration", 0)),
            replicas=int(status.get("replicas", 0)),
            updated_replicas=int(status.get("updatedReplicas", 0)),
            ready_replicas=int(status.get("readyReplicas", 0)),
            available_replicas=int(status.get("availableReplicas", 0)),
            unavailable_replicas=int(status.get("unavailableReplicas", 0)),
            conditions=conditions,
            collision_count=int(status.get("collisionCount", 0)),
        ),
    )


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def conditions_from(status: Obj) -> tuple[Condition, ...]:
    return tuple(
        Condition(
            type=cond["type"],
            status=cond["status"],
            reason=cond.get("reason") or "",
            message=cond.get("message") or "",
            last_transition_time=timestamp(cond.get("lastTransitionTime")),
            last_update_time=timestamp(cond.get("lastUpdateTime")),
        )
        for cond in status.get("conditions") or []
    )


def conditions_to(conditions: tuple[Condition, ...]) -> list[dict[str, Any]]:
    out = []
    for cond in conditions:
        item: dict[str, Any] = {"type": cond.type, "status": cond.status}
        if cond.reason:
            item["reason"] = cond.reason
        if cond.message:
            item["message"] = cond.message
        item["lastTransitionTime"] = rfc3339(cond.last_transition_time)
        if cond.last_update_time:
            item["lastUpdateTime"] = rfc3339(cond.last_update_time)
        out.append(item)
    return out
