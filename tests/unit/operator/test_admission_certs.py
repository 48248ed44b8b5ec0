"""The webhook's certificates, caBundle, Service route, and its HTTPS server on loopback."""

from __future__ import annotations

import base64
import datetime as dt
import json
import socket
import ssl
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from kubernetes import client

from crds import constants as c
from nest_operator import admission as adm
from nest_operator import webhook_certs as certs
from nest_operator.store import Kind, Store
from nest_operator.webhook import (
    AdmissionReview,
    WebhookServer,
    WebhookSettings,
    to_request,
    to_response,
)

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
NAMES = certs.dns_names("nest-operator-webhook", "nest-system")
# The API server verifies the name `<service>.<namespace>.svc`, not the address it dials.
SNI = "nest-operator-webhook.nest-system.svc"


def fresh() -> dict[str, bytes]:
    return certs.new_secret_data({}, NAMES, NOW)


def test_a_fresh_secret_has_a_ca_and_a_serving_cert_for_the_service_names() -> None:
    data = fresh()
    assert certs.renewal_reason(data, NAMES, NOW) is None
    cert = x509.load_pem_x509_certificate(data[certs.TLS_CRT])
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "nest-operator-webhook.nest-system.svc" in sans.get_values_for_type(x509.DNSName)
    ca = x509.load_pem_x509_certificate(data[certs.CA_CRT])
    assert cert.issuer == ca.subject
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (lambda d: d.pop(certs.TLS_KEY), "lacks"),
        (lambda d: d.update({certs.CA_CRT: certs.issue_ca(NOW, "other").cert}), "not issued"),
    ],
)
def test_a_broken_secret_is_renewed(edit: Any, why: str) -> None:
    data = fresh()
    edit(data)
    reason = certs.renewal_reason(data, NAMES, NOW)
    assert reason is not None and why in reason


def test_renewal_comes_before_expiry_and_keeps_the_ca() -> None:
    data = fresh()
    later = NOW + dt.timedelta(days=certs.SERVING_DAYS - 10)
    assert "expires" in (certs.renewal_reason(data, NAMES, later) or "")
    renewed = certs.new_secret_data(data, NAMES, later)
    assert renewed[certs.CA_CRT] == data[certs.CA_CRT]  # the caBundle stays valid
    assert renewed[certs.TLS_CRT] != data[certs.TLS_CRT]
    assert certs.renewal_reason(renewed, NAMES, later) is None


def test_a_certificate_for_other_names_is_renewed() -> None:
    data = fresh()
    reason = certs.renewal_reason(data, certs.dns_names("renamed", "nest-system"), NOW)
    assert reason is not None and "renamed.nest-system.svc" in reason


def test_the_ca_bundle_patch_touches_only_webhooks_lacking_it() -> None:
    ca = fresh()[certs.CA_CRT]
    bundle = base64.b64encode(ca).decode()
    config: dict[str, Any] = {
        "webhooks": [
            {"name": "a", "clientConfig": {"caBundle": bundle}},
            {"name": "b", "clientConfig": {"service": {}}},
        ]
    }
    assert certs.ca_bundle_patch(config, ca) == {
        "webhooks": [{"name": "b", "clientConfig": {"caBundle": bundle}}]
    }
    config["webhooks"][1]["clientConfig"]["caBundle"] = bundle
    assert certs.ca_bundle_patch(config, ca) is None


OWNER = {"metadata": {"name": "nest-sandbox-restriction", "uid": "vwc-uid"}}
SELECTOR = {"app.kubernetes.io/name": "nest-operator"}


def test_a_loopback_pod_routes_by_externalname_and_others_by_selector() -> None:
    local = certs.desired_service("svc", "nest-system", 8443, SELECTOR, "127.0.0.3", OWNER)
    assert local["spec"]["type"] == "ExternalName"
    assert local["spec"]["externalName"] == "127.0.0.3"
    real = certs.desired_service(
        "svc", "nest-system", 8443, SELECTOR, "10.1.2.3", OWNER
    )  # a routable pod IP (a value only: nothing is sent)
    assert real["spec"] == {
        "type": "ClusterIP",
        "selector": SELECTOR,
        "ports": local["spec"]["ports"],
    }
    assert real["metadata"]["ownerReferences"][0]["uid"] == "vwc-uid"


def test_the_service_is_created_patched_or_recreated_only_when_needed() -> None:
    want = certs.desired_service("svc", "nest-system", 8443, SELECTOR, "127.0.0.3", OWNER)
    assert certs.service_change(None, want) == "create"
    assert certs.service_change(want, want) is None
    moved = certs.desired_service("svc", "nest-system", 8443, SELECTOR, "127.0.0.9", OWNER)
    assert certs.service_change(moved, want) == "patch"
    clusterip = certs.desired_service("svc", "nest-system", 8443, SELECTOR, None, OWNER)
    assert (
        certs.service_change(
            {**clusterip, "spec": {**clusterip["spec"], "clusterIP": "127.0.9.7"}}, want
        )
        == "recreate"
    )


