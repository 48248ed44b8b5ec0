"""Leader election on a coordination.k8s.io Lease, as client-go's leaderelection does it.

Why: a component that runs several replicas for availability (the operator) must still have one
writer of its decisions. Kubernetes' own components (kube-controller-manager, kube-scheduler)
elect that writer with a Lease: the holder renews it every `retry_period`, a candidate takes it
once it has seen the same record, unchanged, for the Lease's duration, and every write is an
update conditional on the resourceVersion read, so of two candidates racing for an expired Lease
exactly one wins (the other gets 409). Generic, so it lives in the shared layer.

The rules (`decide`, `claim`) are pure; `LeaderElector` is the shell on the `Api` protocol:

- Expiry is judged by the candidate's own monotonic clock from when it *observed* the record
  change (client-go's observedTime), never by comparing `renewTime` with its wall clock, so
  clock skew between nodes cannot make two leaders. The Lease is watched (an `Informer` on the
  one object), so a standby observes each renewal within milliseconds, and it wakes exactly when
  the record it last saw expires: takeover comes `leaseDuration` after the dead holder's last
  renewal, not a polling period later.
- The holder stops leading at once when it could not renew for `renew_deadline` (measured from
  the start of its last successful write, which is no later than when a candidate can have
  observed it, so the holder has stopped `lease_duration - renew_deadline` before anyone may
  take over), or when it sees another holder.
- An identity names one process (`identity()`: pod name and a random suffix, client-go's
  `hostname_uuid`): a restarted process is a new candidate, and it is the warm standby, which
  has been watching, that expires the record first.
- `release()` (a graceful stop) empties holderIdentity, and a candidate takes an empty Lease at
  once: a rolling update hands over without waiting out the duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nest_kube.api import DELETED, Api, ApiError
from nest_kube.informer import Informer
from nest_kube.resources import LEASES, Obj
from nest_kube.store import Delta

log = logging.getLogger(__name__)
JITTER = 1.2  # client-go's JitterFactor: the renew deadline must leave room for retries


@dataclass(frozen=True)
class Timing:
    """client-go's LeaderElectionConfig durations, in seconds."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not self.lease_duration > self.renew_deadline > self.retry_period * JITTER > 0:
            raise ValueError(
                f"need lease duration ({self.lease_duration}) > renew deadline "
                f"({self.renew_deadline}) > {JITTER} x retry period ({self.retry_period})"
            )


class Action(enum.Enum):
    ACQUIRE = "acquire"  # write the Lease naming me (create it if absent)
    RENEW = "renew"  # I lead: write a fresh renewTime
    WAIT = "wait"  # look again at `Step.at` (or when the Lease changes)
    LOST = "lost"  # I led and may no longer: stop leading now


@dataclass(frozen=True)
class Step:
    action: Action
    at: float = 0.0  # monotonic; for WAIT
    reason: str = ""


def spec_of(lease: Obj | None) -> dict[str, Any] | None:
    return None if lease is None else dict(lease.get("spec") or {})


def decide(
    lease: Obj | None,
    observed_at: float,
    now: float,
    me: str,
    renewed: float | None,
    timing: Timing,
) -> Step:
    """What a candidate does next, given the Lease as last read (None: there is none), when it
    observed that record change (`observed_at`, monotonic), and, while it leads, when its last
    successful write started (`renewed`; None: not leading)."""
    spec = spec_of(lease)
    holder = str((spec or {}).get("holderIdentity") or "")
    if renewed is not None:
        if now - renewed >= timing.renew_deadline:
            return Step(Action.LOST, reason=f"not renewed for {timing.renew_deadline:g}s")
        if spec is not None and holder != me:
            return Step(Action.LOST, reason=f"the Lease is held by {holder or 'nobody'}")
        if spec is None:
            return Step(Action.ACQUIRE, reason="the Lease was deleted")
        due = renewed + timing.retry_period
        if now >= due:
            return Step(Action.RENEW)
        return Step(Action.WAIT, at=due)
    if spec is None:
        return Step(Action.ACQUIRE, reason="there is no Lease")
    if not holder:
        return Step(Action.ACQUIRE, reason="the Lease was released")
    if holder == me:
        return Step(Action.ACQUIRE, reason="the Lease names me")
    duration = float(spec.get("leaseDurationSeconds") or timing.lease_duration)
    expires = observed_at + duration
    if now >= expires:
        return Step(Action.ACQUIRE, reason=f"{holder} did not renew for {duration:g}s")
    return Step(Action.WAIT, at=expires)


