"""Stored objects as the API server returns them, for the CLI's pure decisions and views."""

from __future__ import annotations

from typing import Any

from crds.constants import POOL_LABEL, REVISION_ANNOTATION, TEMPLATE_HASH_LABEL
from nest import functions

FILES = {"main.py": "def handler(event, context):\n    return event\n"}
CREATED = "2026-01-01T00:00:00Z"


def deployment(
    name: str = "hello",
    replicas: int = 2,
    generation: int = 1,
    status: dict[str, Any] | None = None,
    **opts: Any,
) -> dict[str, Any]:
    code = functions.Code(FILES, name, "main:handler")
    request = functions.function_request(code, functions.DeployOptions(replicas=replicas, **opts))
    obj = functions.manifest("ns", request)
    obj["metadata"].update(
        uid="dep-uid", generation=generation, creationTimestamp=CREATED, resourceVersion="7"
    )
    obj["status"] = status if status is not None else {}
    return obj


def replicaset(
    dep: dict[str, Any],
    revision: int,
    digest: str,
    handler: str = "main:handler",
    replicas: int = 1,
) -> dict[str, Any]:
    template = {**dep["spec"]["template"]}
    template["metadata"] = {
        "labels": {**template["metadata"]["labels"], TEMPLATE_HASH_LABEL: digest}
    }
    template["spec"] = {
        **template["spec"],
        "function": {**template["spec"]["function"], "handler": handler},
    }
    return {
        "apiVersion": "nest.sandbox.dev/v1alpha1",
        "kind": "SandboxReplicaSet",
        "metadata": {
            "name": f"{dep['metadata']['name']}-{digest}",
            "labels": template["metadata"]["labels"],
            "annotations": {REVISION_ANNOTATION: str(revision)},
            "ownerReferences": [{"uid": "dep-uid", "name": dep["metadata"]["name"]}],
            "creationTimestamp": CREATED,
        },
        "spec": {"replicas": replicas, "selector": dep["spec"]["selector"], "template": template},
        "status": {"readyReplicas": replicas},
    }


def sandbox(
    name: str,
    digest: str,
    phase: str = "Running",
    reason: str | None = None,
    message: str | None = None,
    pod: str | None = "pool-a",
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    if pod:
        status.update(podIP="10.0.0.1", port=8080)
    spec: dict[str, Any] = {"function": {"handler": "main:handler", "source": {"inline": FILES}}}
    if pod:
        spec.update(podName=pod, podNamespace="nest-system")
    return {
        "metadata": {
            "name": name,
            "creationTimestamp": CREATED,
            "labels": {functions.FUNCTION_LABEL: "hello", TEMPLATE_HASH_LABEL: digest},
        },
        "spec": spec,
        "status": status,
    }


def pod(name: str, ready: bool = True) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "nest-system",
            "creationTimestamp": CREATED,
            "labels": {POOL_LABEL: "default"},
        },
        "status": {
            "phase": "Running",
            "podIP": "10.0.0.1",
            "containerStatuses": [{"ready": ready}, {"ready": True}],
        },
    }
