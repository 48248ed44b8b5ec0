"""SandboxRestriction on the real API server: the webhook the operator serves from deploy/.

Users are real identities: a tenant ServiceAccount with edit rights on Nest's kinds in its test
namespace (and nothing else), and the sidecar's ServiceAccount with tokens minted by TokenRequest
and bound to a real pool pod, exactly as its projected token is. Denials are read from the API
server's answer, which quotes the webhook's message, so each test checks the field it names.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from crds import constants as c
from tests.kube import wait_for

CONFIGURATION = "nest-sandbox-restriction"
SERVICE, SYSTEM = "nest-operator-webhook", "nest-system"
SECRET = "nest-operator-webhook-tls"
INLINE = {"inline": {"main.py": "def handler(event, context):\n    return event\n"}}


def sandbox_body(name: str, pod: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    labels: dict[str, str] = {"app": "admission"}
    body_spec: dict[str, Any] = {"function": {"handler": "main:handler", "source": INLINE}, **spec}
    meta: dict[str, Any] = {"name": name, "labels": labels}
    if pod is not None:  # bound as the scheduler binds: the sidecar's finalizer comes with it
        labels |= {c.POOL_LABEL: "default", c.POD_UID_LABEL: pod["metadata"]["uid"]}
        body_spec |= {"podName": pod["metadata"]["name"], "podNamespace": SYSTEM}
        meta["finalizers"] = [c.SIDECAR_FINALIZER]
    return {"apiVersion": c.API_VERSION, "kind": "Sandbox", "metadata": meta, "spec": body_spec}


def refused(call: Callable[[], Any]) -> str:
    """The webhook's message for a call that must be refused."""
    with pytest.raises(ApiException) as caught:
        call()
    assert caught.value.status == 403, caught.value.body
    message = str(json.loads(caught.value.body or "{}").get("message", ""))
    assert "sandboxrestriction.nest.sandbox.dev" in message, caught.value.body
    return message


def client_with_token(kubeconfig: Path, token: str) -> client.ApiClient:
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    # Whatever key the client keeps the kubeconfig's bearer token under, this token replaces it.
    cfg.api_key = {key: f"Bearer {token}" for key in cfg.api_key or {"BearerToken": ""}}
    cfg.api_key_prefix = {}
    cfg.refresh_api_key_hook = None  # it would put the kubeconfig's token back
    return client.ApiClient(cfg)


def mint(api: client.ApiClient, account: str, namespace: str, pod: dict[str, Any] | None) -> str:
    """A TokenRequest token for `account`, bound to `pod` as a projected token is."""
    bound = None
    if pod is not None:
        meta = pod["metadata"]
        bound = client.V1BoundObjectReference(
            kind="Pod", api_version="v1", name=meta["name"], uid=meta["uid"]
        )
    spec = client.V1TokenRequestSpec(audiences=[], expiration_seconds=600, bound_object_ref=bound)
    granted = client.CoreV1Api(api).create_namespaced_service_account_token(
        account, namespace, client.AuthenticationV1TokenRequest(spec=spec)
    )
    return str(granted.status.token)


@pytest.fixture(scope="module")
def restriction(nest_deployed: Path) -> dict[str, Any]:
    """The webhook configuration once the operator has given it its CA and its Service."""
    api = config.new_client_from_config(config_file=str(nest_deployed))
    admreg = client.AdmissionregistrationV1Api(api)
    try:
        admreg.read_validating_webhook_configuration(CONFIGURATION)
    except ApiException as exc:
        if exc.status != 404:
            raise
        pytest.fail(
            "SandboxRestriction is not deployed: deploy/operator/kustomization.yaml "
            "must list webhook.yaml"
        )

    def ready() -> dict[str, Any] | None:
        vwc = api.sanitize_for_serialization(
            admreg.read_validating_webhook_configuration(CONFIGURATION)
        )
        bundles = [(w.get("clientConfig") or {}).get("caBundle") for w in vwc["webhooks"]]
        client.CoreV1Api(api).read_namespaced_service(SERVICE, SYSTEM)
        return vwc if all(bundles) else None

    configuration: dict[str, Any] = wait_for(
        ready, timeout=120, what="the operator to set the webhook's caBundle and Service"
    )
    return configuration


