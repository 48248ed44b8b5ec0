"""In-cluster builds of `source.build`: the Job, what its end means, and the template it yields.

Why: a SandboxDeployment whose template names a *context* (a function directory in the
registry) must not roll out until a build Job has turned it into a package, and then must roll
out exactly that package, by digest (Knative's model: spec names the input, status the resolved
digest, the rollout uses the digest). Every decision of that is here as plain functions over
API objects (the Job to create, which Jobs are superseded, what a finished Job and its pod's
termination message mean, the status, condition and Event that follow, and the resolved
template), so each rule has a fast test; `build_controller` only reads and writes what they say.

The Job gets no API rights and no token: it reports the package in its termination message
(Tekton's mechanism for step results), which the operator reads from the pod's status.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from crds import constants as c
from crds.sandbox import native_distributions_value
from crds.validation import OCI_REF_PATTERN
from crds.workloads import DeploymentConditionType
from nest_operator.conditions import (
    FALSE,
    TRUE,
    UNKNOWN,
    Condition,
    remove_condition,
    set_condition,
)
from nest_operator.deployment_logic import PROGRESSING, DeploymentPlan, ReplicaSetInfo
from nest_operator.store import owner_reference

Obj = Mapping[str, Any]
BUILT = DeploymentConditionType.BUILT.value
BUILDING = "Building"
SUCCEEDED = "Succeeded"
BUILD_FAILED = "BuildFailed"
BUILD_STARTED = "BuildStarted"
BUILD_SUCCEEDED = "BuildSucceeded"
# The build's uid and gid: not root (runAsNonRoot), and no uid of the host's accounts.
BUILD_UID = 65532
CONTAINER = "build"
# Where the pull secret's .dockerconfigjson appears as config.json (DOCKER_CONFIG).
DOCKER_CONFIG_DIR = "/var/run/nest/registry"
SCRATCH_DIR = "/var/lib/nest/tmp"  # an emptyDir: HOME and TMPDIR
NAME_MAX = 63  # a Job's name is its pods' job-name label value
DIGEST_CHARS = 10
RESULT_MAX = 4096  # the kubelet's limit on a termination message
_OCI_REF = re.compile(OCI_REF_PATTERN)
_NATIVE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==\S+$")


@dataclass(frozen=True, slots=True)
class BuildSettings:
    """The operator's flags for build Jobs."""

    image: str = "nest:latest"  # the pool image: the build's ABI is the pool's
    deadline_seconds: int = 900


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a build Job's end means; `finished` False while it runs."""

    finished: bool
    ref: str | None = None  # set only on success
    natives: tuple[str, ...] = ()
    message: str = ""  # why it failed


RUNNING = Outcome(finished=False)


@dataclass(frozen=True, slots=True)
class EventSpec:
    type: str
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class BuildPlan:
    """What one reconciliation of a deployment's build does, and what the deployment shows.

    `template` is what the rollout uses: the resolved template once built, the spec's own when
    it builds nothing, None while the build for its context has not succeeded.
    """

    template: dict[str, Any] | None
    create: dict[str, Any] | None = None  # a Job body
    delete: tuple[str, ...] = ()  # superseded build Jobs, by name
    status: dict[str, Any] | None = None  # status.build; None: no build (the field goes)
    condition: Condition | None = None  # Built; None: no build (the condition goes)
    events: tuple[EventSpec, ...] = field(default_factory=tuple)


# -- reading the template ------------------------------------------------------------------------


def build_source(template: Obj) -> Obj | None:
    """`spec.function.source.build` of a template, or None."""
    function = ((template.get("spec") or {}).get("function")) or {}
    build: Obj | None = (function.get("source") or {}).get("build")
    return build


def job_name(deployment: str, context: str) -> str:
    """`<deployment>-build-<context digest[:10]>`, the deployment's part cut so the name fits
    63 characters and the digest, which tells contexts apart, stays whole."""
    digest = context.rpartition("@sha256:")[2][:DIGEST_CHARS]
    suffix = f"-build-{digest}"
    return deployment[: NAME_MAX - len(suffix)].rstrip("-.") + suffix