# -- the server, over real TLS on loopback ------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def review(user: dict[str, Any], obj: dict[str, Any], operation: str = "CREATE") -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "req-1",
            "kind": {"group": c.GROUP, "version": c.VERSION, "kind": "Sandbox"},
            "resource": {"group": c.GROUP, "version": c.VERSION, "resource": "sandboxes"},
            "requestKind": {"group": c.GROUP, "version": c.VERSION, "kind": "Sandbox"},
            "namespace": "team",
            "operation": operation,
            "userInfo": user,
            "object": obj,
            "oldObject": None,
            "dryRun": False,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    }


async def test_the_server_answers_admission_reviews_over_verified_tls() -> None:
    data = fresh()
    port = _free_port()
    settings = WebhookSettings(enabled=True, host="127.0.0.1", port=port)
    # An API client pointed at a closed loopback port: every lookup that misses the store fails.
    nowhere = client.Configuration()
    nowhere.host = f"http://127.0.0.1:{_free_port()}"
    store = Store()
    store.apply(
        Kind.POOL,
        "ADDED",
        {
            "metadata": {"name": "default", "uid": "p", "resourceVersion": "1"},
            "spec": {"podNamespace": "nest-system", "podSelector": {}},
        },
    )
    store.apply(
        Kind.NAMESPACE, "ADDED", {"metadata": {"name": "team", "uid": "n", "resourceVersion": "1"}}
    )
    server = WebhookServer(client.ApiClient(nowhere), settings, store=store, config=adm.Config())
    held = certs.material(data)
    assert held is not None
    server._load(held)
    await server._serve()
    try:
        trust = ssl.create_default_context(cadata=data[certs.CA_CRT].decode())
        url = f"https://127.0.0.1:{port}/validate"
        admin = {"username": "nest-admin", "groups": ["system:masters"]}
        bound = {
            "metadata": {
                "name": "s1",
                "labels": {c.POD_UID_LABEL: "u"},
                "finalizers": [c.SIDECAR_FINALIZER],
            },
            "spec": {"podName": "p", "podNamespace": "nest-system"},
        }
        alice = {"username": "alice", "groups": ["system:authenticated"]}
        conn = aiohttp.TCPConnector(ssl=trust)
        async with aiohttp.ClientSession(connector=conn) as http:
            async with http.post(url, json=review(admin, bound), server_hostname=SNI) as resp:
                body = await resp.json()
                assert body["response"] == {"uid": "req-1", "allowed": True}
            # Alice would need a SubjectAccessReview, which this API client cannot get: the
            # failed lookup denies, as failurePolicy Fail would.
            async with http.post(url, json=review(alice, bound), server_hostname=SNI) as resp:
                denied = (await resp.json())["response"]
                assert denied["allowed"] is False and denied["status"]["code"] == 403
            unbound = {"metadata": {"name": "s2"}, "spec": {"function": {}}}
            async with http.post(url, json=review(alice, unbound), server_hostname=SNI) as resp:
                assert (await resp.json())["response"]["allowed"] is True
            async with http.post(
                url, data=json.dumps({"kind": "Nope"}), server_hostname=SNI
            ) as resp:
                assert resp.status == 400
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with http.post(url, json=review(admin, bound), server_hostname="evil"):
                    pass
    finally:
        await server.stop()


def test_settings_come_from_the_operators_environment() -> None:
    env = {
        "NEST_WEBHOOK": "on",
        "POD_IP": "127.0.0.3",
        "POD_NAMESPACE": "ops",
        "NEST_WEBHOOK_CERTIFICATES": "external",
        "NEST_WEBHOOK_SELECTOR": "a=b,c=d",
    }
    settings = WebhookSettings.from_env(env)
    assert settings.enabled and not settings.self_signed
    assert (settings.host, settings.pod_ip, settings.namespace) == ("127.0.0.3", "127.0.0.3", "ops")
    assert settings.selector == {"a": "b", "c": "d"}
    assert not WebhookSettings.from_env({}).enabled  # off unless deploy/ turns it on


def test_a_review_becomes_a_request_named_after_its_object_when_generated() -> None:
    wire = AdmissionReview.model_validate(
        review({"username": "u", "extra": {"k": ["v"]}}, {"metadata": {"name": "gen-x1"}})
    )
    req = to_request(wire.request)
    assert (req.name, req.namespace, req.resource, req.operation) == (
        "gen-x1",
        "team",
        "sandboxes",
        "CREATE",
    )
    assert req.user.extra == {"k": ("v",)}
    denial = to_response("uid-1", adm.Verdict(False, "spec.podName: no"))
    assert denial == {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {
            "uid": "uid-1",
            "allowed": False,
            "status": {"code": 403, "reason": "Forbidden", "message": "spec.podName: no"},
        },
    }
