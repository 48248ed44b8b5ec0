"""Every write the operator makes to the API server, and the informers that feed its store.

Why one module: this is the operator's whole I/O shell towards Kubernetes, on the shared layer
(`nest_kube`): credentials from `connect()` (the same rule kopf's login gets, see main.py), calls
over `HttpApi` (aiohttp on the operator's loop: no thread pool sized for the bursts of creates
and bindings a 200-replica apply causes), Events through `EventRecorder` (client-go's
aggregation, counts for repeats and a rate limit), and one `Informer` per kind (list once, then
watch from that version). Each successful write is fed back into the store (write-through) so
the next decision already sees it. Failures are `nest_kube.ApiError` (status 0: no answer).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes import client

import nest_kube
from crds import constants as c
from nest_kube import ApiError, Connection, EventRecorder, EventSource, HttpApi, Informer
from nest_kube import resources as r
from nest_operator.store import Kind, Obj, Store

log = logging.getLogger(__name__)
MERGE = nest_kube.MERGE_PATCH
JSON_PATCH = nest_kube.JSON_PATCH
JOBS = r.Resource("batch", "v1", "jobs", "Job")
# Each kind the operator keeps, and the label that selects the objects it cares about.
RESOURCES: dict[Kind, tuple[r.Resource, str]] = {
    Kind.POD: (r.PODS, c.POOL_LABEL),
    Kind.LEASE: (r.LEASES, c.POOL_LABEL),
    Kind.SANDBOX: (r.SANDBOXES, ""),
    Kind.REPLICASET: (r.SANDBOX_REPLICASETS, ""),
    Kind.DEPLOYMENT: (r.SANDBOX_DEPLOYMENTS, ""),
    Kind.ENDPOINTS: (r.SANDBOX_ENDPOINTS, ""),
    Kind.POOL: (r.SANDBOX_POOLS, ""),
    Kind.NAMESPACE: (r.NAMESPACES, ""),
    Kind.JOB: (JOBS, c.BUILD_LABEL),
}
SOURCE = EventSource("nest-operator", reporting_controller="nest.sandbox.dev/operator")
# The scheduler reports as a component of its own, as kube-scheduler does beside the controller
# manager: the correlator's rate limit is per source and object, so a replica set's burst of
# Scheduled Events cannot use up the budget of its controller's FailedCreate warnings.
SCHEDULER_SOURCE = EventSource("nest-scheduler", reporting_controller="nest.sandbox.dev/scheduler")
SCHEDULER_REASONS = frozenset({"Scheduled", "FailedScheduling"})


def load_api(connection: Connection | None = None) -> client.ApiClient:
    """A synchronous kubernetes-library client by `connect()`'s rule (the webhook's facts and
    the data-plane key's Secret still use one, from their own threads)."""
    return (connection or nest_kube.connect()).api_client()


def terminating(exc: ApiError) -> bool:
    """A namespace being deleted refused a create: nothing to retry, its objects are going."""
    causes = " ".join(str(cause.get("reason") or "") for cause in exc.causes)
    return exc.status == 403 and "NamespaceTerminating" in f"{causes} {exc.message}"


