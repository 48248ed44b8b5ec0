"""schedule-churn: scheduling work while pool pods only renew their Leases, 500 sandboxes waiting.

Why: a Lease renewal is a heartbeat; it changes no capacity, so it must not cost scheduling
cycles. Before the scheduling queue, every renewal re-decided every unschedulable sandbox (200
pods and 500 unschedulable sandboxes gave 10,000 cycles in 2 s). This bench drives the
operator's real scheduling path in-process — `Store`, `Pools`, `SchedulerCache`, the
`SchedulerController` with its queue and 16 workers, the manager's routing of watch events and
its 2-second resync — with 200 pool pods (full: 10 bound sandboxes each), 500 pending sandboxes
(400 need a free slot, 100 are bigger than any pod) and every pod renewing its Lease every 10 s
for 60 s, with the sidecar's own `lease_body` (the Lease as stored after each renewal: a new
renewTime, the same annotations).

In-process rather than on the local cluster: its pods are processes, 200 pool pods with their
sidecars do not fit on two cores, and 200 simulated pods with 1,200 Lease writes a minute on
the shared API server would mostly measure kopf's watch and the API server. What differs from
the deployed operator is only the transport: watch events are handed to the controller directly
(as kopf's handlers do) and writes go to an in-memory stand-in that writes through to the store.

`results.attempts_per_sandbox_per_minute` counts scheduling cycles (the controller's
`attempts`) per pending sandbox per minute; goal at most 2. `operator_cpu_seconds` is the process's
CPU time in the window minus what building the Lease bodies cost (the sidecars' share).
Baseline, in the same run: the controller with its queue switched off (`queueing=False`), which
re-decides every unschedulable sandbox on every event and every resync, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from bench.common import Report
from crds import constants as c
from nest_operator.pool_controller import Pools, pool_key
from nest_operator.scheduler import Scheduler, SchedulerCache, default_filters
from nest_operator.scheduler_controller import SchedulerController
from nest_operator.store import Kind, Obj, Store
from nest_sidecar.lease import Capacity, PodRef, lease_body

PODS = 200
PER_POD = 10  # bound sandboxes per pod: every pod is full
PENDING = 500
TOO_BIG = 100  # of the pending: more memory than any pod has
RENEW_SECONDS = 10.0
RESYNC_SECONDS = 2.0  # the manager's default resync period
WORKERS = 16  # the manager's default
DURATION = float(os.environ.get("NEST_BENCH_CHURN_SECONDS", "60"))
POOL = "churn"
NAMESPACE = "nest-system"
MI = 1024 * 1024
CAPACITY = Capacity(memory_bytes=1024 * MI, cpu_millis=2000, max_sandboxes=PER_POD)


class _Kube:
    """The operator's writes, in memory: patches write through to the store and are routed
    back as the manager's `on_write` does; Events are counted."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.route: Any = None
        self.events = 0
        self.patches = 0
        self.status_patches = 0
        self._rv = itertools.count(10_000_000)

    def event(self, obj: Obj, type_: str, reason: str, message: str) -> None:
        self.events += 1

    async def patch(self, kind: Kind, namespace: str, name: str, patch: Obj) -> Obj:
        self.patches += 1
        current = self.store.get(kind, f"{namespace}/{name}")
        assert current is not None
        obj = copy.deepcopy(current)
        for section in ("metadata", "spec"):
            for key, value in (patch.get(section) or {}).items():
                if isinstance(value, dict):
                    obj[section].setdefault(key, {}).update(value)
                else:
                    obj[section][key] = value
        obj["metadata"]["resourceVersion"] = str(next(self._rv))
        self.route(kind, "MODIFIED", obj)
        return obj

    async def patch_status(self, kind: Kind, namespace: str, name: str, status: Obj) -> Obj:
        """The scheduler's Unschedulable status: once per sandbox and new message."""
        self.status_patches += 1
        current = self.store.get(kind, f"{namespace}/{name}")
        assert current is not None
        obj = {**copy.deepcopy(current), "status": {**(current.get("status") or {}), **status}}
        obj["metadata"]["resourceVersion"] = str(next(self._rv))
        self.route(kind, "MODIFIED", obj)
        return obj


def _pool() -> Obj:
    return {
        "metadata": {"name": POOL, "uid": "pool-uid", "generation": 1, "resourceVersion": "1"},
        "spec": {"podNamespace": NAMESPACE, "podSelector": {"matchLabels": {"app": POOL}}},
    }


