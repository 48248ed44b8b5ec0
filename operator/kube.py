"""Every write the operator makes to the API server, and the reads of its initial sync.

Why one module: this is the operator's whole I/O shell towards Kubernetes. Calls are plain
kubernetes-client calls run on a dedicated thread pool (big enough for the bursts of creates
and bindings a 200-replica apply causes), and each successful write is fed back into the store
(write-through) so the next decision already sees it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from crds import constants as c
from nest_operator.store import Kind, Obj, Store

log = logging.getLogger(__name__)
T = TypeVar("T")
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
THREADS = 32
EVENT_THREADS = 4


def load_api() -> client.ApiClient:
    """In-cluster credentials when running in a pod, the kubeconfig otherwise."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = THREADS
    return client.ApiClient(configuration)


class Kube:
    """The operator's API calls; writes also update the store."""

    def __init__(
        self,
        api: client.ApiClient,
        store: Store,
        on_write: Callable[[Kind, Obj, bool], None] | None = None,
    ) -> None:
        self.api = api
        self.store = store
        # Called with what a write produced, so the controllers it concerns react at once
        # rather than when the watch echoes it back.
        self.on_write = on_write
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.coordination = client.CoordinationV1Api(api)
        self.batch = client.BatchV1Api(api)
        self._pool = ThreadPoolExecutor(THREADS, thread_name_prefix="kube")
        # Events get threads of their own: they must never queue ahead of a create or a bind.
        self._events = ThreadPoolExecutor(EVENT_THREADS, thread_name_prefix="events")

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, partial(fn, *args, **kwargs))

    async def _write(self, kind: Kind, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Obj:
        result: Obj = await self._call(fn, *args, **kwargs)
        if isinstance(result, dict) and "metadata" in result:
            self._record(kind, "MODIFIED", result)
        return result

    def _record(self, kind: Kind, event: str, obj: Obj) -> None:
        if self.store.apply(kind, event, obj) and self.on_write is not None:
            self.on_write(kind, obj, event == "DELETED")

    # -- initial sync --------------------------------------------------------------------------

    async def list_all(self, kind: Kind) -> list[Obj]:
        raw: Any
        if kind == Kind.POD:
            raw = await self._call(
                self.core.list_pod_for_all_namespaces, label_selector=c.POOL_LABEL
            )
        elif kind == Kind.LEASE:
            raw = await self._call(
                self.coordination.list_lease_for_all_namespaces, label_selector=c.POOL_LABEL
            )
        elif kind == Kind.NAMESPACE:
            raw = await self._call(self.core.list_namespace)
        elif kind == Kind.JOB:
            raw = await self._call(
                self.batch.list_job_for_all_namespaces, label_selector=c.BUILD_LABEL
            )
        else:
            raw = await self._call(
                self.custom.list_cluster_custom_object, c.GROUP, c.VERSION, kind.value
            )
        items: list[Obj] = self.api.sanitize_for_serialization(raw)["items"]
        return items

    # -- custom objects ------------------------------------------------------------------------

    async def create(self, kind: Kind, namespace: str, body: Obj) -> Obj:
        if kind == Kind.JOB:
            job = await self._call(self.batch.create_namespaced_job, namespace, body)
            stored: Obj = self.api.sanitize_for_serialization(job)
            self._record(kind, "ADDED", stored)
            return stored
        created = await self._write(
            kind, self.custom.create_namespaced_custom_object,
            c.GROUP, c.VERSION, namespace, kind.value, body,
        )  # fmt: skip
        self._record(kind, "ADDED", created)
        return created

    async def patch(
        self, kind: Kind, namespace: str, name: str, patch: Any, content_type: str = MERGE
    ) -> Obj:
        return await self._write(
            kind, self.custom.patch_namespaced_custom_object,
            c.GROUP, c.VERSION, namespace, kind.value, name, patch, _content_type=content_type,
        )  # fmt: skip

    async def patch_status(self, kind: Kind, namespace: str, name: str, status: Obj) -> Obj:
        if not namespace:  # a cluster-scoped kind (SandboxPool)
            return await self._write(
                kind, self.custom.patch_cluster_custom_object_status,
                c.GROUP, c.VERSION, kind.value, name, {"status": status}, _content_type=MERGE,
            )  # fmt: skip
        return await self._write(
            kind, self.custom.patch_namespaced_custom_object_status,
            c.GROUP, c.VERSION, namespace, kind.value, name, {"status": status},
            _content_type=MERGE,
        )  # fmt: skip

    async def scale(self, kind: Kind, namespace: str, name: str, replicas: int) -> None:
        """Write replicas through the scale subresource, as `kubectl scale` and HPAs do."""
        await self._call(
            self.custom.patch_namespaced_custom_object_scale,
            c.GROUP, c.VERSION, namespace, kind.value, name, {"spec": {"replicas": replicas}},
            _content_type=MERGE,
        )  # fmt: skip

    async def pod_ips(self, namespace: str, selector: str) -> list[str]:
        listed: Any = await self._call(
            self.core.list_namespaced_pod, namespace, label_selector=selector
        )
        return [p.status.pod_ip for p in listed.items if p.status and p.status.pod_ip]

    async def job_pods(self, namespace: str, job_uid: str) -> list[Obj]:
        """The pods of a Job (the Job controller labels them with its UID), status included."""
        listed: Any = await self._call(
            self.core.list_namespaced_pod, namespace, label_selector=f"controller-uid={job_uid}"
        )
        pods: list[Obj] = self.api.sanitize_for_serialization(listed)["items"]
        return pods

    async def delete(self, kind: Kind, obj: Obj) -> None:
        """Delete exactly this object (UID precondition); already gone is fine."""
        meta = obj["metadata"]
        body = {"preconditions": {"uid": meta["uid"]}, "propagationPolicy": "Background"}
        try:
            if kind == Kind.JOB:  # Background: a Job's pods go with it (the API's default orphans)
                await self._call(
                    self.batch.delete_namespaced_job, meta["name"], meta["namespace"], body=body
                )
            else:
                await self._call(
                    self.custom.delete_namespaced_custom_object,
                    c.GROUP, c.VERSION, meta["namespace"], kind.value, meta["name"], body=body,
                )  # fmt: skip
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise
        deleted = {**obj, "metadata": {**meta, "deletionTimestamp": _now()}}
        if not meta.get("finalizers"):
            self._record(kind, "DELETED", obj)
        else:
            self._record(kind, "MODIFIED", deleted)

    # -- events --------------------------------------------------------------------------------

    def event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Record an Event for `kubectl describe` without making the caller wait."""
        loop = asyncio.get_running_loop()
        loop.run_in_executor(self._events, self._create_event, obj, type_, reason, message)

    def _create_event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        meta = obj["metadata"]
        now = datetime.now(UTC)
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(
                generate_name=f"{meta['name']}.", namespace=meta["namespace"]
            ),
            involved_object=client.V1ObjectReference(
                api_version=obj.get("apiVersion", c.API_VERSION),
                kind=obj.get("kind"),
                name=meta["name"],
                namespace=meta["namespace"],
                uid=meta["uid"],
            ),
            reason=reason,
            message=message[:1024],
            type=type_,
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            source=client.V1EventSource(component="nest-operator"),
            reporting_component="nest.sandbox.dev/operator",
        )
        try:
            self.core.create_namespaced_event(meta["namespace"], body)
        except ApiException as exc:
            log.debug("event %s for %s not recorded: %s", reason, meta["name"], exc.reason)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._events.shutdown(wait=False, cancel_futures=True)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
