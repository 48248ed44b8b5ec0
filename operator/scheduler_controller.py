"""The scheduler's I/O shell: keeps the scheduler cache fed, binds, and explains failures.

Pool pods and their Leases become `PoolPod`s, bound sandboxes `BoundSandbox`es, and each unbound
Sandbox one decision. Deciding is synchronous and assumes the binding in the cache before the
event loop moves on, so concurrent bindings never overbook a pod; the bind itself is a patch
guarded by the sandbox's resourceVersion (optimistic concurrency) that also sets the pool and
pod-uid labels and the sidecar's finalizer — one write. Unschedulable sandboxes are retried
whenever capacity may have appeared: a pool pod or Lease changed, a sandbox went away, or a
SandboxPool or a namespace's labels changed (tenancy). Only pods that `Pools.membership` calls
nodes of their pool enter the cache; a pod that stops being one leaves it (its sandboxes are
evicted by the lifecycle controller) and is counted again, sandboxes included, if it returns.
"""

from __future__ import annotations

import contextlib
import logging
import time

from kubernetes.client.exceptions import ApiException

from crds import constants as c
from nest_operator import adapters
from nest_operator.errors import UnknownPod
from nest_operator.kube import Kube
from nest_operator.pool_controller import Pools, pool_key
from nest_operator.scheduler import Scheduler, SchedulerCache
from nest_operator.store import Kind, Obj, Store, key_of
from nest_operator.workqueue import WorkQueue

log = logging.getLogger(__name__)


class SchedulerController:
    """Places every unbound Sandbox on a pool pod."""

    def __init__(
        self, store: Store, kube: Kube, cache: SchedulerCache, scheduler: Scheduler, pools: Pools
    ) -> None:
        self.store = store
        self.kube = kube
        self.cache = cache
        self.scheduler = scheduler
        self.pools = pools
        self.queue = WorkQueue("scheduler")
        self.unschedulable: dict[str, str] = {}  # sandbox key -> last FailedScheduling message
        self._pool_versions: dict[str, tuple[str, int]] = {}  # pool -> (uid, generation) seen

    # -- cache maintenance ---------------------------------------------------------------------

    def pod_changed(self, pod: Obj, deleted: bool) -> None:
        self._update_pod(pod, deleted)
        self.retry_unschedulable()

    def _update_pod(self, pod: Obj, deleted: bool) -> None:
        uid = pod["metadata"]["uid"]
        if deleted or self.pools.membership(pod) is not None:
            self.cache.remove_pod(uid)
            return
        known = self._known_pod(uid)
        lease = self.store.get(Kind.LEASE, key_of(pod))
        self.cache.set_pod(adapters.pool_pod(pod, lease))
        if not known:
            for sandbox in self.store.on_pod(uid):  # those seen before their pod (or its pool)
                self._count(sandbox)

    def pool_changed(self, pool: Obj, deleted: bool) -> None:
        """A SandboxPool's spec changed: its policy, and which labelled pods are its nodes."""
        meta = pool["metadata"]
        name = meta["name"]
        version = (str(meta.get("uid")), int(meta.get("generation") or 0))
        if not deleted and self._pool_versions.get(name) == version:
            return  # a status write: nothing the scheduler reads
        if deleted or self.store.get(Kind.POOL, pool_key(name)) is None:
            self._pool_versions.pop(name, None)
        else:
            self._pool_versions[name] = version
        policy = self.pools.policy(name)
        if policy is None:
            self.cache.remove_pool(name)
        else:
            self.cache.set_pool(policy)
        for pod in self.store.labelled(Kind.POD, c.POOL_LABEL, name):
            self._update_pod(pod, deleted=False)
        self.retry_unschedulable()

    def namespace_changed(self, namespace: Obj, deleted: bool) -> None:
        """Namespace labels decide which SandboxPools a namespace may use."""
        name = namespace["metadata"]["name"]
        if deleted:
            self.cache.remove_namespace(name)
            return
        labels = dict(namespace["metadata"].get("labels") or {})
        before = self.cache.namespace_labels(name)
        self.cache.set_namespace(name, labels)
        if before != labels:
            self.retry_unschedulable()

    def _known_pod(self, uid: str) -> bool:
        try:
            self.cache.pod(uid)
        except UnknownPod:
            return False
        return True

    def lease_changed(self, lease: Obj) -> None:
        pod = self.store.get(Kind.POD, key_of(lease))
        if pod is not None:
            self.pod_changed(pod, deleted=False)

    def sandbox_changed(self, sandbox: Obj, deleted: bool) -> None:
        key, uid = key_of(sandbox), sandbox["metadata"]["uid"]
        if deleted:
            self.cache.remove_sandbox(uid)
            self.unschedulable.pop(key, None)
            self.retry_unschedulable()
        elif sandbox["spec"].get("podName"):
            self._count(sandbox)
        elif not sandbox["metadata"].get("deletionTimestamp"):
            self.queue.add(key)

    def _count(self, sandbox: Obj) -> None:
        bound = adapters.bound_sandbox(sandbox)
        if bound is None:
            return
        with contextlib.suppress(UnknownPod):  # else counted when its pod arrives (pod_changed)
            self.cache.add_sandbox(bound)

    def retry_unschedulable(self) -> None:
        for key in list(self.unschedulable):
            self.queue.add(key)

    # -- scheduling ----------------------------------------------------------------------------

    async def schedule(self, key: str) -> None:
        sandbox = self.store.get(Kind.SANDBOX, key)
        if sandbox is None or sandbox["spec"].get("podName"):
            self.unschedulable.pop(key, None)
            return
        if sandbox["metadata"].get("deletionTimestamp") or self.cache.is_assumed(
            sandbox["metadata"]["uid"]
        ):
            return
        now = time.time()
        self.cache.expire(now)
        decision = self.scheduler.schedule_and_assume(
            adapters.sandbox_request(sandbox), self.cache, now
        )
        if decision.pod is None:
            if self.unschedulable.get(key) != decision.message:
                self.kube.event(sandbox, "Warning", "FailedScheduling", decision.message)
            self.unschedulable[key] = decision.message
            return
        self.unschedulable.pop(key, None)
        pod = decision.pod
        meta = sandbox["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if c.SIDECAR_FINALIZER not in finalizers:
            finalizers.append(c.SIDECAR_FINALIZER)
        binding = {
            "metadata": {
                "resourceVersion": meta["resourceVersion"],
                "labels": {c.POOL_LABEL: pod.pool, c.POD_UID_LABEL: pod.uid},
                "finalizers": finalizers,
            },
            "spec": {"podName": pod.name, "podNamespace": pod.namespace},
        }
        try:
            await self.kube.patch(Kind.SANDBOX, meta["namespace"], meta["name"], binding)
        except ApiException as exc:
            self.cache.forget(meta["uid"])
            if exc.status == 404:
                return
            if exc.status == 409:  # changed meanwhile: decide again on the new version
                self.queue.add_after(key, 0.05)
                return
            raise
        self.kube.event(
            sandbox,
            "Normal",
            "Scheduled",
            f"Successfully assigned {key} to {pod.namespace}/{pod.name}",
        )
