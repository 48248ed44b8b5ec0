"""The controller manager: one store, the informers that fill it, the controllers, their queues.

Why a manager between the watches and the controllers: watch events arrive per object, while
each controller works on its own key (a deployment, a replica set, a pod UID) and must only start
once every kind has been listed — the restart-safety rule that the operator never acts on a
partial view. The manager runs one `nest_kube.Informer` per kind (one LIST each, then a watch
from its version), waits for all of them to be synced, then routes each event to the keys it
affects. docs/operator.md says why these are informers and queues of ours rather than kopf's
per-object handlers (API writes, measured). With several replicas every one runs the informers
(`start_informers`: the webhook's store, a warm standby) and only the Lease holder the
controllers (`lead`, `stop_leading`; main.py wires them to nest_kube.leader).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from crds import constants as c
from nest_kube import ApiError, Connection, Informer
from nest_operator import adapters
from nest_operator.autoscaler_controller import AutoscalerController
from nest_operator.build_controller import BuildController
from nest_operator.build_logic import BuildSettings
from nest_operator.deployment_controller import DeploymentController
from nest_operator.endpoints_controller import EndpointsController
from nest_operator.kube import Kube, terminating
from nest_operator.lifecycle_controller import WATCHED_KINDS, Grace, LifecycleController, Policy
from nest_operator.pool_controller import PoolController, Pools, pool_key, pool_of
from nest_operator.replicaset_controller import ReplicaSetController
from nest_operator.scheduler import Scheduler, SchedulerCache, default_filters
from nest_operator.scheduler_controller import SchedulerController
from nest_operator.store import Kind, Obj, Store, controller_uid, key_of
from nest_operator.workqueue import WorkQueue

log = logging.getLogger(__name__)
# At most this often per deployment is its endpoint list rewritten during a burst of changes.
ENDPOINTS_INTERVAL = 0.1


@dataclass(frozen=True)
class Settings:
    """Tunables, from the environment (the operator's Deployment sets them)."""

    lease_ttl: float = 40.0
    not_ready_grace: float = 30.0
    resync_seconds: float = 2.0
    workers: int = 16
    autoscale_seconds: float = 1.0
    build_image: str = "nest:latest"  # --build-image: the image of build Jobs
    build_deadline: int = 900  # --build-deadline: their activeDeadlineSeconds
    # Eviction for health (lifecycle_logic): --eviction-rate, --unhealthy-threshold,
    # --startup-grace.
    eviction_rate: float = Policy.eviction_rate
    unhealthy_threshold: float = Policy.unhealthy_threshold
    startup_grace: float = Policy.startup_grace

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            lease_ttl=float(env.get("NEST_LEASE_TTL", cls.lease_ttl)),
            not_ready_grace=float(env.get("NEST_NOT_READY_GRACE", cls.not_ready_grace)),
            resync_seconds=float(env.get("NEST_RESYNC_SECONDS", cls.resync_seconds)),
            workers=int(env.get("NEST_WORKERS", cls.workers)),
            autoscale_seconds=float(env.get("NEST_AUTOSCALE_SECONDS", cls.autoscale_seconds)),
            build_image=env.get("NEST_BUILD_IMAGE") or cls.build_image,
            build_deadline=int(env.get("NEST_BUILD_DEADLINE", cls.build_deadline)),
            eviction_rate=float(env.get("NEST_EVICTION_RATE", cls.eviction_rate)),
            unhealthy_threshold=float(env.get("NEST_UNHEALTHY_THRESHOLD", cls.unhealthy_threshold)),
            startup_grace=float(env.get("NEST_STARTUP_GRACE", cls.startup_grace)),
        )


