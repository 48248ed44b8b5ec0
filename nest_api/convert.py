"""Pure conversions between the function API and the four kinds.

A platform's flat function request becomes a SandboxDeployment here, and stored objects become
the views the API returns; rollout status and undo are decided here too, from objects already
read. Nothing in this module performs I/O, so each rule has a fast unit test and the shells (the
gateway's HTTP handlers, the CLI's commands) only read, call one function and write.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from crds import (
    Autoscaling,
    CodeSource,
    ConditionStatus,
    DeploymentConditionType,
    Function,
    LabelSelector,
    Resources,
    Sandbox,
    SandboxDeployment,
    SandboxDeploymentSpec,
    SandboxEndpointsStatus,
    SandboxReplicaSet,
    SandboxSpec,
    SandboxTemplate,
    TemplateMetadata,
)
from crds.constants import FUNCTION_LABEL, TEMPLATE_HASH_LABEL
from nest_api import models as m
from nest_api.errors import BadRequest, NotFound, Upstream, invalid
from nest_api.revisions import owned_replicasets as owned_replicasets
from nest_api.revisions import revision_of as _revision_of

# FUNCTION_LABEL (crds.constants) selects a function's sandboxes: every template written here
# carries it, and the sidecar reports its value to the code as context.function_name.
M = TypeVar("M", bound=BaseModel)
# The message of a build not yet started for the template's context (build_view).
BUILD_NOT_STARTED = "waiting for the build to start"


def _build(model: type[M], what: str, prefix: str, **values: Any) -> M:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise invalid(exc, what, prefix) from exc


def _source(req: m.FunctionUpdate) -> CodeSource:
    if req.files is not None:
        return _build(CodeSource, "code", "files", inline=req.files)
    assert req.code is not None  # the model guarantees exactly one
    ref = req.code.model_dump(exclude_none=True)
    return _build(CodeSource, "code", "code", **ref)


def template_for(name: str, req: m.FunctionUpdate) -> SandboxTemplate:
    """The Sandbox template of a function request; raises InvalidInput naming the field."""
    resources = {k: v for k, v in (("memory", req.memory), ("cpu", req.cpu)) if v is not None}
    function = _build(
        Function, "function", "",
        handler=req.handler,
        source=_source(req),
        isolation=req.isolation,
        interface=req.interface,
        resources=_build(Resources, "resources", "", **resources),
        timeout_seconds=req.timeout_seconds,
        max_duration_seconds=req.max_duration_seconds,
        concurrency=req.concurrency,
        env=req.env,
    )  # fmt: skip
    spec = _build(SandboxSpec, "function", "", function=function, pool=req.pool)
    metadata = TemplateMetadata(labels={FUNCTION_LABEL: name})
    return _build(SandboxTemplate, "function", "", metadata=metadata, spec=spec)


def autoscaling_for(req: m.FunctionUpdate) -> Autoscaling | None:
    if req.autoscaling is None:
        return None
    values = req.autoscaling.model_dump(exclude_none=True, by_alias=False)
    return _build(Autoscaling, "autoscaling", "autoscaling", **values)


def desired_replicas(req: m.FunctionUpdate, current: int | None) -> int:
    """Explicit replicas win; an update keeps the current count; a new function starts at
    minReplicas when autoscaled (0 = created at zero) and at 1 otherwise."""
    if req.replicas is not None:
        return req.replicas
    if current is not None:
        return current
    return req.autoscaling.min_replicas if req.autoscaling is not None else 1


def deployment_for(namespace: str, req: m.FunctionCreate) -> SandboxDeployment:
    """A new SandboxDeployment for a function create request."""
    spec = _build(
        SandboxDeploymentSpec, "function", "",
        replicas=desired_replicas(req, None),
        selector=LabelSelector(match_labels={FUNCTION_LABEL: req.name}),
        template=template_for(req.name, req),
        autoscaling=autoscaling_for(req),
    )  # fmt: skip
    metadata = {"name": req.name, "namespace": namespace, "labels": {FUNCTION_LABEL: req.name}}
    return SandboxDeployment(metadata=metadata, spec=spec)


def updated_deployment(stored: dict[str, Any], req: m.FunctionUpdate) -> dict[str, Any]:
    """`stored` with its function replaced by `req`; selector, strategy and history are kept,
    and metadata.resourceVersion stays so a concurrent change makes the write fail (409)."""
    current = parse(SandboxDeployment, stored, "SandboxDeployment")
    name = str(stored["metadata"]["name"])
    template = template_for(name, req)
    # Labels another tool added to the template stay, as long as the selector still matches.
    template.metadata.labels = {**current.spec.template.metadata.labels, **template.metadata.labels}
    spec = current.spec.model_copy(
        update={
            "replicas": desired_replicas(req, current.spec.replicas),
            "template": template,
            "autoscaling": autoscaling_for(req),
        }
    )
    validated = _build(SandboxDeploymentSpec, "function", "", **spec.model_dump())
    return {**stored, "spec": validated.to_k8s()}


def parse(model: type[M], obj: dict[str, Any], what: str) -> M:
    """A stored object as its model; one that does not fit is the cluster's fault (502)."""
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        name = obj.get("metadata", {}).get("name", "?")
        raise Upstream(f"stored {what} {name} does not match the API: {exc}") from exc