class Kube:
    """The operator's API calls; writes also update the store."""

    def __init__(
        self,
        connection: Connection,
        store: Store,
        on_write: Callable[[Kind, Obj, bool], None] | None = None,
        api: nest_kube.Api | None = None,
    ) -> None:
        self.connection = connection
        self.api: nest_kube.Api = api or HttpApi(connection)
        self.store = store
        # Called with what a write produced, so the controllers it concerns react at once
        # rather than when the watch echoes it back.
        self.on_write = on_write
        self.recorder = EventRecorder(self.api, SOURCE)
        self.scheduler_recorder = EventRecorder(self.api, SCHEDULER_SOURCE)
        # The synchronous client only for the data-plane key's Secret (dataplane_key.SecretKeys
        # reads it in a thread every few minutes); everything else goes through `api`.
        self.core = client.CoreV1Api(connection.api_client(pool_size=2))

    def _record(self, kind: Kind, event: str, obj: Obj) -> None:
        if self.store.apply(kind, event, obj) and self.on_write is not None:
            self.on_write(kind, obj, event == "DELETED")

    def _written(self, kind: Kind, event: str, result: Obj) -> Obj:
        if "metadata" in result:
            self._record(kind, event, _typed(kind, result))
        return result

    # -- informers -----------------------------------------------------------------------------

    def informer(self, kind: Kind, observe: Callable[[Kind, str, Obj], None]) -> Informer:
        """An informer of `kind` whose every delta goes to `observe(kind, type, object)`."""
        resource, label = RESOURCES[kind]
        informer = Informer(self.api, resource, label_selector=label)

        def handle(delta: nest_kube.Delta) -> None:
            observe(kind, delta.type, _typed(kind, delta.obj))

        informer.add_handler(handle)
        return informer

    # -- writes --------------------------------------------------------------------------------

    async def create(self, kind: Kind, namespace: str, body: Obj) -> Obj:
        created = await self.api.create(RESOURCES[kind][0], namespace, body)
        return self._written(kind, "ADDED", created)

    async def patch(
        self, kind: Kind, namespace: str, name: str, patch: Any, content_type: str = MERGE
    ) -> Obj:
        result = await self.api.patch(
            RESOURCES[kind][0], namespace, name, patch, content_type=content_type
        )
        return self._written(kind, "MODIFIED", result)

    async def patch_status(self, kind: Kind, namespace: str, name: str, status: Obj) -> Obj:
        """Merge `status` into the status subresource (namespace "": a cluster-scoped kind)."""
        result = await self.api.patch(
            RESOURCES[kind][0], namespace or None, name, {"status": status}, subresource="status"
        )
        return self._written(kind, "MODIFIED", result)

    async def scale(
        self, kind: Kind, namespace: str, name: str, replicas: int, resource_version: str = ""
    ) -> None:
        """Write replicas through the scale subresource, as `kubectl scale` and HPAs do; with
        `resource_version`, only if the object is still that version (409 otherwise).

        Written through like every write, though the answer is a Scale, not the object: the
        stored object with the new replicas, resourceVersion and (replicas changed, so the
        server bumped it) generation, so its controller scales the replica set now instead of
        at the watch's echo (a cold start waits on this); the echo then replaces the copy."""
        body: Obj = {"spec": {"replicas": replicas}}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        scale = await self.api.patch(RESOURCES[kind][0], namespace, name, body, subresource="scale")
        stored = self.store.get(kind, f"{namespace}/{name}")
        version = (scale.get("metadata") or {}).get("resourceVersion")
        if stored is None or not version:
            return
        spec = stored.get("spec") or {}
        meta = {**stored["metadata"], "resourceVersion": version}
        if spec.get("replicas") != replicas:
            meta["generation"] = int(meta.get("generation") or 1) + 1
        self._record(kind, "MODIFIED", {**stored, "metadata": meta,
                                        "spec": {**spec, "replicas": replicas}})  # fmt: skip

    async def delete(self, kind: Kind, obj: Obj) -> None:
        """Delete exactly this object (UID precondition); already gone is fine.

        Background propagation: a Job's pods go with it (the API's default for Jobs orphans).
        """
        meta = obj["metadata"]
        try:
            await self.api.delete(
                RESOURCES[kind][0], meta["namespace"], meta["name"],
                propagation="Background", preconditions={"uid": meta["uid"]},
            )  # fmt: skip
        except ApiError as exc:
            if exc.status not in (404, 409):
                raise
        if not meta.get("finalizers"):
            self._record(kind, "DELETED", obj)
        else:
            self._record(
                kind, "MODIFIED", {**obj, "metadata": {**meta, "deletionTimestamp": _now()}}
            )

    def gone(self, kind: Kind, obj: Obj) -> None:
        """The server answered 404 for `obj`: record the deletion its watch may never deliver
        (a relist that lost it), so no controller keeps acting on it."""
        self._record(kind, "DELETED", obj)

    # -- reads that no informer serves ---------------------------------------------------------

    async def pod_ips(self, namespace: str, selector: str) -> list[str]:
        listed = await self.api.list(r.PODS, namespace, label_selector=selector)
        ips = [(p.get("status") or {}).get("podIP") for p in listed.get("items") or []]
        return [ip for ip in ips if ip]

    async def job_pods(self, namespace: str, job_uid: str) -> list[Obj]:
        """The pods of a Job (the Job controller labels them with its UID), status included."""
        listed = await self.api.list(r.PODS, namespace, label_selector=f"controller-uid={job_uid}")
        return list(listed.get("items") or [])

    # -- events --------------------------------------------------------------------------------

    def event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Record an Event for `kubectl describe` without making the caller wait."""
        recorder = self.scheduler_recorder if reason in SCHEDULER_REASONS else self.recorder
        recorder.event(obj, type_, reason, message)  # the correlator cuts at 1,024

    async def close(self) -> None:
        await self.recorder.close()
        await self.scheduler_recorder.close()
        await self.api.close()


def _typed(kind: Kind, obj: Obj) -> Obj:
    """`obj` with its kind and apiVersion (list items come without; Events need them)."""
    if "kind" not in obj:
        resource = RESOURCES[kind][0]
        obj["kind"], obj["apiVersion"] = resource.kind, resource.api_version
    return obj


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