def micro_time(when: dt.datetime) -> str:
    """A MicroTime as the API server writes one (RFC 3339, microseconds, UTC)."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def claim(
    lease: Obj | None, namespace: str, name: str, me: str, now: dt.datetime, timing: Timing
) -> Obj:
    """The Lease body that names `me` holder: a renewal keeps acquireTime and the transition
    count, a takeover sets acquireTime and counts one more transition. The body carries the
    resourceVersion read, so the write is conditional on nobody having written since."""
    spec = spec_of(lease) or {}
    stamp = micro_time(now)
    mine = spec.get("holderIdentity") == me
    transitions = int(spec.get("leaseTransitions") or 0)
    if lease is not None and not mine:
        transitions += 1
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if lease is not None:
        old = lease.get("metadata") or {}
        meta |= {k: old[k] for k in ("resourceVersion", "labels", "annotations") if k in old}
    return {
        "apiVersion": LEASES.api_version,
        "kind": LEASES.kind,
        "metadata": meta,
        "spec": {
            "holderIdentity": me,
            "leaseDurationSeconds": int(timing.lease_duration),
            "acquireTime": spec.get("acquireTime") if mine and spec.get("acquireTime") else stamp,
            "renewTime": stamp,
            "leaseTransitions": transitions,
        },
    }


def released(lease: Obj, now: dt.datetime) -> Obj:
    """client-go's release on a graceful stop: nobody holds it, and it expires in a second."""
    body = {**lease, "spec": dict(lease.get("spec") or {})}
    stamp = micro_time(now)
    body["spec"] |= {"holderIdentity": None, "leaseDurationSeconds": 1, "renewTime": stamp,
                     "acquireTime": stamp}  # fmt: skip
    return body


def _older(obj: Obj, than: Obj | None) -> bool:
    """Whether `obj` is an earlier version than `than` (resourceVersions are etcd revisions)."""
    new = str((obj.get("metadata") or {}).get("resourceVersion") or "")
    old = str(((than or {}).get("metadata") or {}).get("resourceVersion") or "")
    return new.isdigit() and old.isdigit() and int(new) < int(old)


def identity(pod_name: str | None = None) -> str:
    """This process's holderIdentity: the pod's name (POD_NAME, else the host name) and a random
    suffix, so a restarted process never takes its predecessor's record for its own."""
    pod = pod_name or os.environ.get("POD_NAME") or socket.gethostname()
    return f"{pod}_{uuid.uuid4().hex[:8]}"


def holder_pod(holder: str) -> str:
    """The pod part of an identity made by `identity()`."""
    return holder.rpartition("_")[0] or holder