def revisions(deployment: dict[str, Any], items: list[dict[str, Any]]) -> list[m.Revision]:
    found = []
    for obj in owned_replicasets(deployment, items):
        rs = parse(SandboxReplicaSet, obj, "SandboxReplicaSet")
        found.append(
            m.Revision(
                revision=_revision_of(obj) or 0,
                name=str(obj["metadata"]["name"]),
                template_hash=rs.spec.template.metadata.labels.get(TEMPLATE_HASH_LABEL),
                replicas=rs.spec.replicas,
                ready_replicas=rs.status.ready_replicas,
                handler=rs.spec.template.spec.function.handler,
                created=obj["metadata"].get("creationTimestamp"),
            )
        )
    return found


def build_view(deployment: SandboxDeployment) -> m.BuildView | None:
    """The build of a function whose template has `source.build` (None otherwise), the one
    reading of status.build and the Built condition for the gateway's views and the CLI's wait.

    Both belong to the template's context only when status.build names it: until the operator
    has started that build they are an older context's, and this one is Unknown, without a
    reason, "waiting for the build to start" (an older build's True must not read as this one's).
    """
    source = deployment.spec.template.spec.function.source.build
    if source is None:
        return None
    status = deployment.status.build
    if status is None or status.context != source.context:
        return m.BuildView(
            status=ConditionStatus.UNKNOWN, message=BUILD_NOT_STARTED, context=source.context
        )
    built = next(
        (c for c in deployment.status.conditions if c.type == DeploymentConditionType.BUILT), None
    )
    return m.BuildView(
        status=built.status if built is not None else ConditionStatus.UNKNOWN,
        reason=built.reason if built is not None else None,
        message=built.message if built is not None else BUILD_NOT_STARTED,
        context=source.context,
        ref=status.ref,
        job=status.job,
    )


def function_view(
    deployment: dict[str, Any],
    endpoints: dict[str, Any] | None,
    replicasets: list[dict[str, Any]] | None = None,
) -> m.FunctionView:
    """The API view of a stored function; replica sets only for single reads."""
    parsed = parse(SandboxDeployment, deployment, "SandboxDeployment")
    meta = deployment["metadata"]
    status = SandboxEndpointsStatus.model_validate((endpoints or {}).get("status") or {})
    return m.FunctionView(
        name=meta["name"],
        namespace=meta.get("namespace", ""),
        uid=meta.get("uid"),
        resource_version=meta.get("resourceVersion"),
        spec=parsed.spec,
        status=parsed.status,
        endpoints=status,
        build=build_view(parsed),
        revisions=revisions(deployment, replicasets or []),
    )


