"""The pool pod's heartbeat: a Lease that says "alive", and declares what the pod offers.

This is the node lease of a kubelet, for a pod: the operator's scheduler treats a pod whose Lease
is older than its TTL as unschedulable and its pod-lifecycle controller evicts the sandboxes of a
pod whose Lease expired. The Lease is owned by the pod, so it is garbage-collected with it. What
the scheduler needs beyond "alive" rides as JSON annotations (a Lease has no free-form fields):
the declared capacity, and the compiled distributions the pod's runtime loaded.

A renewal is a heartbeat and nothing more, as the kubelet's node lease is: a merge PATCH of
`spec.renewTime` alone, through the shared layer (`nest_kube.Api`, on the sidecar's loop, no
thread). The annotations go only when they differ from what this process last wrote (its first
write sends the whole object: a create when the server answers 404, else a patch that makes an
existing Lease this pod's again), so the scheduler sees a pure renewal as a heartbeat and
re-decides nothing, and capacity or natives as the change they are. Nothing else is published:
live usage was rewritten every 10 s and read by nobody.

A failed renewal is retried at once with a short exponential back-off (`renewal_delay`: 0.5 s
doubling, capped at half the interval), not on the next 10 s tick: after an outage the Lease is
fresh again within seconds, before the operator's first check can call it expired. The cap keeps
a pod at no more than twice its usual renewals while the API server is away.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from crds import constants as c
from nest_kube import MERGE_PATCH, Api, ApiError
from nest_kube.resources import LEASES

log = logging.getLogger(__name__)

DEFAULT_MAX_SANDBOXES = 100
RETRY_FIRST = 0.5  # seconds before the first retry of a failed renewal; doubles per failure


@dataclass(frozen=True)
class Capacity:
    """What a pool pod offers to sandboxes."""

    memory_bytes: int
    cpu_millis: int
    max_sandboxes: int
    isolation: tuple[str, ...] = ("subprocess", "namespace")


@dataclass(frozen=True)
class PodRef:
    """The pool pod this sidecar runs in, from the downward API."""

    name: str
    namespace: str
    uid: str
    pool: str


def capacity_from_env(env: Mapping[str, str]) -> Capacity:
    """Capacity as the pool pod declares it through the downward API.

    The pod template maps the runtime container's limits (resourceFieldRef) and the
    `max-sandboxes`/`isolation` annotations (fieldRef) into env, so the sidecar needs no right
    to read pods; an annotation left unset arrives as an empty string and means the default.
    """
    memory = env.get("NEST_CAPACITY_MEMORY") or "1Gi"
    cpu_millis = env.get("NEST_CAPACITY_CPU_MILLIS") or "1000"
    count = env.get("NEST_MAX_SANDBOXES") or str(DEFAULT_MAX_SANDBOXES)
    isolation = env.get("NEST_ISOLATION")
    return Capacity(
        memory_bytes=int(parse_quantity(memory)),
        cpu_millis=int(parse_quantity(cpu_millis)),
        max_sandboxes=int(count),
        isolation=tuple(isolation.split(",")) if isolation else Capacity.isolation,
    )


def renewal_delay(failures: int, interval: float, first: float = RETRY_FIRST) -> float:
    """Seconds until the next renewal after `failures` failed ones in a row: the interval after
    a success, else `first` doubling per failure, never more than half the interval."""
    if failures <= 0:
        return interval
    return float(min(first * 2 ** (failures - 1), interval / 2))


def renew_stamp(now: datetime) -> str:
    """`renewTime` as the API server writes MicroTime."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def declared(capacity: Capacity, natives: Sequence[str] = ()) -> dict[str, str]:
    """The annotations the scheduler reads: capacity, and the compiled distributions the runtime
    loaded ("name==version", sorted), for its NativeDependencies filter."""
    return {
        c.CAPACITY_ANNOTATION: json.dumps(asdict(capacity), sort_keys=True),
        c.NATIVE_DISTRIBUTIONS_ANNOTATION: json.dumps(sorted(natives)),
    }