def job_body(deployment: Obj, build: Obj, settings: BuildSettings) -> dict[str, Any]:
    """The build Job of `deployment` for its template's `build` source (docs/operator.md).

    Locked down as a tenant's code deserves: it runs the tenant's build (pip, setup scripts)
    with no API credentials, no service links, not as root, no capabilities, bounded in time
    and resources; its only output is the termination message.
    """
    meta = deployment["metadata"]
    name, context = meta["name"], build["context"]
    # The writable scratch (pip's cache, the unpacked context), as HOME and TMPDIR; not /tmp,
    # which on the local cluster (the host's filesystem as the image) may hold the venv itself.
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": SCRATCH_DIR}, {"name": "TMPDIR", "value": SCRATCH_DIR},
    ]  # fmt: skip
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": SCRATCH_DIR}]
    secret = build.get("pullSecret")
    if secret:
        env.append({"name": "DOCKER_CONFIG", "value": DOCKER_CONFIG_DIR})
        items = [{"key": ".dockerconfigjson", "path": "config.json"}]
        volumes.append({"name": "registry", "secret": {"secretName": secret, "items": items}})
        mounts.append({"name": "registry", "mountPath": DOCKER_CONFIG_DIR, "readOnly": True})
    labels = {c.BUILD_LABEL: name}
    resources = {"cpu": "1", "memory": "1Gi"}
    container = {
        "name": CONTAINER,
        "image": settings.image,
        "command": ["nest-build"],
        "args": ["--context", context, "--tag", name],
        "env": env,
        "volumeMounts": mounts,
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(name, context),
            "namespace": meta["namespace"],
            "labels": dict(labels),
            "ownerReferences": [owner_reference(deployment)],
        },
        "spec": {
            "backoffLimit": 0,  # a failed build fails the same way again: say so at once
            "activeDeadlineSeconds": settings.deadline_seconds,
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": BUILD_UID,
                        "runAsGroup": BUILD_UID,
                        "fsGroup": BUILD_UID,
                    },
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


# -- what a Job's end means ----------------------------------------------------------------------


def job_condition(job: Obj) -> Obj | None:
    """The Job's Complete or Failed condition once True (the Job controller's verdict)."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") in ("Complete", "Failed") and cond.get("status") == "True":
            found: Obj = cond
            return found
    return None


def terminated(pod: Obj | None) -> Obj | None:
    """The build container's `state.terminated`, if it ended."""
    for status in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == CONTAINER:
            state: Obj | None = (status.get("state") or {}).get("terminated")
            return state
    return None


def parse_result(message: str) -> tuple[str, tuple[str, ...]]:
    """The `{"ref", "natives"}` line of a successful build; ValueError saying what is wrong."""
    if not message.strip():
        raise ValueError("the build wrote no result (termination message) at all")
    try:
        result = json.loads(message)
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(result, dict):
        raise ValueError('not a JSON object with "ref"')
    ref, natives = result.get("ref"), result.get("natives", [])
    if not isinstance(ref, str) or not _OCI_REF.match(ref):
        raise ValueError(f"ref {ref!r} is no registry/repository@sha256:<digest> reference")
    if not isinstance(natives, list) or not all(
        isinstance(n, str) and _NATIVE.match(n) for n in natives
    ):
        raise ValueError(f'natives {natives!r} is not a list of "name==version"')
    return ref, tuple(natives)


def outcome(job: Obj, pod: Obj | None) -> Outcome:
    """What the Job's end means, from its condition and its pod's termination message."""
    cond = job_condition(job)
    if cond is None:
        return RUNNING
    state = terminated(pod)
    message = str((state or {}).get("message") or "").strip()[:RESULT_MAX]
    if cond["type"] == "Failed":
        if cond.get("reason") == "DeadlineExceeded":
            limit = (job.get("spec") or {}).get("activeDeadlineSeconds")
            why = f"the build did not finish within {limit}s (the operator's --build-deadline)"
            return Outcome(True, message=f"{why}\n{message}" if message else why)
        if message:
            return Outcome(True, message=message)
        if state is not None:
            code, reason = state.get("exitCode"), state.get("reason") or "Error"
            return Outcome(True, message=f"the build failed ({reason}, exit code {code})")
        return Outcome(
            True, message=f"the build failed: {cond.get('message') or cond.get('reason')}"
        )
    if pod is None or state is None:
        return Outcome(True, message="the build succeeded, but its pod, with the result, is gone")
    try:
        ref, natives = parse_result(message)
    except ValueError as exc:
        return Outcome(True, message=f"the build succeeded, but its result is unreadable: {exc}")
    return Outcome(True, ref=ref, natives=natives)


def needs_result(job: Obj, status_build: Obj | None) -> bool:
    """Whether the shell must read the pod: the Job ended and the status does not say how yet."""
    if job_condition(job) is None:
        return False
    s = status_build or {}
    recorded = s.get("job") == job["metadata"]["name"] and bool(s.get("ref") or s.get("message"))
    return not recorded


# -- the plan ------------------------------------------------------------------------------------


def resolve_template(template: Obj, status_build: Obj | None) -> dict[str, Any] | None:
    """`template` as its replica sets run it: with a built `source.build`, `source.oci` of the
    built package (and its pull secret) and the native-distributions annotation, as `nest
    deploy` writes them; None while the build of its context has not succeeded. A template
    that builds nothing is returned as it is."""
    build = build_source(template)
    if build is None:
        return copy.deepcopy(dict(template))
    s = status_build or {}
    if s.get("context") != build.get("context") or not s.get("ref"):
        return None
    out = copy.deepcopy(dict(template))
    oci: dict[str, Any] = {"ref": s["ref"]}
    if build.get("pullSecret"):
        oci["pullSecret"] = build["pullSecret"]
    out["spec"]["function"]["source"] = {"oci": oci}
    meta = out.setdefault("metadata", {})
    annotations = dict(meta.get("annotations") or {})
    annotations.pop(c.NATIVE_DISTRIBUTIONS_ANNOTATION, None)
    if s.get("natives"):
        annotations[c.NATIVE_DISTRIBUTIONS_ANNOTATION] = native_distributions_value(s["natives"])
    meta["annotations"] = annotations
    return out