@pytest.fixture
def tenant(
    api: client.ApiClient, kubeconfig: Path, namespace: str, restriction: dict[str, Any]
) -> Iterator[client.ApiClient]:
    """A normal user: a ServiceAccount that may edit Nest's kinds in `namespace`, nothing more."""
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "tenant"}})
    rule = {
        "apiGroups": [c.GROUP],
        "verbs": ["*"],
        "resources": [c.SANDBOX_PLURAL, c.REPLICASET_PLURAL, c.DEPLOYMENT_PLURAL],
    }
    rbac.create_namespaced_role(namespace, {"metadata": {"name": "edit"}, "rules": [rule]})
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "tenant-edit"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "edit"},
            "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": namespace}],
        },
    )
    yield client_with_token(kubeconfig, mint(api, "tenant", namespace, None))


@pytest.fixture
def pool_pods(api: client.ApiClient, nest_deployed: Path) -> list[dict[str, Any]]:
    """Two pool pods with an address; whether their sidecars are Ready does not matter here."""
    core = client.CoreV1Api(api)

    def two() -> list[dict[str, Any]] | None:
        listed = core.list_namespaced_pod(SYSTEM, label_selector="app.kubernetes.io/name=nest-pool")
        pods = [
            p
            for p in api.sanitize_for_serialization(listed)["items"]
            if p.get("status", {}).get("podIP") and not p["metadata"].get("deletionTimestamp")
        ]
        return pods[:2] if len(pods) >= 2 else None

    pods: list[dict[str, Any]] = wait_for(two, timeout=120, what="two pool pods with an IP")
    return pods


@pytest.fixture
def empty_pool(api: client.ApiClient, namespace: str) -> Iterator[str]:
    """A SandboxPool with no pods: its sandboxes stay unbound, whatever the scheduler does."""
    name = f"adm-{namespace}"
    custom = client.CustomObjectsApi(api)
    body = {
        "apiVersion": c.API_VERSION,
        "kind": c.POOL_KIND,
        "metadata": {"name": name},
        "spec": {
            "podNamespace": SYSTEM,
            "podSelector": {"matchLabels": {"nest.sandbox.dev/no-such-pod": "x"}},
        },
    }
    custom.create_cluster_custom_object(c.GROUP, c.VERSION, c.POOL_PLURAL, body)
    yield name
    custom.delete_cluster_custom_object(c.GROUP, c.VERSION, c.POOL_PLURAL, name)


def test_the_operator_serves_its_ca_over_tls_for_the_service_name(
    api: client.ApiClient, restriction: dict[str, Any]
) -> None:
    """caBundle = the Secret's CA, which verifies the server as <service>.<namespace>.svc."""
    secret = client.CoreV1Api(api).read_namespaced_secret(SECRET, SYSTEM)
    ca = base64.b64decode(secret.data["ca.crt"])
    for webhook in restriction["webhooks"]:
        assert base64.b64decode(webhook["clientConfig"]["caBundle"]) == ca
    pods = client.CoreV1Api(api).list_namespaced_pod(
        SYSTEM, label_selector="app.kubernetes.io/name=nest-operator"
    )
    ip = next(p.status.pod_ip for p in pods.items if p.status.pod_ip)
    assert ip.startswith("127.")  # the local cluster: loopback only
    trust = ssl.create_default_context(cadata=ca.decode())
    with (
        socket.create_connection((ip, 8443), timeout=10) as raw,
        trust.wrap_socket(raw, server_hostname=f"{SERVICE}.{SYSTEM}.svc") as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    with (
        socket.create_connection((ip, 8443), timeout=10) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        trust.wrap_socket(raw, server_hostname="somebody-else.example")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("spec.podName", "x"),
        ("spec.podNamespace", SYSTEM),
        (f"metadata.labels[{c.POD_UID_LABEL}]", "some-uid"),
        (f"metadata.labels[{c.POOL_LABEL}]", "default"),
    ],
)
def test_a_user_may_not_bind_a_sandbox_and_is_told_which_field(
    tenant: client.ApiClient, namespace: str, field: str, value: str
) -> None:
    body = sandbox_body("bound")
    if field.startswith("spec."):
        body["spec"][field.removeprefix("spec.")] = value
    else:
        body["metadata"]["labels"][field.split("[")[1].rstrip("]")] = value
    custom = client.CustomObjectsApi(tenant)
    message = refused(
        lambda: custom.create_namespaced_custom_object(
            c.GROUP, c.VERSION, namespace, c.SANDBOX_PLURAL, body
        )
    )
    assert f"{field}: only the scheduler may bind a Sandbox" in message