class ControllerManager:
    """Owns the store and runs every controller; `observe` is fed by the informers."""

    def __init__(self, connection: Connection, settings: Settings, kube: Kube | None = None):
        self.settings = settings
        self.store = kube.store if kube is not None else Store()
        self.kube = kube or Kube(connection, self.store)
        self.kube.on_write = self._written
        self.informers: dict[Kind, Informer] = {
            kind: self.kube.informer(kind, self.observe) for kind in Kind
        }
        self.cache = SchedulerCache()
        self.pools = Pools(self.store)  # which pods are nodes: asked by everything below
        self.pool_status = PoolController(self.store, self.kube, self.pools)
        scheduler = Scheduler(filters=default_filters(settings.lease_ttl))
        self.scheduler = SchedulerController(
            self.store, self.kube, self.cache, scheduler, self.pools
        )
        self.replicasets = ReplicaSetController(self.store, self.kube, self.cache)
        builds = BuildSettings(settings.build_image, settings.build_deadline)
        self.deployments = DeploymentController(
            self.store, self.kube, builds=BuildController(self.store, self.kube, builds)
        )
        self.endpoints = EndpointsController(self.store, self.kube)
        self.autoscaler = AutoscalerController(self.store, self.kube, settings.autoscale_seconds)
        self.lifecycle = LifecycleController(
            self.store,
            self.kube,
            Grace(not_ready_seconds=settings.not_ready_grace),
            membership=self.pools.membership,
            policy=Policy(
                startup_grace=settings.startup_grace,
                eviction_rate=settings.eviction_rate,
                unhealthy_threshold=settings.unhealthy_threshold,
            ),
            watches=[self.informers[kind] for kind in WATCHED_KINDS],
        )
        self.queues = {
            "replicasets": WorkQueue("replicasets"),
            "deployments": WorkQueue("deployments"),
            "endpoints": WorkQueue("endpoints"),
            "lifecycle": WorkQueue("lifecycle"),
            "pools": WorkQueue("pools"),
        }
        # Expectations that expire and back-offs that end announce themselves by no event.
        self.replicasets.requeue = self.queues["replicasets"].add_after
        self.deployments.requeue = self.queues["deployments"].add_after
        self.endpoints.requeue = self.queues["endpoints"].add_after
        self.informed = False  # the store holds every kind's first list: the webhook may use it
        self.synced = False  # the controllers run (this replica leads) and events are routed
        self._tasks: list[asyncio.Task[None]] = []
        self._ready: set[str] = set()  # sandbox UIDs last seen Ready: flips skip the throttle

    async def start(self) -> None:
        """Standalone: fill the store, then run the controllers (no leader election)."""
        await self.start_informers()
        self.lead()

    async def start_informers(self) -> None:
        """List every kind (each informer once) and keep watching. Every replica does this, the
        standbys too: the webhook answers from this store, and a standby that becomes leader
        starts its controllers on a warm view instead of listing everything first."""
        started = time.monotonic()
        for informer in self.informers.values():
            informer.start()
        # No deadline: an unreachable API server is waited out by the informers' back-off,
        # and the `synced` probe reports not-ready meanwhile.
        await asyncio.gather(*(informer.synced.wait() for informer in self.informers.values()))
        self.informed = True
        counts = {kind.value: len(self.store.all(kind)) for kind in Kind}
        log.info("synced in %.2fs: %s", time.monotonic() - started, counts)

    def lead(self) -> None:
        """Start the controllers on the store's view (the leader only; synchronous, so nothing
        runs between winning the Lease and the controllers' start)."""
        assert self.informed, "lead() before the informers synced"
        routed = (Kind.NAMESPACE, Kind.POOL, Kind.POD, Kind.LEASE, Kind.SANDBOX, Kind.REPLICASET,
                  Kind.DEPLOYMENT)  # fmt: skip
        for kind in routed:  # tenancy inputs first: pods are judged against their pools
            for obj in self.store.all(kind):
                self._route(kind, obj, deleted=False)
        self.synced = True
        s = self.settings
        jobs: list[tuple[str, Callable[[str], Awaitable[None]], WorkQueue]] = [
            ("replicasets", self.replicasets.reconcile, self.queues["replicasets"]),
            ("deployments", self.deployments.reconcile, self.queues["deployments"]),
            ("endpoints", self.endpoints.reconcile, self.queues["endpoints"]),
            ("lifecycle", self._lifecycle, self.queues["lifecycle"]),
            ("pools", self._pool_status, self.queues["pools"]),
            ("scheduler", self.scheduler.schedule, self.scheduler.queue),
        ]
        for name, handler, queue in jobs:
            task = asyncio.create_task(queue.run(_tolerant(handler), s.workers), name=name)
            self._tasks.append(task)
        self._tasks.append(asyncio.create_task(self._resync(), name="resync"))
        self._tasks.append(asyncio.create_task(self.autoscaler.run(), name="autoscaler"))
        log.info("controllers started")

    def stop_leading(self) -> None:
        """Leadership lost: no controller may take another step. Cancelling is synchronous (each
        task stops at its next await); the process then exits (main.py), so nothing here has to
        be undone for a second term."""
        self.synced = False  # no more routing into the queues
        for task in self._tasks:
            task.cancel()
        log.warning("controllers stopped: this replica no longer leads")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for informer in self.informers.values():
            await informer.stop()
        await self.kube.close()

    def observe(self, kind: Kind, event: str, obj: Obj) -> None:
        """An informer's delta: ADDED, MODIFIED or DELETED (also what a relist found)."""
        if not self.store.apply(kind, event, obj):
            return
        if self.synced:
            self._route(kind, obj, deleted=event == "DELETED")

    def _written(self, kind: Kind, obj: Obj, deleted: bool) -> None:
        if self.synced:
            self._route(kind, obj, deleted)

    def _route(self, kind: Kind, obj: Obj, deleted: bool) -> None:
        q = self.queues
        if kind == Kind.POD:
            self.scheduler.pod_changed(obj, deleted)
            self.pool_status.pod_changed(obj, deleted)
            q["lifecycle"].add(obj["metadata"]["uid"])
            if self.store.get(Kind.POOL, pool_key(pool_of(obj))) is not None:
                q["pools"].add(pool_of(obj))
        elif kind == Kind.POOL:
            name = obj["metadata"]["name"]
            self.scheduler.pool_changed(obj, deleted)
            for labelled in self.store.labelled(Kind.POD, c.POOL_LABEL, name):
                self.pool_status.pod_changed(labelled, deleted=False)
                q["lifecycle"].add(labelled["metadata"]["uid"])  # evicts from pods that left
            if not deleted:
                q["pools"].add(name)
        elif kind == Kind.NAMESPACE:
            self.scheduler.namespace_changed(obj, deleted)
        elif kind == Kind.LEASE:
            self.scheduler.lease_changed(obj)
            pod = self.store.get(Kind.POD, key_of(obj))
            if pod is not None:
                q["lifecycle"].add(pod["metadata"]["uid"])
        elif kind == Kind.SANDBOX:
            self.scheduler.sandbox_changed(obj, deleted)
            for key in self.replicasets.keys_for_sandbox(obj):
                q["replicasets"].add(key)
            # Followed for every sandbox, so its deletion is forgotten also when its deployment
            # went first (it was, for each sandbox a deleted deployment left, forever).
            flipped = self._readiness_changed(obj, deleted)
            endpoints = self.endpoints.key_for_sandbox(obj)
            if endpoints is not None:
                if flipped:
                    q["endpoints"].add(endpoints)  # a function waking from zero waits on this
                else:
                    q["endpoints"].add_throttled(endpoints, ENDPOINTS_INTERVAL)
        elif kind == Kind.REPLICASET:
            q["replicasets"].add(key_of(obj))
            deployment = self.deployments.key_for_owned(obj)
            if deployment is not None:
                q["deployments"].add(deployment)
                q["endpoints"].add(deployment)
        elif kind == Kind.DEPLOYMENT:
            q["deployments"].add(key_of(obj))
            q["endpoints"].add(key_of(obj))
        elif kind == Kind.ENDPOINTS and controller_uid(obj) is not None:
            q["endpoints"].add(key_of(obj))
        elif kind == Kind.JOB:  # a build Job: its deployment decides what its end means
            owner = controller_uid(obj)
            built = self.store.by_uid(Kind.DEPLOYMENT, owner) if owner else None
            if built is not None:
                q["deployments"].add(key_of(built))

    def _readiness_changed(self, sandbox: Obj, deleted: bool) -> bool:
        uid = sandbox["metadata"]["uid"]
        ready = not deleted and adapters.condition_true(sandbox, "Ready")
        was_ready = uid in self._ready
        if ready:
            self._ready.add(uid)
        else:
            self._ready.discard(uid)
        return ready != was_ready

    async def _lifecycle(self, pod_uid: str) -> None:
        await self.lifecycle.reconcile(pod_uid, time.time())

    async def _pool_status(self, name: str) -> None:
        await self.pool_status.reconcile(name, time.time())

    async def _resync(self) -> None:
        """Time-based conditions no event announces: Lease expiry, assumed bindings' TTL.

        An expiring Lease only makes pods unusable, so the scheduler re-decides nothing for it;
        its resync drops expired assumptions (capacity freed) and flushes its queue's timers.
        """
        while True:
            await asyncio.sleep(self.settings.resync_seconds)  # a period, not a synchronisation
            for uid in {p["metadata"]["uid"] for p in self.store.all(Kind.POD)} | set(
                self.store.bound_pod_uids()
            ):
                self.queues["lifecycle"].add(uid)
            self.scheduler.resync()


def _tolerant(handler: Callable[[str], Awaitable[None]]) -> Callable[[str], Awaitable[None]]:
    """A namespace being deleted refuses new objects: nothing to retry, its objects are going."""

    async def run(key: str) -> None:
        try:
            await handler(key)
        except ApiError as exc:
            if terminating(exc):
                log.debug("%s: namespace is terminating", key)
                return
            raise

    return run
