"""SandboxRestriction's server run by the test itself, called by the real API server.

test_admission.py checks the webhook the operator serves from deploy/. This file runs the same
WebhookServer in the test process instead, under a ValidatingWebhookConfiguration of its own
that sees only this file's objects (objectSelector app=admission). That makes it independent of
which operator build is deployed, and it proves the whole path on the real API server: the
certificate the server issues itself, the caBundle it patches in, the ExternalName Service it
creates for a loopback address, TLS verified for `<service>.<namespace>.svc`, the pod claims
of a pod-bound token in userInfo.extra, and SubjectAccessReviews.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import socket
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from crds import constants as c
from nest_operator import admission as adm
from nest_operator.webhook import WebhookServer, WebhookSettings
from tests.integration import test_admission as shared
from tests.integration.test_admission import (
    SYSTEM,
    client_with_token,
    mint,
    refused,
    sandbox_body,
)
from tests.kube import wait_for

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")
pool_pods = shared.pool_pods  # the fixture: two pool pods with an address


class Served:
    """A WebhookServer on its own event loop thread, and the names it was given."""

    def __init__(self, api: client.ApiClient, settings: WebhookSettings) -> None:
        self.api = api
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = WebhookServer(api, settings, store=None, config=adm.Config())

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.run(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served(nest_deployed: Path) -> Iterator[Served]:
    api = config.new_client_from_config(config_file=str(nest_deployed))
    name, port = f"adm-{uuid.uuid4().hex[:6]}", _free_port()
    webhook = copy.deepcopy(
        next(yaml.safe_load_all((ROOT / "deploy" / "operator" / "webhook.yaml").read_text()))
    )
    webhook["metadata"] = {"name": name}
    for hook in webhook["webhooks"]:
        hook["clientConfig"]["service"] |= {"name": name, "port": port}
        hook["objectSelector"] = {"matchLabels": {"app": "admission"}}
    admreg = client.AdmissionregistrationV1Api(api)
    admreg.create_validating_webhook_configuration(webhook)
    settings = WebhookSettings(
        enabled=True,
        host="127.0.0.1",
        port=port,
        namespace=SYSTEM,
        secret=f"{name}-tls",
        service=name,
        configuration=name,
        pod_ip="127.0.0.1",
        resync_seconds=5,
    )
    served = Served(api, settings)
    try:
        served.run(served.server.start())
        wait_for(
            lambda: served.run(served.server.reconcile()),
            timeout=60,
            what="the server's certificate, caBundle and Service",
        )
        yield served
    finally:
        served.close()
        admreg.delete_validating_webhook_configuration(name)
        client.CoreV1Api(api).delete_namespaced_secret(f"{name}-tls", SYSTEM)


def test_the_server_provisions_its_certificate_ca_bundle_and_route(served: Served) -> None:
    s, core = served.settings, client.CoreV1Api(served.api)
    ca = base64.b64decode(core.read_namespaced_secret(s.secret, SYSTEM).data["ca.crt"])
    webhook = client.AdmissionregistrationV1Api(served.api).read_validating_webhook_configuration(
        s.configuration
    )
    assert all(base64.b64decode(w.client_config.ca_bundle) == ca for w in webhook.webhooks)
    service = core.read_namespaced_service(s.service, SYSTEM)
    assert (service.spec.type, service.spec.external_name) == ("ExternalName", "127.0.0.1")
    assert service.metadata.owner_references[0].uid == webhook.metadata.uid
    served.run(served.server.reconcile())  # a second pass changes nothing
    assert core.read_namespaced_service(s.service, SYSTEM).metadata.resource_version == (
        service.metadata.resource_version
    )


def _tenant(api: client.ApiClient, kubeconfig: Path, namespace: str) -> client.CustomObjectsApi:
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "tenant"}})
    rule = {"apiGroups": [c.GROUP], "resources": [c.SANDBOX_PLURAL], "verbs": ["*"]}
    rbac.create_namespaced_role(namespace, {"metadata": {"name": "edit"}, "rules": [rule]})
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "tenant-edit"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "edit"},
            "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": namespace}],
        },
    )
    return client.CustomObjectsApi(
        client_with_token(kubeconfig, mint(api, "tenant", namespace, None))
    )


def test_users_bind_nothing_and_use_only_pools_that_exist(
    served: Served, api: client.ApiClient, kubeconfig: Path, namespace: str
) -> None:
    tenant = _tenant(api, kubeconfig, namespace)

    def create(body: dict[str, Any]) -> Callable[[], Any]:
        return lambda: tenant.create_namespaced_custom_object(
            c.GROUP, c.VERSION, namespace, c.SANDBOX_PLURAL, body, dry_run="All"
        )

    bound = sandbox_body("b")
    bound["metadata"]["labels"][c.POD_UID_LABEL] = "u"
    assert f"metadata.labels[{c.POD_UID_LABEL}]: only the scheduler may bind" in refused(
        create(bound)
    )
    missing = f"nope-{uuid.uuid4().hex[:6]}"
    assert f'spec.pool: SandboxPool "{missing}" does not exist' in refused(
        create(sandbox_body("m", pool=missing))
    )
    assert create(sandbox_body("free"))()["metadata"]["name"] == "free"  # pool default exists


def test_a_pod_bound_sidecar_token_is_held_to_its_pod(
    served: Served,
    api: client.ApiClient,
    kubeconfig: Path,
    namespace: str,
    pool_pods: list[dict[str, Any]],
) -> None:
    a, b = pool_pods[0], pool_pods[1]
    admin = client.CustomObjectsApi(api)
    for name, pod in (("mine", a), ("theirs", b)):
        admin.create_namespaced_custom_object(
            c.GROUP, c.VERSION, namespace, c.SANDBOX_PLURAL, sandbox_body(name, pod)
        )
    sidecar = client_with_token(kubeconfig, mint(api, "nest-sidecar", SYSTEM, a))
    custom = client.CustomObjectsApi(sidecar)

    def status(name: str, **fields: Any) -> Callable[[], Any]:
        return lambda: custom.patch_namespaced_custom_object_status(
            c.GROUP,
            c.VERSION,
            namespace,
            c.SANDBOX_PLURAL,
            name,
            {"status": fields},
            dry_run="All",
        )

    assert "is not bound to this sidecar's pod" in refused(status("theirs", phase="Failed"))
    assert "status.podIP: must be the IP of pod" in refused(
        status("mine", podIP=b["status"]["podIP"])
    )
    assert status("mine", podIP=a["status"]["podIP"], port=9)()["status"]["port"] == 9
    spec = {"spec": {"function": {"handler": "evil:handler"}}}
    assert "spec: a sidecar may change only" in refused(
        lambda: custom.patch_namespaced_custom_object(
            c.GROUP,
            c.VERSION,
            namespace,
            c.SANDBOX_PLURAL,
            "mine",
            spec,
            dry_run="All",
            _content_type="application/merge-patch+json",
        )
    )
    legacy = client.CustomObjectsApi(
        client_with_token(kubeconfig, mint(api, "nest-sidecar", SYSTEM, None))
    )
    assert "userInfo.extra[authentication.kubernetes.io/pod-uid]" in refused(
        lambda: legacy.patch_namespaced_custom_object_status(
            c.GROUP, c.VERSION, namespace, c.SANDBOX_PLURAL, "mine", {"status": {}}, dry_run="All"
        )
    )
    leases = client.CoordinationV1Api(sidecar)

    def lease(name: str) -> Callable[[], Any]:
        body = {"metadata": {"name": name, "labels": {"app": "admission"}}, "spec": {}}
        return lambda: leases.create_namespaced_lease(SYSTEM, body, dry_run="All")

    assert "metadata.name: a sidecar may write only its own pod's Lease" in refused(
        lease(b["metadata"]["name"])
    )
    try:  # its own name passes admission; the Lease may already exist (then: AlreadyExists)
        lease(a["metadata"]["name"])()
    except ApiException as exc:
        assert exc.status == 409, exc.body