def test_a_user_may_create_unbound_sandboxes_and_bind_only_with_the_binding_right(
    api: client.ApiClient, tenant: client.ApiClient, namespace: str, empty_pool: str
) -> None:
    custom = client.CustomObjectsApi(tenant)
    custom.create_namespaced_custom_object(
        c.GROUP, c.VERSION, namespace, c.SANDBOX_PLURAL, sandbox_body("free", pool=empty_pool)
    )
    bind = {
        "metadata": {"finalizers": [c.SIDECAR_FINALIZER]},  # a binding carries it
        "spec": {"podName": "some-pod", "podNamespace": SYSTEM},
    }

    def patch() -> Any:
        return custom.patch_namespaced_custom_object(
            c.GROUP, c.VERSION, namespace, c.SANDBOX_PLURAL, "free", bind, dry_run="All"
        )

    assert "spec.podName: only the scheduler may bind a Sandbox" in refused(patch)
    # The binder's right, as pods/binding is kube-scheduler's: a SubjectAccessReview finds it.
    rbac = client.RbacAuthorizationV1Api(api)
    rule = {"apiGroups": [c.GROUP], "resources": ["sandboxes/binding"], "verbs": ["create"]}
    rbac.create_namespaced_role(namespace, {"metadata": {"name": "binder"}, "rules": [rule]})
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "tenant-binder"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "binder"},
            "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": namespace}],
        },
    )
    # RBAC and the webhook's review cache take a moment to see the new binding.
    patched = wait_for(patch, timeout=30, what="the binding right to be honoured")
    assert patched["spec"]["podName"] == "some-pod"


def test_templates_may_not_bind_whoever_writes_them(
    api: client.ApiClient, tenant: client.ApiClient, namespace: str
) -> None:
    template = {
        "metadata": {"labels": {"app": "t", c.POD_UID_LABEL: "u"}},
        "spec": {"function": {"handler": "main:handler", "source": INLINE}},
    }
    body = {
        "apiVersion": c.API_VERSION,
        "kind": c.DEPLOYMENT_KIND,
        "metadata": {"name": "t", "labels": {"app": "admission"}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "t"}}, "template": template},
    }
    for who in (tenant, api):  # the cluster-admin too: a template would bind every replica
        custom = client.CustomObjectsApi(who)
        message = refused(
            lambda c_=custom: c_.create_namespaced_custom_object(
                c.GROUP, c.VERSION, namespace, c.DEPLOYMENT_PLURAL, body
            )
        )
        assert f"spec.template.metadata.labels[{c.POD_UID_LABEL}]: a template may not" in message
    rs = {**body, "kind": c.REPLICASET_KIND}
    rs["spec"] = {
        **body["spec"],
        "template": {
            "metadata": {"labels": {"app": "t"}},
            "spec": {**template["spec"], "podName": "p", "podNamespace": SYSTEM},
        },
    }
    custom = client.CustomObjectsApi(tenant)
    message = refused(
        lambda: custom.create_namespaced_custom_object(
            c.GROUP, c.VERSION, namespace, c.REPLICASET_PLURAL, rs
        )
    )
    assert "spec.template.spec.podName: a template may not bind" in message


# -- tenancy -------------------------------------------------------------------------------------


