"""The local Node object: registration, Ready heartbeats and the node Lease.

The controller-manager runs without node-lifecycle, so nothing else maintains this node: admission
gives a new Node the `node.kubernetes.io/not-ready` taint and only we can take it off. We still
keep the Ready condition and the kube-node-lease Lease fresh like a kubelet would, so tools that
look at either (kubectl, a future node-lifecycle controller) see a live node. The heartbeat is a
task on the runner's event loop, over the same `nest_kube` API as the pod watch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import socket
from datetime import UTC, datetime
from typing import Any, Final

import psutil

from nest_cluster.paths import KUBERNETES_VERSION
from nest_kube import Api, ApiError
from nest_kube.resources import LEASES, Resource

log = logging.getLogger(__name__)
NODES: Final = Resource("", "v1", "nodes", "Node", namespaced=False)
LEASE_NAMESPACE = "kube-node-lease"
HEARTBEAT = 10.0  # seconds between node status and Lease renewals
LEASE_SECONDS = 40
MAX_PODS = 110
NOT_READY_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")


def _now(micro: bool = False) -> str:
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ"
    return datetime.now(UTC).strftime(fmt)


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def capacity() -> dict[str, str]:
    return {
        "cpu": str(os.cpu_count() or 1),
        "memory": f"{psutil.virtual_memory().total // 1024}Ki",
        "pods": str(MAX_PODS),
        "ephemeral-storage": f"{psutil.disk_usage('/').total // 1024}Ki",
    }


def node_status(ready: bool, message: str, since: str | None) -> dict[str, Any]:
    """The node's status document; `since` keeps the Ready transition time stable."""
    now = _now()
    conditions = [
        {"type": kind, "status": "False", "reason": f"KubeletHas{reason}",
         "message": f"kubelet has {text}", "lastHeartbeatTime": now,
         "lastTransitionTime": since or now}
        for kind, reason, text in (
            ("MemoryPressure", "SufficientMemory", "sufficient memory available"),
            ("DiskPressure", "NoDiskPressure", "no disk pressure"),
            ("PIDPressure", "SufficientPID", "sufficient PID available"),
        )
    ]  # fmt: skip
    conditions.append(
        {
            "type": "Ready",
            "status": "True" if ready else "False",
            "reason": "KubeletReady" if ready else "KubeletNotReady",
            "message": message,
            "lastHeartbeatTime": now,
            "lastTransitionTime": since or now,
        }
    )
    return {
        "capacity": capacity(),
        "allocatable": capacity(),
        "addresses": [
            {"type": "InternalIP", "address": "127.0.0.1"},
            {"type": "Hostname", "address": socket.gethostname()},
        ],
        "conditions": conditions,
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        "nodeInfo": {
            "architecture": _arch(),
            "bootID": "",
            "containerRuntimeVersion": "nest://local-processes",
            "kernelVersion": platform.release(),
            "kubeProxyVersion": f"v{KUBERNETES_VERSION}",
            "kubeletVersion": f"v{KUBERNETES_VERSION}",
            "machineID": "",
            "operatingSystem": "linux",
            "osImage": platform.freedesktop_os_release().get("PRETTY_NAME", "Linux")
            if hasattr(platform, "freedesktop_os_release")
            else "Linux",
            "systemUUID": "",
        },
    }


class NodeAgent:
    """Registers the node and keeps it (and its Lease) fresh from a task on the loop."""

    def __init__(self, api: Api, name: str, heartbeat: float = HEARTBEAT) -> None:
        self.api = api
        self.name = name
        self.heartbeat = heartbeat
        self._ready_since: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def register(self) -> None:
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": _arch(),
            "nest.dev/local-node": "true",
        }
        try:
            await self.api.create(NODES, None, {"metadata": {"name": self.name, "labels": labels}})
            log.info("registered node %s", self.name)
        except ApiError as err:
            if err.status != 409:
                raise
            await self.api.patch(NODES, None, self.name, {"metadata": {"labels": labels}})
        await self._refresh()
        self._task = asyncio.create_task(self._beat(), name="node heartbeat")

    async def _refresh(self) -> None:
        await self.report(ready=True, message="local process runner is posting ready status")
        await self._untaint()
        await self.renew_lease()

    async def _untaint(self) -> None:
        node = await self.api.get(NODES, None, self.name)
        taints = (node.get("spec") or {}).get("taints") or []
        kept = [t for t in taints if t.get("key") not in NOT_READY_TAINTS]
        if len(kept) != len(taints):
            # A JSON merge patch replaces the whole list: exactly what removing entries needs.
            await self.api.patch(NODES, None, self.name, {"spec": {"taints": kept or None}})

    async def report(self, ready: bool, message: str) -> None:
        if not ready:
            self._ready_since = None
        status = node_status(ready, message, self._ready_since)
        self._ready_since = self._ready_since or status["conditions"][-1]["lastTransitionTime"]
        await self.api.patch(NODES, None, self.name, {"status": status}, subresource="status")

    async def renew_lease(self) -> None:
        spec: dict[str, Any] = {
            "holderIdentity": self.name,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": _now(micro=True),
        }
        try:
            await self.api.patch(LEASES, LEASE_NAMESPACE, self.name, {"spec": spec})
        except ApiError as err:
            if err.status != 404:
                raise
            meta = {"name": self.name, "namespace": LEASE_NAMESPACE}
            await self.api.create(LEASES, LEASE_NAMESPACE, {"metadata": meta, "spec": spec})

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            try:
                await self._refresh()
            except Exception as err:  # the API server may be restarting; try again next beat
                log.warning("node heartbeat failed: %s", err)

    async def shut_down(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await self.report(ready=False, message="local process runner stopped")
        except Exception as err:
            log.warning("could not mark node %s not ready: %s", self.name, err)
