"""The pool pod's heartbeat: a Lease that says "alive", with declared capacity and live usage.

This is the node lease of a kubelet, for a pod: the operator's scheduler treats a pod whose Lease
is older than its TTL as unschedulable and its pod-lifecycle controller evicts the sandboxes of a
pod whose Lease expired. The Lease is owned by the pod, so it is garbage-collected with it.
Capacity and usage ride as JSON annotations because a Lease has no free-form fields.

Renewals are merge PATCHes through the shared layer (`nest_kube.Api`, on the sidecar's loop, no
thread); the first one, answered 404, creates the Lease. A failed renewal is logged and the next
one comes after the usual interval: a missed renewal is what the Lease's TTL is for.
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


@dataclass(frozen=True)
class Capacity:
    """What a pool pod offers to sandboxes."""

    memory_bytes: int
    cpu_millis: int
    max_sandboxes: int
    isolation: tuple[str, ...] = ("subprocess", "namespace")


@dataclass(frozen=True)
class Usage:
    """What its sandboxes use now."""

    sandboxes: int
    memory_bytes: int
    cpu_millis: int


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


def lease_body(
    pod: PodRef,
    capacity: Capacity,
    usage: Usage,
    now: datetime,
    duration: int,
    natives: Sequence[str] = (),
) -> dict[str, Any]:
    """The whole Lease object for this pod at `now`; `natives`: the compiled distributions its
    runtime loaded ("name==version"), for the scheduler's NativeDependencies filter."""
    stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": pod.name,
            "namespace": pod.namespace,
            "labels": {c.POOL_LABEL: pod.pool},
            "annotations": {
                c.CAPACITY_ANNOTATION: json.dumps(asdict(capacity), sort_keys=True),
                c.USAGE_ANNOTATION: json.dumps(asdict(usage), sort_keys=True),
                c.NATIVE_DISTRIBUTIONS_ANNOTATION: json.dumps(sorted(natives)),
            },
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Pod", "name": pod.name, "uid": pod.uid}
            ],
        },
        "spec": {
            "holderIdentity": pod.uid,
            "leaseDurationSeconds": duration,
            "renewTime": stamp,
        },
    }


class Heartbeat:
    """Renews the Lease every `interval` seconds until cancelled."""

    def __init__(
        self,
        api: Api,
        pod: PodRef,
        capacity: Capacity,
        usage: Callable[[], Usage],
        interval: float = 10.0,
        duration: int = 40,
        natives: Callable[[], Awaitable[Sequence[str]]] | None = None,
    ) -> None:
        """`natives`: asks the runtime which compiled distributions it loaded (RuntimeInfo);
        when it fails, the last answer is published again (they are only ever added to,
        until the runtime restarts)."""
        self.api = api
        self.pod = pod
        self.capacity = capacity
        self.usage = usage
        self.interval = interval
        self.duration = duration
        self.last_renewed: datetime | None = None
        self.natives = natives
        self.loaded_natives: tuple[str, ...] = ()

    async def renew(self) -> None:
        body = lease_body(
            self.pod,
            self.capacity,
            self.usage(),
            datetime.now(UTC),
            self.duration,
            self.loaded_natives,
        )
        name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
        try:
            await self.api.patch(LEASES, namespace, name, body, content_type=MERGE_PATCH)
        except ApiError as exc:
            if exc.status != 404:
                raise
            await self.api.create(LEASES, namespace, body)
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
            except Exception as exc:  # keep beating: a missed renewal is what the TTL is for
                log.warning("lease renewal failed: %s", exc)
            await asyncio.sleep(self.interval)