def lease_body(
    pod: PodRef, capacity: Capacity, now: datetime, duration: int, natives: Sequence[str] = ()
) -> dict[str, Any]:
    """The whole Lease object for this pod at `now`: what a create (or a process's first write)
    sends."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": pod.name,
            "namespace": pod.namespace,
            "labels": {c.POOL_LABEL: pod.pool},
            "annotations": declared(capacity, natives),
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Pod", "name": pod.name, "uid": pod.uid}
            ],
        },
        "spec": {
            "holderIdentity": pod.uid,
            "leaseDurationSeconds": duration,
            "renewTime": renew_stamp(now),
        },
    }


def renewal_patch(
    now: datetime, annotations: Mapping[str, str], written: Mapping[str, str]
) -> dict[str, Any]:
    """The merge patch of one renewal: `renewTime`, plus the annotations that differ from those
    last written (`written`); a pure heartbeat when nothing changed."""
    patch: dict[str, Any] = {"spec": {"renewTime": renew_stamp(now)}}
    changed = {k: v for k, v in annotations.items() if written.get(k) != v}
    if changed:
        patch["metadata"] = {"annotations": changed}
    return patch


class Heartbeat:
    """Renews the Lease every `interval` seconds until cancelled; retries a failure sooner."""

    def __init__(
        self,
        api: Api,
        pod: PodRef,
        capacity: Capacity,
        interval: float = 10.0,
        duration: int = 40,
        natives: Callable[[], Awaitable[Sequence[str]]] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """`natives`: asks the runtime which compiled distributions it loaded (RuntimeInfo);
        when it fails, the last answer is published again (they are only ever added to,
        until the runtime restarts)."""
        self.api = api
        self.pod = pod
        self.capacity = capacity
        self.interval = interval
        self.duration = duration
        self.last_renewed: datetime | None = None
        self.natives = natives
        self.loaded_natives: tuple[str, ...] = ()
        self.failures = 0  # failed renewals in a row
        self._sleep = sleep
        # The annotations the API server has from this process; None until its first write.
        self._written: dict[str, str] | None = None

    async def renew(self) -> None:
        """One write: the whole Lease first, then renewTime and whatever annotation changed."""
        now = datetime.now(UTC)
        annotations = declared(self.capacity, self.loaded_natives)
        pod = self.pod
        body = lease_body(pod, self.capacity, now, self.duration, self.loaded_natives)
        patch = body if self._written is None else renewal_patch(now, annotations, self._written)
        try:
            await self.api.patch(LEASES, pod.namespace, pod.name, patch, content_type=MERGE_PATCH)
        except ApiError as exc:
            if exc.status != 404:
                raise
            await self.api.create(LEASES, pod.namespace, body)  # gone (or never made): all of it
        self._written = annotations
        self.last_renewed = datetime.now(UTC)

    async def run(self) -> None:
        while True:
            if self.natives is not None:
                try:
                    self.loaded_natives = tuple(await self.natives())
                except Exception as exc:  # the runtime restarting: publish the last answer
                    log.debug("runtime natives unknown: %s", exc)
            try:
                await self.renew()
            except Exception as exc:  # keep beating: retried with back-off, then the TTL
                self.failures += 1
                # A warning when an outage starts and one when it ends; the retries between
                # are debug, so a long outage is not a log flood.
                level = logging.WARNING if self.failures == 1 else logging.DEBUG
                retry = renewal_delay(self.failures, self.interval)
                log.log(level, "lease renewal failed (%d in a row): %s; retrying in %.1fs",
                        self.failures, exc, retry)  # fmt: skip
            else:
                if self.failures:
                    log.warning("lease renewed after %d failed attempts", self.failures)
                self.failures = 0
            await self._sleep(renewal_delay(self.failures, self.interval))
