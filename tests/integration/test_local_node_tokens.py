"""ServiceAccount tokens on the local node, as with 1.20's kubelet and admission.

`automountServiceAccountToken` decides whether a pod gets the legacy token at all (pod-level over
the ServiceAccount's); a projected `serviceAccountToken` volume holds a token the runner obtained
through the TokenRequest API bound to the pod, which a TokenReview shows.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.integration.test_local_node import _create, _gone, _logs, _phase, _pod
from tests.kube import wait_for

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("NEST_KUBECONFIG")), reason="needs the local node of `nest cluster up`"
)
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
PROBE = f"if [ -e {SA_DIR}/token ]; then echo mounted; else echo absent; fi"


def _probe(api: client.ApiClient, namespace: str, name: str, spec: dict[str, Any]) -> str:
    container = {"name": "main", "image": "x", "command": ["sh", "-c", PROBE]}
    _create(api, namespace, name, {"restartPolicy": "Never", "containers": [container], **spec})
    _phase(api, namespace, name, "Succeeded")
    return _logs(namespace, name).strip()


def test_automount_false_on_the_pod_mounts_no_token(api: client.ApiClient, namespace: str) -> None:
    assert _probe(api, namespace, "default-sa", {}) == "mounted"
    assert _probe(api, namespace, "opted-out", {"automountServiceAccountToken": False}) == "absent"
    volumes = _pod(api, namespace, "opted-out")["spec"].get("volumes") or []
    assert not [v for v in volumes if "secret" in v or "projected" in v]


def test_the_pod_setting_wins_over_the_service_accounts(
    api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api)
    sa = client.V1ServiceAccount(
        metadata=client.V1ObjectMeta(name="quiet"), automount_service_account_token=False
    )
    core.create_namespaced_service_account(namespace, sa)
    wait_for(lambda: core.read_namespaced_service_account("quiet", namespace).secrets,
             what="the quiet ServiceAccount's token secret")  # fmt: skip
    assert _probe(api, namespace, "sa-says-no", {"serviceAccountName": "quiet"}) == "absent"
    spec = {"serviceAccountName": "quiet", "automountServiceAccountToken": True}
    assert _probe(api, namespace, "pod-says-yes", spec) == "mounted"


def _review(api: client.ApiClient, token: str, audience: str) -> Any:
    review = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token, audiences=[audience]))
    return client.AuthenticationV1Api(api).create_token_review(review).status


def test_a_projected_token_is_bound_to_the_pod(api: client.ApiClient, namespace: str) -> None:
    audience = "nest-test"
    where = "/var/run/nest-test/token"
    script = (
        f"stat -c %a {where}/token; cat {where}/namespace; echo;"
        f" grep -c 'BEGIN CERTIFICATE' {where}/ca.crt; cat {where}/token; echo; exec sleep 600"
    )
    volume = {
        "name": "token",
        "projected": {
            "defaultMode": 0o440,
            "sources": [
                {"serviceAccountToken": {"audience": audience, "expirationSeconds": 600,
                                         "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt",
                               "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [
                    {"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
            ],
        },
    }  # fmt: skip
    container = {
        "name": "main", "image": "x", "command": ["sh", "-c", script],
        "volumeMounts": [{"name": "token", "mountPath": where}],
    }  # fmt: skip
    spec = {"terminationGracePeriodSeconds": 1, "automountServiceAccountToken": False,
            "volumes": [volume], "containers": [container]}  # fmt: skip
    # kube-root-ca.crt is published into every namespace by the controller-manager.
    core = client.CoreV1Api(api)
    wait_for(lambda: core.read_namespaced_config_map("kube-root-ca.crt", namespace),
             what="kube-root-ca.crt published")  # fmt: skip
    _create(api, namespace, "bound", spec)
    pod = _phase(api, namespace, "bound", "Running")
    lines = wait_for(lambda: (out := _logs(namespace, "bound").split()) and len(out) >= 4 and out,
                     what="the container's view of its token volume")  # fmt: skip
    mode, seen_namespace, certificates, token = lines[:4]
    assert (mode, seen_namespace, certificates) == ("440", namespace, "1")

    status = _review(api, token, audience)
    assert status.authenticated, status.error
    assert status.user.username == f"system:serviceaccount:{namespace}:default"
    assert status.user.extra["authentication.kubernetes.io/pod-name"] == ["bound"]
    assert status.user.extra["authentication.kubernetes.io/pod-uid"] == [pod["metadata"]["uid"]]
    assert audience in status.audiences
    assert not _review(api, token, "someone-else").authenticated  # audience-bound

    # Bound to the pod: once the pod is gone, so is the token's validity (the API server caches
    # a successful authentication for a few seconds, hence a wait).
    core.delete_namespaced_pod("bound", namespace)
    wait_for(lambda: _gone(api, namespace, "bound"), timeout=60, what="pod bound gone")
    wait_for(lambda: _rejected(api, token, audience), timeout=60, what="the token rejected")


def _rejected(api: client.ApiClient, token: str, audience: str) -> bool:
    try:
        return not _review(api, token, audience).authenticated
    except ApiException as err:  # a server may answer 4xx for a token it rejects
        return err.status in (401, 403)
