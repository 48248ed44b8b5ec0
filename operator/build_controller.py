"""The I/O of in-cluster builds: a deployment's build Jobs, their pods' results, their Events.

Why a shell apart from the deployment controller: `build_logic.plan` decides, this module does
what it says (create the current context's Job, delete superseded ones, read the pod's
termination message once the Job ended, post BuildStarted/BuildSucceeded/BuildFailed). It is
called by the deployment controller at the start of each reconciliation of a deployment, so the
deployment's status, Built condition included, keeps exactly one writer; Job watch events are
routed to the deployment's key by the manager (the Job's controller ownerReference), like its
replica sets' are.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from nest_kube import ApiError
from nest_operator import build_logic as logic
from nest_operator.kube import Kube
from nest_operator.replicaset_controller import api_message
from nest_operator.store import Kind, Obj, Store, controller_uid

log = logging.getLogger(__name__)
# status.build as written: every field, so a merge patch drops what the new state lacks (a
# failed build's message once it is rebuilt).
STATUS_FIELDS = ("context", "ref", "natives", "job", "message")


def status_build_body(build: Obj | None) -> dict[str, Any] | None:
    """status.build for a merge patch: None removes it; absent fields are written as null."""
    if build is None:
        return None
    return {name: build.get(name) or None for name in STATUS_FIELDS}


def newest_pod(pods: Sequence[Obj]) -> Obj | None:
    """The Job's pod to read the result from: with backoffLimit 0 there is one; else the last."""
    return max(
        pods,
        key=lambda p: (p["metadata"].get("creationTimestamp") or "", p["metadata"]["name"]),
        default=None,
    )


class BuildController:
    """Runs `build_logic.plan` for one deployment and applies its Job changes and Events."""

    def __init__(self, store: Store, kube: Kube, settings: logic.BuildSettings) -> None:
        self.store = store
        self.kube = kube
        self.settings = settings

    def jobs_of(self, deployment: Obj) -> list[Obj]:
        return self.store.owned(Kind.JOB, deployment["metadata"]["uid"])

    async def sync(self, deployment: Obj) -> logic.BuildPlan:
        """Bring the deployment's build Jobs in line with its template; the plan applied.

        A refused Job creation raises (the work queue retries with back-off) after a Warning
        Event with the API server's message, so a quota or an admission refusal is visible.
        """
        jobs = self.jobs_of(deployment)
        by_name = {j["metadata"]["name"]: j for j in jobs}
        template = (deployment.get("spec") or {}).get("template") or {}
        build = logic.build_source(template)
        result = None
        if build is not None:
            name = logic.job_name(deployment["metadata"]["name"], build["context"])
            job = by_name.get(name)
            current = (deployment.get("status") or {}).get("build")
            if job is not None and logic.needs_result(job, current):
                pods = await self.kube.job_pods(
                    job["metadata"]["namespace"], job["metadata"]["uid"]
                )
                result = logic.outcome(job, newest_pod(pods))
        plan = logic.plan(deployment, jobs, self.settings, result)
        if plan.create is not None:
            await self._create(deployment, plan.create)
        for name in plan.delete:  # names of `jobs`, as plan read them
            await self.kube.delete(Kind.JOB, by_name[name])
        for event in plan.events:
            self.kube.event(deployment, event.type, event.reason, event.message)
            log.info("%s/%s: %s: %s", deployment["metadata"]["namespace"],
                     deployment["metadata"]["name"], event.reason, event.message)  # fmt: skip
        return plan

    async def _create(self, deployment: Obj, body: Obj) -> None:
        namespace = deployment["metadata"]["namespace"]
        try:
            await self.kube.create(Kind.JOB, namespace, body)
        except ApiError as exc:
            if exc.status == 409:
                name = body["metadata"]["name"]
                existing = self.store.get(Kind.JOB, f"{namespace}/{name}")
                if (
                    existing is not None
                    and controller_uid(existing) == deployment["metadata"]["uid"]
                ):
                    return
                # Not seen yet, or a Job of an earlier deployment of this name that the
                # garbage collector has yet to remove: look again after a back-off.
                raise RuntimeError(f"build job {namespace}/{name} exists, not ours (yet)") from exc
            message = f"cannot create build job {body['metadata']['name']}: {api_message(exc)}"
            self.kube.event(deployment, "Warning", logic.BUILD_FAILED, message)
            raise
