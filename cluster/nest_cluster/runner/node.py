"""The local Node object: registration, Ready heartbeats and the node Lease.

The controller-manager runs without node-lifecycle, so nothing else maintains this node: admission
gives a new Node the `node.kubernetes.io/not-ready` taint and only we can take it off. We still
keep the Ready condition and the kube-node-lease Lease fresh like a kubelet would, so tools that
look at either (kubectl, a future node-lifecycle controller) see a live node.
"""

from __future__ import annotations

import logging
import os
import platform
import socket
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import psutil
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from nest_cluster.paths import KUBERNETES_VERSION

log = logging.getLogger(__name__)
MERGE_PATCH = "application/merge-patch+json"
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
    """Registers the node and keeps it (and its Lease) fresh from a background thread."""

    def __init__(self, api: client.ApiClient, name: str) -> None:
        self.core = client.CoreV1Api(api)
        self.leases = client.CoordinationV1Api(api)
        self.name = name
        self.stop = threading.Event()
        self._ready_since: str | None = None
        self._thread = threading.Thread(target=self._beat, daemon=True, name="node-heartbeat")

    def register(self) -> None:
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": _arch(),
            "nest.dev/local-node": "true",
        }
        try:
            self.core.create_node(
                client.V1Node(metadata=client.V1ObjectMeta(name=self.name, labels=labels))
            )
            log.info("registered node %s", self.name)
        except ApiException as err:
            if err.status != 409:
                raise
            self.core.patch_node(self.name, {"metadata": {"labels": labels}},
                                 _content_type=MERGE_PATCH)  # fmt: skip
        self.report(ready=True, message="local process runner is posting ready status")
        self._untaint()
        self.renew_lease()
        self._thread.start()

    def _untaint(self) -> None:
        node = self.core.read_node(self.name)
        taints = (node.spec.taints if node.spec else None) or []
        kept = [t for t in taints if t.key not in NOT_READY_TAINTS]
        if len(kept) != len(taints):
            # A JSON merge patch replaces the whole list: exactly what removing entries needs.
            plain = [{"key": t.key, "value": t.value, "effect": t.effect} for t in kept]
            body = {"spec": {"taints": plain or None}}
            self.core.patch_node(self.name, body, _content_type=MERGE_PATCH)

    def report(self, ready: bool, message: str) -> None:
        if not ready:
            self._ready_since = None
        status = node_status(ready, message, self._ready_since)
        self._ready_since = self._ready_since or status["conditions"][-1]["lastTransitionTime"]
        self.core.patch_node_status(self.name, {"status": status}, _content_type=MERGE_PATCH)

    def renew_lease(self) -> None:
        spec: Mapping[str, Any] = {
            "holderIdentity": self.name,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": _now(micro=True),
        }
        try:
            self.leases.patch_namespaced_lease(
                self.name, "kube-node-lease", {"spec": spec}, _content_type=MERGE_PATCH
            )
        except ApiException as err:
            if err.status != 404:
                raise
            meta = client.V1ObjectMeta(name=self.name, namespace="kube-node-lease")
            self.leases.create_namespaced_lease("kube-node-lease", client.V1Lease(metadata=meta))
            self.leases.patch_namespaced_lease(
                self.name, "kube-node-lease", {"spec": spec}, _content_type=MERGE_PATCH
            )

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT):
            try:
                self.report(ready=True, message="local process runner is posting ready status")
                self._untaint()
                self.renew_lease()
            except Exception as err:  # the API server may be restarting; try again next beat
                log.warning("node heartbeat failed: %s", err)

    def shut_down(self) -> None:
        self.stop.set()
        try:
            self.report(ready=False, message="local process runner stopped")
        except Exception as err:
            log.warning("could not mark node %s not ready: %s", self.name, err)