def test_a_pool_that_does_not_exist_or_does_not_admit_the_namespace_is_refused(
    api: client.ApiClient, tenant: client.ApiClient, namespace: str
) -> None:
    custom = client.CustomObjectsApi(tenant)
    missing = f"nope-{uuid.uuid4().hex[:6]}"
    message = refused(
        lambda: custom.create_namespaced_custom_object(
            c.GROUP, c.VERSION, namespace, c.SANDBOX_PLURAL, sandbox_body("x", pool=missing)
        )
    )
    assert f'spec.pool: SandboxPool "{missing}" does not exist' in message
    closed = f"closed-{namespace}"
    admin = client.CustomObjectsApi(api)
    admin.create_cluster_custom_object(
        c.GROUP,
        c.VERSION,
        c.POOL_PLURAL,
        {
            "apiVersion": c.API_VERSION,
            "kind": c.POOL_KIND,
            "metadata": {"name": closed},
            "spec": {
                "podNamespace": SYSTEM,
                "podSelector": {},
                "namespaceSelector": {"matchLabels": {"nest.sandbox.dev/tenant": namespace}},
            },
        },
    )
    try:
        deployment = {
            "apiVersion": c.API_VERSION,
            "kind": c.DEPLOYMENT_KIND,
            "metadata": {"name": "d", "labels": {"app": "admission"}},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": "d"}},
                "template": {
                    "metadata": {"labels": {"app": "d"}},
                    "spec": {
                        "pool": closed,
                        "function": {"handler": "main:handler", "source": INLINE},
                    },
                },
            },
        }

        def create() -> Any:
            return custom.create_namespaced_custom_object(
                c.GROUP, c.VERSION, namespace, c.DEPLOYMENT_PLURAL, deployment, dry_run="All"
            )

        message = refused(create)  # a pool the store has not seen yet is read from the API
        assert (
            f'spec.template.spec.pool: namespace "{namespace}" may not use SandboxPool '
            f'"{closed}"' in message
        )
        client.CoreV1Api(api).patch_namespace(
            namespace, {"metadata": {"labels": {"nest.sandbox.dev/tenant": namespace}}}
        )
        assert wait_for(create, what="the labelled namespace to be admitted")
    finally:
        admin.delete_cluster_custom_object(c.GROUP, c.VERSION, c.POOL_PLURAL, closed)


# -- sidecars ------------------------------------------------------------------------------------


@pytest.fixture
def bound(
    api: client.ApiClient, namespace: str, pool_pods: list[dict[str, Any]], restriction: Any
) -> dict[str, dict[str, Any]]:
    """Two Sandboxes bound by the admin (a binder): `mine` to pod A, `theirs` to pod B."""
    a, b = pool_pods[0], pool_pods[1]
    custom = client.CustomObjectsApi(api)
    for name, pod in (("mine", a), ("theirs", b)):
        custom.create_namespaced_custom_object(
            c.GROUP, c.VERSION, namespace, c.SANDBOX_PLURAL, sandbox_body(name, pod)
        )
    return {"a": a, "b": b}


def sidecar_of(api: client.ApiClient, kubeconfig: Path, pod: dict[str, Any]) -> client.ApiClient:
    return client_with_token(kubeconfig, mint(api, "nest-sidecar", SYSTEM, pod))


def test_a_sidecar_token_writes_only_its_own_pods_sandboxes(
    api: client.ApiClient, kubeconfig: Path, namespace: str, bound: dict[str, dict[str, Any]]
) -> None:
    a, b = bound["a"], bound["b"]
    custom = client.CustomObjectsApi(sidecar_of(api, kubeconfig, a))

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

    message = refused(status("theirs", phase="Failed", reason="Evicted"))
    assert (
        f"metadata.labels[{c.POD_UID_LABEL}]: the Sandbox is not bound to this sidecar" in message
    )
    # Its own sandbox, but the address of another pod: the victim's traffic would come here.
    message = refused(status("mine", podIP=b["status"]["podIP"], port=9000))
    assert "status.podIP: must be the IP of pod" in message
    assert status("mine", podIP=a["status"]["podIP"], port=9000)()["status"]["port"] == 9000

    def main(name: str, patch: list[dict[str, Any]]) -> Callable[[], Any]:
        return lambda: custom.patch_namespaced_custom_object(
            c.GROUP,
            c.VERSION,
            namespace,
            c.SANDBOX_PLURAL,
            name,
            patch,
            dry_run="All",
            _content_type="application/json-patch+json",
        )

    evil = [{"op": "replace", "path": "/spec/function/handler", "value": "evil:handler"}]
    assert "spec: a sidecar may change only" in refused(main("mine", evil))
    release = [{"op": "remove", "path": "/metadata/finalizers"}]
    owner = client.CustomObjectsApi(api).get_namespaced_custom_object(
        c.GROUP, c.VERSION, namespace, c.SANDBOX_PLURAL, "mine"
    )
    if owner["metadata"].get("finalizers") == [c.SIDECAR_FINALIZER]:  # the sidecar added it
        main("mine", release)()
    else:
        add = [{"op": "add", "path": "/metadata/finalizers", "value": [c.SIDECAR_FINALIZER]}]
        main("mine", add)()
    claim = [{"op": "add", "path": "/metadata/finalizers", "value": [c.SIDECAR_FINALIZER]}]
    assert "metadata.labels[" in refused(main("theirs", claim))


