"""The SandboxDeployment controller: one SandboxReplicaSet per template, rolled like apps/v1.

`deployment_logic.sync` decides (which set is new, how far to scale each during a rolling update
or a recreate, which old sets to prune, the status); this module only applies the plan in its
order — create, revisions, scale, delete, status — and handles a name collision the way the
Deployment controller does, by bumping `collisionCount` so the next hash differs. When the API
server refuses the new replica set, `deployment_failures` says what the deployment shows
(ReplicaFailure/FailedCreate with the server's message, and a Warning Event) and when to try
again; this module remembers the failure per deployment and requeues it then.

A template with `source.build` is first resolved by `build_controller` (its build Job's package
as `source.oci`); until that build succeeded no new replica set is created, the existing ones
keep serving, and Progressing says `Building` (build_logic.building_plan). Status, the Built
condition and status.build included, is written here only, in one patch.

Status is batched as the endpoints are (`status_batch.StatusBatch`, issue 14: a
100-replica ramp was a status write per few sandboxes): what a reader acts on is written at
once (`urgent`: observedGeneration, conditions but for their times, availability to or from
zero, collisionCount, selector, build); a change of the counts alone waits until they stood
still for a second, at most ten. A rollout ends with its Progressing condition turning
NewReplicaSetAvailable, so the end of a ramp is never held back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from enum import Enum
from typing import Any

from crds import constants as c
from crds.common import LabelSelector
from nest_kube import ApiError
from nest_operator import adapters, build_logic
from nest_operator import deployment_failures as failures
from nest_operator.build_controller import BuildController, status_build_body
from nest_operator.deployment_logic import DeploymentInfo, DeploymentPlan, DeploymentStatus
from nest_operator.kube import Kube
from nest_operator.replicaset_controller import api_message
from nest_operator.status_batch import StatusBatch
from nest_operator.store import Kind, Obj, Store, controller_uid, key_of, owner_reference

log = logging.getLogger(__name__)
# The status fields a change of which alone may wait (`urgent`).
COUNTS = frozenset(
    {"replicas", "updatedReplicas", "readyReplicas", "availableReplicas", "unavailableReplicas"}
)


class Created(Enum):
    """How creating the new replica set went."""

    YES = "created"  # or it exists already and is ours
    COLLISION = "collision"  # a replica set of that name and another template exists
    UNSEEN = "unseen"  # it exists, but the store has not seen it yet: look again


def status_body(
    status: DeploymentStatus, selector: str, build: build_logic.BuildPlan | None = None
) -> dict[str, Any]:
    """The status to patch; with a build plan, its status.build too (`with_built` has put its
    Built condition into `status`)."""
    extra = {"build": status_build_body(build.status)} if build is not None else {}
    return extra | {
        "observedGeneration": status.observed_generation,
        "replicas": status.replicas,
        "updatedReplicas": status.updated_replicas,
        "readyReplicas": status.ready_replicas,
        "availableReplicas": status.available_replicas,
        "unavailableReplicas": status.unavailable_replicas,
        "conditions": adapters.conditions_to(status.conditions),
        "collisionCount": status.collision_count,
        "selector": selector,
    }


class DeploymentController:
    """Reconciles one SandboxDeployment key ("namespace/name") at a time."""

    def __init__(
        self,
        store: Store,
        kube: Kube,
        clock: Callable[[], float] = time.time,
        builds: BuildController | None = None,
    ) -> None:
        self.store = store
        self.kube = kube
        self.clock = clock
        self.builds = builds  # None: no in-cluster builds (source.build stays unresolved)
        self.failures: dict[str, failures.CreateFailure] = {}  # by deployment key
        self._timers: dict[str, float] = {}  # by deployment key: when it is requeued for
        # Reconcile a key again after a delay (the work queue's add_after; the manager sets
        # it): a back-off ends without any event announcing it, nor does a batch.
        self.requeue: Callable[[str, float], None] | None = None
        self.batch = StatusBatch()

    def key_for_owned(self, obj: Obj) -> str | None:
        """The key of the deployment controlling `obj` (a replica set, a build Job)."""
        owner = controller_uid(obj)
        deployment = self.store.by_uid(Kind.DEPLOYMENT, owner) if owner else None
        return key_of(deployment) if deployment is not None else None

    async def reconcile(self, key: str) -> None:
        d = self.store.get(Kind.DEPLOYMENT, key)
        if d is None or d["metadata"].get("deletionTimestamp"):
            self.failures.pop(key, None)
            self._timers.pop(key, None)
            self.batch.done(key)
            return
        now = self.clock()
        build = await self.builds.sync(d) if self.builds is not None else None
        selector = LabelSelector.model_validate(d["spec"].get("selector") or {})
        owned = self.store.owned(Kind.REPLICASET, d["metadata"]["uid"])
        info = adapters.deployment_info(d, adapters.conditions_from(d.get("status") or {}))
        infos = [adapters.replicaset_info(rs) for rs in owned]
        held = build is not None and build.template is None  # not built: aim at what serves
        if build is not None:
            aim = build.template if build.template is not None else build_logic.held_template(infos)
            info = replace(info, template=aim if aim is not None else info.template)
        plan, wait = failures.plan(info, infos, now, self.failures.get(key))
        if held:
            assert build is not None  # held only while a build is not done
            plan = build_logic.building_plan(plan, build.condition, now)
        plan = replace(plan, status=with_built(plan.status, build, now))
        if wait:
            self._requeue(key, now + wait)  # held back: only the status is written
        elif plan.create is None:
            self.failures.pop(key, None)  # the template changed back, or the set appeared
        namespace = d["metadata"]["namespace"]
        if plan.create is not None:
            try:
                created = await self._create(d, selector, plan)
            except ApiError as exc:
                if not exc.status:  # no answer: not a refusal, retried with back-off
                    raise
                await self._refused(key, d, info, plan, api_message(exc), now, build)
                return
            self.failures.pop(key, None)
            if created is Created.UNSEEN:
                raise RuntimeError(f"{key}: replica set {plan.create.name} exists but is unseen")
            if created is Created.COLLISION:
                collided = replace(plan.status, collision_count=plan.status.collision_count + 1)
                body = status_body(collided, selector.to_selector_string(), build)
                name = d["metadata"]["name"]
                await self.kube.patch_status(Kind.DEPLOYMENT, namespace, name, body)
                return  # the status change brings us back with a new hash
        for name, revision in plan.revisions:
            patch = {"metadata": {"annotations": {c.REVISION_ANNOTATION: str(revision)}}}
            await self.kube.patch(Kind.REPLICASET, namespace, name, patch)
        by_name = {rs["metadata"]["name"]: rs for rs in owned}
        for name, replicas in plan.scale:
            if name in by_name and by_name[name]["spec"].get("replicas") == replicas:
                continue
            # Through /scale, as the autoscaler scales the deployment: a replicas change needs
            # no admission (SandboxRestriction asks about templates), and the webhook's round
            # trip (~10 ms under load) was on the path of every start from zero (issue 14).
            await self.kube.scale(Kind.REPLICASET, namespace, name, replicas)
        for name in plan.delete:
            if name in by_name:
                await self.kube.delete(Kind.REPLICASET, by_name[name])
        body = status_body(plan.status, selector.to_selector_string(), build)
        current = d.get("status") or {}
        if not any(_differs(current, k, v) for k, v in body.items()):
            self.batch.done(key)
            return
        write, after = self.batch.admit(key, _timeless(body), self.clock(), urgent(current, body))
        if after is not None and self.requeue is not None:
            self.requeue(key, after)
        if write:
            await self.kube.patch_status(Kind.DEPLOYMENT, namespace, d["metadata"]["name"], body)

    def _requeue(self, key: str, at: float) -> None:
        """One timer per retry time, however many events arrive while a creation is held."""
        if self.requeue is not None and self._timers.get(key) != at:
            self._timers[key] = at
            self.requeue(key, max(0.0, at - self.clock()))

    async def _refused(
        self,
        key: str,
        d: Obj,
        info: DeploymentInfo,
        plan: DeploymentPlan,
        message: str,
        now: float,
        build: build_logic.BuildPlan | None = None,
    ) -> None:
        """The API server refused the new replica set: say so on the deployment, retry later."""
        assert plan.create is not None
        failure = failures.refused(self.failures.get(key), plan.create.name, message, now)
        self.failures[key] = failure
        self.kube.event(
            d, "Warning", failures.FAILED_CREATE, failures.create_error_message(failure)
        )
        log.warning("%s: %s", key, failures.create_error_message(failure))
        status = with_built(failures.failed_status(info, plan.status, failure, now), build, now)
        selector = LabelSelector.model_validate(d["spec"].get("selector") or {})
        body = status_body(status, selector.to_selector_string(), build)
        current = d.get("status") or {}
        if any(_differs(current, k, v) for k, v in body.items()):
            namespace, name = d["metadata"]["namespace"], d["metadata"]["name"]
            await self.kube.patch_status(Kind.DEPLOYMENT, namespace, name, body)
        self._requeue(key, failure.retry_at)

    async def _create(self, d: Obj, selector: LabelSelector, plan: DeploymentPlan) -> Created:
        """Create the new replica set; how that went (an ApiError: the server refused)."""
        new = plan.create
        assert new is not None
        labels = dict((new.template.get("metadata") or {}).get("labels") or {})
        match = dict(selector.match_labels)
        match[c.TEMPLATE_HASH_LABEL] = new.template_hash
        spec_selector = selector.model_dump(by_alias=True, exclude_none=True)
        spec_selector["matchLabels"] = match
        body = {
            "apiVersion": c.API_VERSION,
            "kind": c.REPLICASET_KIND,
            "metadata": {
                "name": new.name,
                "namespace": d["metadata"]["namespace"],
                "labels": labels,
                "annotations": {c.REVISION_ANNOTATION: str(new.revision)},
                "ownerReferences": [owner_reference(d)],
            },
            "spec": {"replicas": new.replicas, "selector": spec_selector, "template": new.template},
        }
        try:
            created = await self.kube.create(Kind.REPLICASET, d["metadata"]["namespace"], body)
        except ApiError as exc:
            if exc.status != 409:
                raise
            existing = self.store.get(Kind.REPLICASET, f"{d['metadata']['namespace']}/{new.name}")
            # Ours from before a restart (the next sync sees it), or a genuine collision; if
            # the store has not seen it yet, neither is known (kube's lister miss: retry).
            if existing is None:
                return Created.UNSEEN
            ours = controller_uid(existing) == d["metadata"]["uid"]
            return Created.YES if ours else Created.COLLISION
        message = f"Scaled up replica set {new.name} to {new.replicas}"
        self.kube.event(d, "Normal", "ScalingReplicaSet", message)
        log.info(
            "%s: created %s (revision %s)", key_of(d), created["metadata"]["name"], new.revision
        )
        return Created.YES


def with_built(
    status: DeploymentStatus, build: build_logic.BuildPlan | None, now: float
) -> DeploymentStatus:
    """`status` with the build plan's Built condition (none without a build plan: unchanged)."""
    if build is None:
        return status
    return replace(
        status, conditions=build_logic.with_built(status.conditions, build.condition, now)
    )


def urgent(current: Obj, body: Obj) -> bool:
    """Whether the status `body` is written at once rather than batched (`COUNTS` alone wait)."""
    if any(_differs(current, k, v) for k, v in body.items() if k not in COUNTS | {"conditions"}):
        return True
    if (int(current.get("availableReplicas") or 0) == 0) != (body["availableReplicas"] == 0):
        return True  # the function starts or stops serving
    return _gist(current.get("conditions")) != _gist(body["conditions"])


def _gist(conditions: Any) -> list[tuple[str, ...]]:
    """Conditions as readers act on them: not their times (Progressing's lastUpdateTime moves
    with every count that grows)."""
    return sorted(
        tuple(str(cond.get(k) or "") for k in ("type", "status", "reason", "message"))
        for cond in conditions or []
    )


def _timeless(body: Obj) -> Obj:
    """`body` without condition times: what a batch compares to tell a change."""
    return body | {"conditions": _gist(body.get("conditions"))}


def _differs(current: Obj, key: str, value: Any) -> bool:
    if key == "build":  # null fields of the patch are absent in the stored status
        return bool(status_build_body(current.get("build")) != value)
    return bool(current.get(key) != value)
