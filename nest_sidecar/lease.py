"""The pool pod's heartbeat: a Lease that says "alive", with declared capacity and live usage.

This is the node lease of a kubelet, for a pod: the operator's scheduler treats a pod whose Lease
is older than its TTL as unschedulable and its pod-lifecycle controller evicts the sandboxes of a
pod whose Lease expired. The Lease is owned by the pod, so it is garbage-collected with it.
Capacity and usage ride as JSON annotations because a Lease has no free-form fields.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.utils.quantity import parse_quantity

from crds import constants as c

log = logging.getLogger(__name__)

DEFAULT_MAX_SANDBOXES = 100
RUNTIME_CONTAINER = "runtime"


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


def _amount(resources: Mapping[str, Any], name: str) -> Any:
    for kind in ("limits", "requests"):
        value = (resources.get(kind) or {}).get(name)
        if value is not None:
            return value
    return None


def capacity_from_pod(pod: Mapping[str, Any]) -> Capacity:
    """Capacity from the pod's annotations, else its runtime container's resources.

    Annotations win because one may declare a pool's density independently of the container
    limits (for example to keep headroom for the runtime itself).
    """
    annotations = pod.get("metadata", {}).get("annotations") or {}
    containers = pod.get("spec", {}).get("containers") or []
    runtime = next((x for x in containers if x.get("name") == RUNTIME_CONTAINER), None)
    resources = (runtime or {}).get("resources") or {}
    memory = annotations.get(c.CAPACITY_MEMORY_ANNOTATION) or _amount(resources, "memory") or "1Gi"
    cpu = annotations.get(c.CAPACITY_CPU_ANNOTATION) or _amount(resources, "cpu") or "1"
    count = annotations.get(c.MAX_SANDBOXES_ANNOTATION) or DEFAULT_MAX_SANDBOXES
    isolation = annotations.get(c.ISOLATION_ANNOTATION)
    return Capacity(
        memory_bytes=int(parse_quantity(memory)),
        cpu_millis=int(parse_quantity(cpu) * 1000),
        max_sandboxes=int(count),
        isolation=tuple(isolation.split(",")) if isolation else Capacity.isolation,
    )


def lease_body(
    pod: Mapping[str, Any], capacity: Capacity, usage: Usage, now: datetime, duration: int
) -> dict[str, Any]:
    """The whole Lease object for this pod at `now`."""
    meta = pod["metadata"]
    stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "labels": {c.POOL_LABEL: (meta.get("labels") or {}).get(c.POOL_LABEL, "")},
            "annotations": {
                c.CAPACITY_ANNOTATION: json.dumps(asdict(capacity), sort_keys=True),
                c.USAGE_ANNOTATION: json.dumps(asdict(usage), sort_keys=True),
            },
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]}
            ],
        },
        "spec": {
            "holderIdentity": meta["uid"],
            "leaseDurationSeconds": duration,
            "renewTime": stamp,
        },
    }


class Heartbeat:
    """Renews the Lease every `interval` seconds until cancelled."""

    def __init__(
        self,
        api: client.ApiClient,
        pod: Mapping[str, Any],
        capacity: Capacity,
        usage: Callable[[], Usage],
        interval: float = 10.0,
        duration: int = 40,
    ) -> None:
        self.coordination = client.CoordinationV1Api(api)
        self.pod = pod
        self.capacity = capacity
        self.usage = usage
        self.interval = interval
        self.duration = duration
        self.last_renewed: datetime | None = None

    def renew(self) -> None:
        body: Any = lease_body(
            self.pod, self.capacity, self.usage(), datetime.now(UTC), self.duration
        )
        name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
        try:
            self.coordination.replace_namespaced_lease(name, namespace, body)
        except ApiException as exc:
            if exc.status != 404:
                raise
            self.coordination.create_namespaced_lease(namespace, body)
        self.last_renewed = datetime.now(UTC)

    async def run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.renew)
            except Exception as exc:  # keep beating: a missed renewal is what the TTL is for
                log.warning("lease renewal failed: %s", exc)
            await asyncio.sleep(self.interval)
