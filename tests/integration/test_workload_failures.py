"""Issue 10 on a real cluster: controllers never multiply, and a failure shows where users look.

- A SandboxDeployment whose template names another function (`nest.sandbox.dev/function=bar`
  on deployment `foo`: the operator stamps `function=foo` on every Sandbox, so its selector
  would select none) made the replica set controller create and release Sandboxes without end
  (568 in 40 s); now admission refuses it naming the label, and a replica set that still gets
  there creates none and reports `ReplicaFailure`/`SelectorMismatch` (unit-tested).
- A replica set the API server refuses (a ResourceQuota here; a request too large for etcd or
  admission behave alike) shows on its deployment within seconds: `ReplicaFailure`/
  `FailedCreate` with the server's message, Progressing False, a Warning Event; once the cause
  is gone the deployment recovers by itself (retried with back-off).
Both are visible with `kubectl describe`.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client

from crds import constants as c
from tests.kube import Kubectl, wait_for

pytestmark = pytest.mark.usefixtures("nest_deployed")
FUNCTION = {
    "handler": "main:handler",
    "source": {"inline": {"main.py": "def handler(event, context):\n    return event\n"}},
    "resources": {"memory": "32Mi", "cpu": "50m"},
}


def deployment(name: str, labels: dict[str, str], replicas: int = 3) -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.DEPLOYMENT_KIND,
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"function": FUNCTION}},
        },
    }


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    return next((cond for cond in conditions if cond["type"] == type_), None)


def warnings_for(api: client.ApiClient, namespace: str, kind: str, name: str) -> list[Any]:
    events = client.CoreV1Api(api).list_namespaced_event(namespace).items
    return [
        e
        for e in events
        if e.type == "Warning" and e.involved_object.kind == kind and e.involved_object.name == name
    ]


def test_a_deployment_whose_sandboxes_its_selector_would_miss_is_refused_naming_the_label(
    api: client.ApiClient, namespace: str
) -> None:
    # Its replica set used to create and release sandboxes without end. The replica set
    # controller's own guard (ReplicaFailure/SelectorMismatch, no creations) is unit-tested in
    # tests/unit/operator/test_replicaset_shell.py: with this rule at the door it is reachable
    # only for objects stored before it, or while the webhook is down.
    custom = client.CustomObjectsApi(api)
    body = deployment("foo", {c.FUNCTION_LABEL: "bar"})
    with pytest.raises(client.ApiException) as refused:
        custom.create_namespaced_custom_object(
            c.GROUP, c.VERSION, namespace, c.DEPLOYMENT_PLURAL, body
        )
    assert refused.value.status in (400, 403, 422), refused.value
    message = json.loads(refused.value.body)["message"]
    assert f'spec.template.metadata.labels["{c.FUNCTION_LABEL}"]' in message
    assert "'bar'" in message and "'foo'" in message
    sandboxes = custom.list_namespaced_custom_object(c.GROUP, c.VERSION, namespace, "sandboxes")
    assert sandboxes["items"] == []


def test_a_replica_set_the_api_server_refuses_shows_on_its_deployment_until_it_is_allowed(
    api: client.ApiClient, kubectl: Kubectl, namespace: str
) -> None:
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    resource = f"count/{c.REPLICASET_PLURAL}.{c.GROUP}"
    quota = {"metadata": {"name": "no-replica-sets"}, "spec": {"hard": {resource: "0"}}}
    core.create_namespaced_resource_quota(namespace, quota)
    # The quota is enforced once its controller has written its status.
    wait_for(
        lambda: core.read_namespaced_resource_quota("no-replica-sets", namespace).status.hard,
        what="the ResourceQuota to be in force",
    )
    custom.create_namespaced_custom_object(
        c.GROUP, c.VERSION, namespace, c.DEPLOYMENT_PLURAL, deployment("w", {"app": "w"}, 1)
    )

    def refused() -> dict[str, Any] | None:
        d = custom.get_namespaced_custom_object(
            c.GROUP, c.VERSION, namespace, c.DEPLOYMENT_PLURAL, "w"
        )
        failed = condition(d, "ReplicaFailure")
        return d if failed and failed["reason"] == "FailedCreate" else None

    d = wait_for(refused, timeout=30, what="the deployment to show FailedCreate")
    failed, progressing = condition(d, "ReplicaFailure"), condition(d, "Progressing")
    assert failed is not None and progressing is not None
    assert failed["status"] == "True"
    assert "exceeded quota: no-replica-sets" in failed["message"]
    assert (progressing["status"], progressing["reason"]) == ("False", "ReplicaSetCreateError")
    assert progressing["message"].startswith('Failed to create new replica set "w-')
    events = wait_for(
        lambda: warnings_for(api, namespace, c.DEPLOYMENT_KIND, "w"),
        what="a Warning Event on the deployment",
    )
    assert events[0].reason == "FailedCreate" and "exceeded quota" in events[0].message
    described = kubectl.run("describe", c.DEPLOYMENT_PLURAL, "w").stdout
    assert "ReplicaSetCreateError" in described and "exceeded quota" in described

    core.delete_namespaced_resource_quota("no-replica-sets", namespace)

    def recovered() -> dict[str, Any] | None:
        d = custom.get_namespaced_custom_object(
            c.GROUP, c.VERSION, namespace, c.DEPLOYMENT_PLURAL, "w"
        )
        listed = custom.list_namespaced_custom_object(
            c.GROUP, c.VERSION, namespace, c.REPLICASET_PLURAL
        )["items"]
        return d if listed and condition(d, "ReplicaFailure") is None else None

    # Retried with back-off (1 s doubling): well within this once the quota is gone.
    d = wait_for(recovered, timeout=120, what="the replica set to be created after all")
    progressing = condition(d, "Progressing")
    assert progressing is not None and progressing["status"] == "True"
