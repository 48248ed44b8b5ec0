"""What versus-pods deploys and how it counts, as plain data and functions (no cluster).

Why a module of its own: the comparison is only as fair as its bookkeeping. Both sides must
run the same trivial function, be charged for every process they need (the pod's own and its
shim; the pool pod's runtime, zygote, sidecar and shims, shared by the functions it hosts) and
be counted over the same API resources. Keeping that here, pure, lets unit tests pin it down,
and keeps bench.versus_pods a thin shell of cluster calls.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from crds.constants import FUNCTION_LABEL, GROUP, VERSION

PORT = 8080
APP_LABEL = "versus-pods"
# The whole function of the pod-per-function side: the smallest honest aiohttp server, on the
# pod's own loopback address (the local node gives every pod one, from the downward API).
SERVER = (
    "import os\n"
    "from aiohttp import web\n"
    "async def handler(request):\n"
    "    return web.Response(body=await request.read() or b'ok')\n"
    "app = web.Application()\n"
    "app.router.add_route('*', '/', handler)\n"
    f"web.run_app(app, host=os.environ['POD_IP'], port={PORT}, print=None, access_log=None)\n"
)
# The same function for Nest: echo the event.
HANDLER = "async def handler(event, context):\n    return event\n"
# Resources per function, the same request on both sides.
MEMORY, CPU = "32Mi", "10m"
# API resources whose writes are the node's and the leaders' heartbeats, not the workload's.
BACKGROUND = frozenset({"leases", "nodes"})
WRITE_VERBS = frozenset({"POST", "PATCH", "PUT", "DELETE", "APPLY"})
_SAMPLE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def function_names(n: int, prefix: str = "fn") -> list[str]:
    return [f"{prefix}-{i:04d}" for i in range(n)]


def pod_objects(namespace: str, name: str, replicas: int = 1) -> list[dict[str, Any]]:
    """One function as users deploy it without Nest: a Deployment of one aiohttp pod with a
    readiness probe, and a Service in front of it."""
    labels = {"app": APP_LABEL, "function": name}
    container = {
        "name": "function",
        "image": "python:3.11-slim",  # the local node runs the host's interpreter instead
        "command": [sys.executable, "-c", SERVER],
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "ports": [{"name": "http", "containerPort": PORT}],
        "resources": {"requests": {"memory": MEMORY, "cpu": CPU}},
        "readinessProbe": {"httpGet": {"path": "/", "port": PORT}, "periodSeconds": 1},
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": PORT}]},
    }
    return [deployment, service]


def sandbox_deployment(
    namespace: str, name: str, isolation: str, replicas: int = 1
) -> dict[str, Any]:
    """One function as a Nest SandboxDeployment, shaped as the gateway's create writes it."""
    labels = {FUNCTION_LABEL: name}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SandboxDeployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "function": {
                        "handler": "main:handler",
                        "isolation": isolation,
                        "resources": {"memory": MEMORY, "cpu": CPU},
                        "source": {"inline": {"main.py": HANDLER}},
                    }
                },
            },
        },
    }


@dataclass(frozen=True)
class PoolPod:
    """One pool pod's memory and what it hosts, at the moment memory was measured."""

    pss: int  # bytes, summed over every process of the pod (shims included)
    mine: int  # this run's sandboxes bound to it
    hosted: int  # every sandbox bound to it, any namespace


def amortised_bytes(pods: Sequence[PoolPod]) -> float:
    """Memory charged to this run's functions: each pool pod's whole PSS split evenly over the
    sandboxes it hosts, times the ones that are ours. A pod hosting none of ours costs us
    nothing; a pod hosting only ours is charged in full."""
    total = 0.0
    for pod in pods:
        if pod.mine and pod.hosted:
            total += pod.pss * min(pod.mine, pod.hosted) / pod.hosted
    return total


def successful_writes(metrics: str) -> dict[str, float]:
    """Write requests the API server has answered with 2xx so far, by resource (subresources
    folded in), from its /metrics text. Refused writes are left out: on the local cluster the
    endpoints controller retries Endpoints with loopback pod IPs, which validation rejects,
    forever, and those attempts change nothing stored."""
    counts: dict[str, float] = {}
    for line in metrics.splitlines():
        match = _SAMPLE.match(line)
        if not match:
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        if labels.get("verb") in WRITE_VERBS and labels.get("code", "").startswith("2"):
            resource = labels.get("resource", "")
            counts[resource] = counts.get(resource, 0.0) + float(match["value"])
    return counts


def workload_writes(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """Writes served between two `successful_writes` snapshots, by resource, without the
    heartbeats (BACKGROUND)."""
    delta: dict[str, float] = {}
    for key, value in after.items():
        if key in BACKGROUND:
            continue
        moved = value - before.get(key, 0.0)
        if moved:
            delta[key] = moved
    return delta


def safe_ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, or -1 when the baseline is missing (never a ZeroDivisionError
    in a report that has everything else)."""
    return numerator / denominator if denominator else -1.0


def ratios(results: Mapping[str, float], baselines: Mapping[str, float]) -> dict[str, float]:
    """The headline ratios, Nest over pod-per-function, named as issue 14 asks."""
    pods_mb = baselines["pods_memory_per_function_mb"]
    return {
        "subprocess_memory_per_function_over_pods": safe_ratio(
            results["subprocess_memory_per_function_mb"], pods_mb
        ),
        "namespace_memory_per_function_over_pods": safe_ratio(
            results["namespace_memory_per_function_mb"], pods_mb
        ),
        "subprocess_marginal_memory_per_function_over_pods": safe_ratio(
            results["subprocess_marginal_memory_per_function_mb"], pods_mb
        ),
        "namespace_marginal_memory_per_function_over_pods": safe_ratio(
            results["namespace_marginal_memory_per_function_mb"], pods_mb
        ),
        "apply_to_answering_over_pods": safe_ratio(
            results["namespace_apply_to_answering_s"], baselines["pods_apply_to_answering_s"]
        ),
        "subprocess_apply_to_answering_over_pods": safe_ratio(
            results["subprocess_apply_to_answering_s"], baselines["pods_apply_to_answering_s"]
        ),
        "from_zero_over_pods": safe_ratio(
            results["from_zero_p50_ms"], baselines["pods_from_zero_p50_ms"]
        ),
        "namespace_api_writes_over_pods": safe_ratio(
            results["namespace_api_writes_per_function"], baselines["pods_api_writes_per_function"]
        ),
        "subprocess_api_writes_over_pods": safe_ratio(
            results["subprocess_api_writes_per_function"],
            baselines["pods_api_writes_per_function"],
        ),
    }