def plan(
    deployment: Obj,
    jobs: Sequence[Obj],
    settings: BuildSettings,
    result: Outcome | None = None,
) -> BuildPlan:
    """One reconciliation of `deployment`'s build, given its build Jobs and, when the current
    Job ended and `needs_result` said so, what its pod reported (`outcome`).

    The status is the record: a context it says was built is never built again (the Job may
    be gone); one whose Job is missing gets a Job (deleting a failed build's Job retries it).
    Superseded Jobs (of other contexts) are deleted; the current one stays for its log.
    """
    template = (deployment.get("spec") or {}).get("template") or {}
    current = (deployment.get("status") or {}).get("build")
    build = build_source(template)
    by_name = {j["metadata"]["name"]: j for j in jobs}
    if build is None:  # the template as it is (not copied: every reconcile passes here)
        return BuildPlan(dict(template), delete=tuple(sorted(by_name)))
    context = build["context"]
    name = job_name(deployment["metadata"]["name"], context)
    delete = tuple(sorted(n for n in by_name if n != name))
    resolved = resolve_template(template, current)
    if resolved is not None:
        assert current is not None
        cond = Condition(BUILT, TRUE, SUCCEEDED, f"built {current['ref']}")
        return BuildPlan(resolved, delete=delete, status=dict(current), condition=cond)
    job = by_name.get(name)
    building = {"context": context, "job": name}
    if job is None:
        body = job_body(deployment, build, settings)
        started = EventSpec("Normal", BUILD_STARTED, f"building {context} in job {name}")
        return BuildPlan(None, body, delete, building, _building(context, name), events=(started,))
    if job_condition(job) is None:
        return BuildPlan(None, None, delete, building, _building(context, name))
    fresh = result is not None  # read from the pod now: the status does not say it yet
    if result is None:  # ended, and the status already says how (needs_result was False)
        result = _recorded(current) if current and current.get("job") == name else RUNNING
    if not result.finished:
        return BuildPlan(None, None, delete, building, _building(context, name))
    if result.ref is not None:
        built = {**building, "ref": result.ref, "natives": list(result.natives)}
        cond = Condition(BUILT, TRUE, SUCCEEDED, f"built {result.ref}")
        event = EventSpec("Normal", BUILD_SUCCEEDED, f"built {result.ref} from {context}")
        events = (event,) if fresh else ()
        return BuildPlan(resolve_template(template, built), None, delete, built, cond, events)
    failed = {**building, "message": result.message}
    cond = Condition(BUILT, FALSE, BUILD_FAILED, result.message)
    event = EventSpec("Warning", BUILD_FAILED, result.message)
    return BuildPlan(None, None, delete, failed, cond, (event,) if fresh else ())


def _building(context: str, job: str) -> Condition:
    return Condition(BUILT, UNKNOWN, BUILDING, f"building {context} in job {job}")


def _recorded(status_build: Obj) -> Outcome:
    if status_build.get("ref"):
        return Outcome(True, status_build["ref"], tuple(status_build.get("natives") or ()))
    return Outcome(True, message=str(status_build.get("message") or ""))


# -- the rollout while not built -----------------------------------------------------------------


def held_template(replica_sets: Sequence[ReplicaSetInfo]) -> Mapping[str, Any] | None:
    """What the rollout aims at while the build is not done: the newest replica set's template,
    so the sets that serve keep serving (and scaling); None when there is none yet."""
    newest = max(replica_sets, key=lambda rs: (rs.revision, rs.created_at, rs.name), default=None)
    return newest.template if newest is not None else None


def building_plan(planned: DeploymentPlan, built: Condition | None, now: float) -> DeploymentPlan:
    """`planned` (made for the held template) as it applies while the build is not done: no
    new replica set, no sandbox counted as up to date (the current template has none yet), and
    Progressing True `Building` while the Job runs, False `BuildFailed` once it failed."""
    failed = built is not None and built.status == FALSE
    progressing = Condition(
        PROGRESSING,
        FALSE if failed else TRUE,
        BUILD_FAILED if failed else BUILDING,
        built.message if built is not None else "waiting for the build",
    )
    conditions = set_condition(planned.status.conditions, progressing, now)
    status = replace(planned.status, updated_replicas=0, conditions=conditions)
    create = planned.create
    scale = tuple(s for s in planned.scale if create is None or s[0] != create.name)
    revisions = tuple(r for r in planned.revisions if create is None or r[0] != create.name)
    return replace(planned, create=None, scale=scale, revisions=revisions, status=status)


def with_built(
    conditions: Sequence[Condition], built: Condition | None, now: float
) -> tuple[Condition, ...]:
    """The deployment's conditions with Built as the build plan says (gone without a build)."""
    if built is None:
        return remove_condition(conditions, BUILT)
    return set_condition(conditions, built, now)