def _pod(i: int) -> Obj:
    return {
        "metadata": {
            "name": f"{POOL}-{i:03d}", "namespace": NAMESPACE, "uid": f"pod-uid-{i}",
            "resourceVersion": str(1000 + i), "labels": {c.POOL_LABEL: POOL, "app": POOL},
        },
        "status": {"conditions": [{"type": "Ready", "status": "True",
                                   "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
    }  # fmt: skip


def _sandbox(name: str, memory: str, pod: int | None) -> Obj:
    meta: dict[str, Any] = {
        "name": name, "namespace": "tenant", "uid": f"uid-{name}", "resourceVersion": "1",
        "labels": {}, "creationTimestamp": "2026-01-01T00:00:00Z",
    }  # fmt: skip
    spec: dict[str, Any] = {
        "pool": POOL,
        "function": {"handler": "m:f", "source": {"path": "/x"}, "isolation": "subprocess",
                     "resources": {"memory": memory, "cpu": "10m"}},
    }  # fmt: skip
    if pod is not None:
        meta["labels"] = {c.POOL_LABEL: POOL, c.POD_UID_LABEL: f"pod-uid-{pod}"}
        spec |= {"podName": f"{POOL}-{pod:03d}", "podNamespace": NAMESPACE}
    return {"metadata": meta, "spec": spec, "status": {"phase": "Running" if pod else "Pending"}}


@dataclass
class _Run:
    attempts: int
    renewals: int
    events: int
    cpu_seconds: float
    seconds: float


class _Harness:
    """One scheduler controller wired as the manager wires it, fed as kopf feeds it."""

    def __init__(self, queueing: bool) -> None:
        self.store = Store()
        self.kube = _Kube(self.store)
        self.kube.route = self.observe
        self.pools = Pools(self.store)
        self.controller = SchedulerController(
            self.store, cast(Any, self.kube), SchedulerCache(),
            Scheduler(filters=default_filters(40.0)), self.pools, queueing=queueing,
        )  # fmt: skip
        self.feed_cpu = 0.0
        self._rv = itertools.count(100_000)

    def observe(self, kind: Kind, event: str, obj: Obj) -> None:
        """The manager's `observe` and `_route`, for the kinds the scheduler reads."""
        if not self.store.apply(kind, event, obj):
            return
        deleted = event == "DELETED"
        s = self.controller
        if kind == Kind.POD:
            s.pod_changed(obj, deleted)
        elif kind == Kind.POOL:
            s.pool_changed(obj, deleted)
        elif kind == Kind.LEASE:
            s.lease_changed(obj)
        elif kind == Kind.SANDBOX:
            s.sandbox_changed(obj, deleted)

    def renew(self, i: int) -> None:
        """Pod i's sidecar renews: renewTime moves, capacity and natives do not."""
        started = time.process_time()
        ref = PodRef(f"{POOL}-{i:03d}", NAMESPACE, f"pod-uid-{i}", POOL)
        body = lease_body(ref, CAPACITY, datetime.now(UTC), 40)
        body["metadata"] |= {"uid": f"lease-uid-{i}", "resourceVersion": str(next(self._rv))}
        self.feed_cpu += time.process_time() - started
        self.observe(Kind.LEASE, "MODIFIED", body)

    def setup(self) -> None:
        self.observe(Kind.POOL, "ADDED", _pool())
        assert self.store.get(Kind.POOL, pool_key(POOL)) is not None
        for i in range(PODS):
            self.observe(Kind.POD, "ADDED", _pod(i))
            self.renew(i)
            for n in range(PER_POD):
                self.observe(Kind.SANDBOX, "ADDED", _sandbox(f"bound-{i}-{n}", "64Mi", i))

    async def run(self) -> _Run:
        self.setup()
        assert self.controller.cache.pod_count == PODS
        tasks = [asyncio.create_task(self.controller.queue.run(self.controller.schedule, WORKERS))]
        cpu0, started = time.process_time(), time.monotonic()
        feed0, attempts0, events0 = self.feed_cpu, self.controller.attempts, self.kube.events
        for n in range(PENDING):
            memory = "2Gi" if n < TOO_BIG else "64Mi"
            self.observe(Kind.SANDBOX, "ADDED", _sandbox(f"pending-{n}", memory, None))
        tasks.append(asyncio.create_task(self._resync()))
        renewals = await self._renewals(started)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        seconds = time.monotonic() - started
        cpu = time.process_time() - cpu0 - (self.feed_cpu - feed0)
        return _Run(
            self.controller.attempts - attempts0, renewals, self.kube.events - events0, cpu, seconds
        )

    async def _renewals(self, started: float) -> int:
        """Every pod renews every RENEW_SECONDS, their phases spread evenly over the period,
        for DURATION seconds of wall time. Sidecars do not wait for the operator: when its
        loop was busy, the renewals that fell due meanwhile arrive together (as kopf would
        deliver the watch events that queued up)."""
        step = RENEW_SECONDS / PODS
        renewals = 0
        while True:
            now = time.monotonic()
            if now - started >= DURATION:
                return renewals
            due = int((now - started) / step)
            while renewals < due:
                renewals += 1
                self.renew(renewals % PODS)
            next_due = started + (renewals + 1) * step
            await asyncio.sleep(max(0.0, next_due - time.monotonic()))  # a rate, not a sync

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(RESYNC_SECONDS)  # the manager's period
            self.controller.resync()


async def run() -> Report:
    report = Report("schedule-churn")
    new = await _Harness(queueing=True).run()
    old = await _Harness(queueing=False).run()

    def per_minute(r: _Run) -> float:
        return r.attempts / PENDING / (r.seconds / 60)

    report.results = {
        "attempts_per_sandbox_per_minute": per_minute(new),
        "operator_cpu_seconds": new.cpu_seconds,
        "attempts": float(new.attempts),
        "failed_scheduling_events": float(new.events),
        "renewals": float(new.renewals),
        "seconds": new.seconds,
        "pods": float(PODS),
        "pending_sandboxes": float(PENDING),
    }
    report.baselines = {
        "unqueued_attempts_per_sandbox_per_minute": per_minute(old),
        "unqueued_operator_cpu_seconds": old.cpu_seconds,
        "unqueued_attempts": float(old.attempts),
        "unqueued_failed_scheduling_events": float(old.events),
        "unqueued_renewals": float(old.renewals),
    }
    report.ratios = {
        "attempts_over_unqueued": new.attempts / max(old.attempts, 1),
        "cpu_over_unqueued": new.cpu_seconds / max(old.cpu_seconds, 1e-9),
        "attempts_per_sandbox_per_minute_over_goal": per_minute(new) / 2,
    }
    return report