def test_a_sidecar_token_writes_only_its_own_pods_lease(
    api: client.ApiClient, kubeconfig: Path, pool_pods: list[dict[str, Any]], restriction: Any
) -> None:
    a, b = pool_pods[0], pool_pods[1]
    # A patch of a Lease that does not exist is a 404 before admission runs: b's sidecar must
    # have taken its Lease (a pool pod just started, e.g. by an earlier rollout, may not yet).
    admin = client.CoordinationV1Api(api)
    wait_for(lambda: admin.read_namespaced_lease(b["metadata"]["name"], SYSTEM), timeout=120,
             what=f"pool pod {b['metadata']['name']}'s Lease")  # fmt: skip
    leases = client.CoordinationV1Api(sidecar_of(api, kubeconfig, a))
    renew = {"metadata": {"annotations": {"nest.sandbox.dev/test": "x"}}}
    message = refused(
        lambda: leases.patch_namespaced_lease(
            b["metadata"]["name"],
            SYSTEM,
            renew,
            dry_run="All",
            _content_type="application/merge-patch+json",
        )
    )
    assert f"metadata.name: a sidecar may write only its own pod's Lease \"{SYSTEM}/" in message
    squat = {"metadata": {"name": "nest-operator-leader"}, "spec": {"holderIdentity": "me"}}
    message = refused(lambda: leases.create_namespaced_lease(SYSTEM, squat, dry_run="All"))
    assert "metadata.name: a sidecar may write only its own pod's Lease" in message


def test_a_sidecar_token_bound_to_no_pod_is_denied_everything(
    api: client.ApiClient, kubeconfig: Path, namespace: str, bound: dict[str, dict[str, Any]]
) -> None:
    legacy = client.CustomObjectsApi(
        client_with_token(kubeconfig, mint(api, "nest-sidecar", SYSTEM, None))
    )
    message = refused(
        lambda: legacy.patch_namespaced_custom_object_status(
            c.GROUP,
            c.VERSION,
            namespace,
            c.SANDBOX_PLURAL,
            "mine",
            {"status": {"phase": "Failed"}},
            dry_run="All",
        )
    )
    assert (
        "userInfo.extra[authentication.kubernetes.io/pod-uid]: a sidecar must use a token"
        in message
    )


def test_the_cert_manager_overlay_hands_certificates_to_cert_manager(kubectl_binary: str) -> None:
    root = Path(__file__).resolve().parents[2]
    rendered = subprocess.run(
        [kubectl_binary, "kustomize", str(root / "deploy" / "cert-manager")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(rendered) if d}
    vwc = docs[("ValidatingWebhookConfiguration", CONFIGURATION)]
    assert vwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        f"{SYSTEM}/nest-operator-webhook"
    )
    assert all("caBundle" not in w["clientConfig"] for w in vwc["webhooks"])
    certificate = docs[("Certificate", "nest-operator-webhook")]
    assert certificate["spec"]["secretName"] == SECRET
    assert f"{SERVICE}.{SYSTEM}.svc" in certificate["spec"]["dnsNames"]
    operator = docs[("Deployment", "nest-operator")]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in operator["env"]}
    assert env["NEST_WEBHOOK_CERTIFICATES"] == "external" and env["NEST_WEBHOOK"] == "on"