def rollout_status(deployment: dict[str, Any]) -> m.RolloutStatus:
    """`kubectl rollout status` for a SandboxDeployment, decided from the stored object."""
    parsed = parse(SandboxDeployment, deployment, "SandboxDeployment")
    spec, status = parsed.spec, parsed.status
    generation = deployment["metadata"].get("generation", 0)
    counts: dict[str, Any] = {
        "revision": _revision_of(deployment),
        "replicas": spec.replicas,
        "updated_replicas": status.updated_replicas,
        "ready_replicas": status.ready_replicas,
        "available_replicas": status.available_replicas,
    }
    progressing = next(
        (c for c in status.conditions if c.type == DeploymentConditionType.PROGRESSING), None
    )
    if progressing is not None and progressing.reason == "ProgressDeadlineExceeded":
        message = f"rollout of {deployment['metadata']['name']} exceeded its progress deadline"
        return m.RolloutStatus(complete=False, failed=True, message=message, **counts)
    if status.observed_generation is None or status.observed_generation < generation:
        message = "waiting for the rollout to be observed"
    elif status.updated_replicas < spec.replicas:
        message = f"{status.updated_replicas} of {spec.replicas} new sandboxes updated"
    elif status.replicas > status.updated_replicas:
        old = status.replicas - status.updated_replicas
        message = f"{old} old sandboxes pending termination"
    elif status.available_replicas < status.updated_replicas:
        message = f"{status.available_replicas} of {status.updated_replicas} sandboxes available"
    else:
        return m.RolloutStatus(complete=True, message="rolled out", **counts)
    return m.RolloutStatus(complete=False, message=message, **counts)


def undo_template(
    deployment: dict[str, Any], replicasets: list[dict[str, Any]], to_revision: int | None
) -> tuple[dict[str, Any], int]:
    """The template to write back for `rollout undo`, and its revision.

    As for Deployments: the previous revision by default (the highest below the current one),
    without the replica set's own template-hash label, which the controller adds again.
    """
    owned = owned_replicasets(deployment, replicasets)
    by_revision = {_revision_of(rs) or 0: rs for rs in owned}
    current = _revision_of(deployment) or max(by_revision, default=0)
    if to_revision is None:
        older = [r for r in by_revision if r < current]
        if not older:
            raise BadRequest(f"{deployment['metadata']['name']} has no previous revision")
        to_revision = max(older)
    if to_revision not in by_revision:
        known = ", ".join(str(r) for r in sorted(by_revision)) or "none"
        raise NotFound(f"revision {to_revision} not found (known revisions: {known})")
    rs = parse(SandboxReplicaSet, by_revision[to_revision], "SandboxReplicaSet")
    template = rs.spec.template.model_copy(deep=True)
    template.metadata.labels.pop(TEMPLATE_HASH_LABEL, None)
    return template.to_k8s(), to_revision


def sandbox_items(items: list[dict[str, Any]]) -> m.SandboxItemList:
    found = []
    for obj in sorted(items, key=lambda o: str(o["metadata"]["name"])):
        sbx = parse(Sandbox, obj, "Sandbox")
        meta = obj["metadata"]
        found.append(
            m.SandboxItem(
                name=meta["name"],
                uid=meta.get("uid"),
                labels=meta.get("labels") or {},
                spec=sbx.spec,
                status=sbx.status,
            )
        )
    return m.SandboxItemList(items=found)


def scale_view(scale: dict[str, Any]) -> m.Scale:
    spec, status = scale.get("spec") or {}, scale.get("status") or {}
    return m.Scale(
        replicas=spec.get("replicas", 0),
        status_replicas=status.get("replicas"),
        selector=status.get("selector"),
    )