class LeaderElector:
    """Campaigns for the Lease `namespace/name`, then renews it; `run` returns once it is lost.

    `on_started` runs when this process starts leading, `on_stopped` the moment it stops (both
    synchronously, on the loop: nothing else runs between the decision and the callback).
    """

    def __init__(
        self,
        api: Api,
        namespace: str,
        name: str,
        me: str,
        timing: Timing | None = None,
        *,
        on_started: Callable[[], None] | None = None,
        on_stopped: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.api, self.namespace, self.name, self.me = api, namespace, name, me
        self.timing = timing or Timing()
        self.on_started, self.on_stopped = on_started, on_stopped
        self.clock, self.wall = clock, wall
        self.informer = Informer(api, LEASES, namespace=namespace,
                                 field_selector=f"metadata.name={name}")  # fmt: skip
        self.informer.add_handler(self._seen)
        self.lease: Obj | None = None  # the newest we know: from the watch or our own write
        self.observed_at = clock()
        self.renewed: float | None = None  # start of our last successful write, while leading
        self.leading = asyncio.Event()
        self.lost = asyncio.Event()
        self._changed = asyncio.Event()

    @property
    def is_leader(self) -> bool:
        return self.renewed is not None

    def _seen(self, delta: Delta) -> None:
        if delta.type != DELETED and _older(delta.obj, self.lease):
            return  # our own write's answer is newer than this echo of what it replaced
        self._note(None if delta.type == DELETED else delta.obj)

    def _note(self, lease: Obj | None) -> None:
        if spec_of(lease) != spec_of(self.lease):
            self.observed_at = self.clock()
        self.lease = lease
        self._changed.set()

    async def run(self) -> None:
        """Until leadership is lost (a standby never returns); the watch stops with it."""
        self.informer.start()
        try:
            await self.informer.synced.wait()
            self.observed_at = self.clock()  # what the list showed was seen just now
            while True:
                now = self.clock()
                step = decide(self.lease, self.observed_at, now, self.me, self.renewed,
                              self.timing)  # fmt: skip
                if step.action is Action.LOST:
                    self._stop(step.reason)
                    return
                if step.action is Action.WAIT:
                    await self._wait(step.at - now)
                    continue
                if not await self._write(step):  # False: failed; look again after a pause
                    await self._wait(self.timing.retry_period, changes=False)
        finally:
            await self.informer.stop()

    async def _wait(self, seconds: float, changes: bool = True) -> None:
        if self.renewed is not None:  # a leader looks again by its deadline at the latest
            seconds = min(seconds, self.renewed + self.timing.renew_deadline - self.clock())
        self._changed.clear()
        if not changes:
            await asyncio.sleep(max(0.0, seconds))  # a retry period, not a synchronisation
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), max(0.0, seconds))

    async def _write(self, step: Step) -> bool:
        """One acquire or renewal. True when it worked, or when it found the Lease changed (the
        next decision is due at once: a leader that lost it stops now); False to pause."""
        started = self.clock()
        body = claim(self.lease, self.namespace, self.name, self.me, self.wall(), self.timing)
        budget = None
        if self.renewed is not None:  # a renewal may not outlast the deadline
            budget = max(0.0, self.renewed + self.timing.renew_deadline - started)
        try:
            if self.lease is None:
                call = self.api.create(LEASES, self.namespace, body)
            else:
                call = self.api.replace(LEASES, self.namespace, self.name, body)
            result = await asyncio.wait_for(call, budget)
        except TimeoutError:
            log.warning("renewing Lease %s/%s timed out", self.namespace, self.name)
            return False
        except ApiError as exc:
            if exc.status in (404, 409):  # gone, or someone wrote it since we read it
                return await self._refresh()
            log.warning("%s of Lease %s/%s failed: %s", step.action.value, self.namespace,
                        self.name, exc)  # fmt: skip
            return False
        self._note(result)
        self.renewed = started
        if not self.leading.is_set():
            log.info("%s leads by Lease %s/%s (%s)", self.me, self.namespace, self.name,
                     step.reason)  # fmt: skip
            self.leading.set()
            if self.on_started is not None:
                self.on_started()
        return True

    async def _refresh(self) -> bool:
        try:
            self._note(await self.api.get(LEASES, self.namespace, self.name))
        except ApiError as exc:
            if exc.status != 404:
                log.warning("reading Lease %s/%s failed: %s", self.namespace, self.name, exc)
                return False
            self._note(None)
        return True

    def _stop(self, reason: str) -> None:
        log.warning("%s stopped leading (Lease %s/%s): %s", self.me, self.namespace, self.name,
                    reason)  # fmt: skip
        self.renewed = None
        self.lost.set()
        if self.on_stopped is not None:
            self.on_stopped(reason)

    async def release(self) -> None:
        """A graceful stop: give the Lease up so a standby takes it at once (best effort)."""
        if self.renewed is None or self.lease is None:
            return
        self.renewed = None
        with contextlib.suppress(ApiError, TimeoutError):
            await asyncio.wait_for(
                self.api.replace(LEASES, self.namespace, self.name,
                                 released(self.lease, self.wall())),
                self.timing.retry_period,
            )  # fmt: skip
            log.info("%s released Lease %s/%s", self.me, self.namespace, self.name)
