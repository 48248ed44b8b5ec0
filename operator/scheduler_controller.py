"""The scheduler's I/O shell: keeps the scheduler cache fed, binds, explains failures, and turns
watch events into the scheduling queue's cluster events.

Pool pods and their Leases become `PoolPod`s, bound sandboxes `BoundSandbox`es, and each unbound
Sandbox one decision. Deciding is synchronous and assumes the binding in the cache before the
event loop moves on, so concurrent bindings never overbook a pod; the bind itself is a patch
guarded by the sandbox's resourceVersion (optimistic concurrency) that also sets the pool and
pod-uid labels and the sidecar's finalizer — one write. Only pods that `Pools.membership` calls
nodes of their pool enter the cache; a pod that stops being one leaves it (its sandboxes are
evicted by the lifecycle controller) and is counted again, sandboxes included, if it returns.

Which unbound sandbox is decided when is the `SchedulingQueue`'s business; this shell tells it
what changed, as kube-scheduler's event handlers do: a pod joined a pool, a pod's snapshot
changed (and whether only its Lease's renewTime moved: a heartbeat), a sandbox left a pod or an
assumption was dropped (capacity freed), a SandboxPool's spec or a namespace's labels changed.
A snapshot equal to the last one is no event, so a Lease renewal re-queues nothing unless the
Lease had expired or the capacity it declares changed. Keys the queue makes active go to a
`WorkQueue` whose workers run `schedule`; back-off ends on a timer. `queueing=False` restores
the old behaviour (every event re-decides every unschedulable sandbox) for the benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable

from crds import constants as c
from nest_kube import ApiError, on_controller
from nest_operator import adapters
from nest_operator.errors import UnknownPod
from nest_operator.kube import Kube, terminating
from nest_operator.pool_controller import Pools, pool_key
from nest_operator.scheduler import BoundSandbox, PoolPod, SandboxRequest, Scheduler, SchedulerCache
from nest_operator.scheduler.interface import ClusterEvent, EventKind
from nest_operator.scheduler.queue import SchedulingQueue
from nest_operator.store import Kind, Obj, Store, key_of
from nest_operator.workqueue import WorkQueue

log = logging.getLogger(__name__)
UNSCHEDULABLE = "Unschedulable"  # a Pending sandbox's status.reason, as a pod's PodScheduled
CONFLICT_RETRY = 0.05  # the bind met a newer version: decide again once the watch delivered it


class SchedulerController:
    """Places every unbound Sandbox on a pool pod."""

    def __init__(
        self,
        store: Store,
        kube: Kube,
        cache: SchedulerCache,
        scheduler: Scheduler,
        pools: Pools,
        queueing: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.kube = kube
        self.cache = cache
        self.scheduler = scheduler
        self.pools = pools
        self.queueing = queueing
        self.clock = clock
        self.pending = (
            SchedulingQueue(scheduler.plugins)
            if queueing
            else SchedulingQueue(scheduler.plugins, initial_backoff=0.0, hints=False)
        )
        self.queue = WorkQueue("scheduler")  # the keys `pending` made active, for the workers
        self.unschedulable: dict[str, str] = {}  # sandbox key -> last FailedScheduling message
        self.attempts = 0  # scheduling cycles run (kube's schedule_attempts_total)
        self._requests: dict[str, SandboxRequest] = {}  # unbound sandbox key -> as last seen
        self._pool_versions: dict[str, tuple[str, int]] = {}  # pool -> (uid, generation) seen
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    # -- cache maintenance ---------------------------------------------------------------------

    def pod_changed(self, pod: Obj, deleted: bool) -> None:
        self._update_pod(pod, deleted)
        self._pump()

    def _update_pod(self, pod: Obj, deleted: bool) -> None:
        uid = pod["metadata"]["uid"]
        old = self._snapshot(uid)
        if deleted or self.pools.membership(pod) is not None:
            self.cache.remove_pod(uid)  # its sandboxes are evicted: nothing may fit because of it
            return
        lease = self.store.get(Kind.LEASE, key_of(pod))
        new = adapters.pool_pod(pod, lease)
        if new == old:
            return
        self.cache.set_pod(new)
        if old is None:
            for sandbox in self.store.on_pod(uid):  # those seen before their pod (or its pool)
                self._count(sandbox)
        if old is None or old.pool != new.pool:
            self._moved(ClusterEvent(EventKind.POD_ADDED, new.pool, None, new, at=time.time()))
        elif dataclasses.replace(old, lease_renewed_at=new.lease_renewed_at) == new:
            self._moved(ClusterEvent(EventKind.LEASE_RENEWED, new.pool, old, new, at=time.time()))
        else:
            self._moved(ClusterEvent(EventKind.POD_UPDATED, new.pool, old, new, at=time.time()))

    def _snapshot(self, uid: str) -> PoolPod | None:
        try:
            return self.cache.pod(uid).pod
        except UnknownPod:
            return None

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
        self._moved(ClusterEvent(EventKind.POOL_CHANGED, name, at=time.time()))
        self._pump()

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
            self._moved(ClusterEvent(EventKind.NAMESPACE_CHANGED, namespace=name, at=time.time()))
            self._pump()

    def lease_changed(self, lease: Obj) -> None:
        pod = self.store.get(Kind.POD, key_of(lease))
        if pod is not None:
            self.pod_changed(pod, deleted=False)

    def sandbox_changed(self, sandbox: Obj, deleted: bool) -> None:
        key, uid = key_of(sandbox), sandbox["metadata"]["uid"]
        if deleted:
            self._freed(self.cache.remove_sandbox(uid))
            self._forget(key)
        elif sandbox["spec"].get("podName"):
            self._forget(key)
            self._count(sandbox)
        elif sandbox["metadata"].get("deletionTimestamp"):
            self._forget(key)
        else:
            request = adapters.sandbox_request(sandbox)
            if self._requests.get(key) != request:  # new, or what it asks for changed
                self._requests[key] = request
                self.pending.add(key, self.clock())
        self._pump()

    def _forget(self, key: str) -> None:
        self.pending.delete(key)
        self.unschedulable.pop(key, None)
        self._requests.pop(key, None)

    def _count(self, sandbox: Obj) -> None:
        bound = adapters.bound_sandbox(sandbox)
        if bound is None:
            return
        before = self.cache.bound(bound.uid)
        with contextlib.suppress(UnknownPod):  # else counted when its pod arrives (pod_changed)
            self.cache.add_sandbox(bound)
        if before is not None and _gives_back(before, bound):  # moved, or a Failed one's natives
            self._freed(before)

    def _freed(self, sandbox: BoundSandbox | None) -> None:
        pod = None if sandbox is None else self._snapshot(sandbox.pod_uid)
        if sandbox is not None and pod is not None:
            self._moved(
                ClusterEvent(EventKind.CAPACITY_FREED, pod.pool, freed=sandbox, at=time.time())
            )

    def _moved(self, event: ClusterEvent) -> None:
        self.pending.move(event, self.clock())

    def resync(self) -> None:
        """The manager's periodic call: assumptions no watch confirmed expire (capacity freed,
        and their sandboxes, if still unbound, are decided again); back-offs and the
        unschedulable flush are due by the clock. Without queueing: re-decide everything."""
        for sandbox in self.cache.expire(time.time()):
            self._freed(sandbox)
            obj = self.store.by_uid(Kind.SANDBOX, sandbox.uid)
            if obj is not None and not obj["spec"].get("podName"):
                self.pending.add(key_of(obj), self.clock())
        self.pending.flush(self.clock())
        if not self.queueing:
            self.pending.move_all(self.clock())
        self._pump()

    def _pump(self) -> None:
        """Hand what the queue made active to the workers; wake up when back-off ends."""
        while (key := self.pending.pop()) is not None:
            self.queue.add(key)
        wake = self.pending.next_wakeup()
        if wake is None or (self._timer is not None and self._timer_at <= wake):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a test driving the shell): the resync flushes
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = wake
        self._timer = loop.call_later(max(0.0, wake - self.clock()), self._wake)

    def _wake(self) -> None:
        self._timer = None
        self.pending.flush(self.clock())
        self._pump()

    # -- scheduling ----------------------------------------------------------------------------

    async def schedule(self, key: str) -> None:
        try:
            await self._schedule(key)
        finally:
            self._pump()

    async def _schedule(self, key: str) -> None:
        sandbox = self.store.get(Kind.SANDBOX, key)
        if (
            sandbox is None
            or sandbox["spec"].get("podName")
            or sandbox["metadata"].get("deletionTimestamp")
            or self.cache.is_assumed(sandbox["metadata"]["uid"])  # its bind is under way
        ):
            self._forget(key)
            return
        now = time.time()
        for expired in self.cache.expire(now):
            self._freed(expired)
        # Kept current by sandbox_changed; built here when a resync re-adds an expired one.
        request = self._requests.get(key) or adapters.sandbox_request(sandbox)
        self._requests[key] = request
        self.attempts += 1
        decision = self.scheduler.schedule_and_assume(request, self.cache, now)
        if decision.pod is None:
            if self.unschedulable.get(key) != decision.message:
                self.kube.event(sandbox, "Warning", "FailedScheduling", decision.message)
            self.unschedulable[key] = decision.message
            status = unschedulable_status(sandbox.get("status") or {}, decision.message, now)
            if status is not None:
                await self._write_unschedulable(sandbox, status)
            assert decision.rejection is not None
            self.pending.unschedulable(key, request, decision.rejection, self.clock())
            return
        await self._bind(key, sandbox, decision.pod)

    async def _write_unschedulable(self, sandbox: Obj, status: Obj) -> None:
        meta = sandbox["metadata"]
        try:
            await self.kube.patch_status(Kind.SANDBOX, meta["namespace"], meta["name"], status)
        except ApiError as exc:  # gone, or the API away: the next attempt writes it again
            if exc.status != 404 and not terminating(exc):
                log.warning("status of unschedulable %s/%s: %s", meta["namespace"],
                            meta["name"], exc)  # fmt: skip

    async def _bind(self, key: str, sandbox: Obj, pod: PoolPod) -> None:
        meta = sandbox["metadata"]
        # The finalizer's one owner is the binder, in the binding write (the sidecar only
        # releases it; admission refuses a binding without it).
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
        except ApiError as exc:
            self._freed(self.cache.forget(meta["uid"]))
            if exc.status == 404:
                self._forget(key)
            elif exc.status == 409:  # changed meanwhile: decide again on the new version
                self.pending.retry_after(key, self.clock(), CONFLICT_RETRY)
            else:
                self.pending.error(key, self.clock())
                if not terminating(exc):
                    log.warning("binding %s to %s failed (%s); backing off", key, pod.name, exc)
            return
        self.pending.done(key)
        self.unschedulable.pop(key, None)
        self._requests.pop(key, None)
        subject = on_controller(sandbox)  # a replica set's: one counted Event per pool pod
        what = key if subject is sandbox else "sandboxes"
        self.kube.event(
            subject,
            "Normal",
            "Scheduled",
            f"Successfully assigned {what} to {pod.namespace}/{pod.name}",
        )


def unschedulable_status(current: Obj, message: str, now: float) -> Obj | None:
    """The status of a sandbox no pod can take, as kube-scheduler's PodScheduled=False: phase
    Pending, reason Unschedulable (so `kubectl get` shows it, not only an Event) and a Scheduled
    condition saying why; None when the status says so already (one write per new message, none
    after an operator restart). Only unbound sandboxes get it: once bound, status is the
    sidecar's, whose first write replaces this one."""
    if current.get("reason") == UNSCHEDULABLE and current.get("message") == message:
        return None
    scheduled: Obj = next(
        (cond for cond in current.get("conditions") or [] if cond.get("type") == "Scheduled"), {}
    )
    since = scheduled.get("lastTransitionTime") if scheduled.get("status") == "False" else None
    return {
        "phase": "Pending",
        "reason": UNSCHEDULABLE,
        "message": message,
        "conditions": [{
            "type": "Scheduled", "status": "False", "reason": UNSCHEDULABLE, "message": message,
            "lastTransitionTime": since or adapters.rfc3339(now),
        }],
    }  # fmt: skip


def _gives_back(before: BoundSandbox, after: BoundSandbox) -> bool:
    """Whether a sandbox's new binding holds less on its old pod than before."""
    return (
        before.pod_uid != after.pod_uid
        or after.memory < before.memory
        or after.cpu < before.cpu
        or bool(before.native_distributions - after.native_distributions)
    )
