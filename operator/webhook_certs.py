"""The webhook's serving certificate, its CA bundle, and the route the API server dials.

Why: the API server calls an admission webhook only over TLS it can verify, so whoever installs
the webhook must issue a certificate for the Service's DNS name and hand the issuing CA to the
ValidatingWebhookConfiguration (caBundle). On clusters with cert-manager that is its job (the
deploy/cert-manager overlay). Everywhere else the operator does it itself, once: a self-signed CA
and a serving certificate kept in a Secret, renewed from the same CA before they expire, and the
CA patched into the caBundle (which deploy/ leaves out, so re-applying it never resets it).

The Service is created by the operator rather than shipped in deploy/, because of one fact:
Kubernetes refuses loopback addresses in Endpoints, so on a cluster whose pods live on loopback
(the local process runner) no selector can route to the operator, and the API server would dial
the Service's ClusterIP, a private address nothing on this machine serves. There the operator
points its Service at itself by ExternalName (which the API server dials directly); elsewhere it
is a plain ClusterIP Service selecting the operator's pods. Until the Service exists the API
server cannot resolve the webhook at all and fails closed, without sending anything anywhere.
Everything here is pure; webhook.py does the reading and writing.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Obj = Mapping[str, Any]
CA_DAYS = 3650
SERVING_DAYS = 365
RENEW_BEFORE = dt.timedelta(days=30)
CA_CRT, CA_KEY, TLS_CRT, TLS_KEY = "ca.crt", "ca.key", "tls.crt", "tls.key"
WEBHOOK_CONFIG_API = "admissionregistration.k8s.io/v1"


@dataclass(frozen=True)
class KeyPair:
    cert: bytes  # PEM
    key: bytes  # PEM


@dataclass(frozen=True)
class Material:
    """What the server needs to serve, and what the caBundle must say."""

    ca: bytes
    cert: bytes
    key: bytes


def dns_names(service: str, namespace: str) -> list[str]:
    """The names the API server may verify: it uses `<service>.<namespace>.svc`."""
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def issue_ca(now: dt.datetime, common_name: str = "nest-operator-webhook-ca") -> KeyPair:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


def issue_serving(
    ca: KeyPair, names: list[str], now: dt.datetime, days: int = SERVING_DAYS
) -> KeyPair:
    """A serving certificate for `names` (DNS names, or IP addresses) signed by `ca`."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert)
    ca_key = serialization.load_pem_private_key(ca.key, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the webhook CA key must be an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


def secret_data(secret: Obj | None) -> dict[str, bytes]:
    """A Secret's data, decoded."""
    data = (secret or {}).get("data") or {}
    return {k: base64.b64decode(v) for k, v in data.items()}


def material(data: Mapping[str, bytes]) -> Material | None:
    """What a Secret holds, if it holds all three pieces."""
    if not all(data.get(k) for k in (CA_CRT, TLS_CRT, TLS_KEY)):
        return None
    return Material(ca=data[CA_CRT], cert=data[TLS_CRT], key=data[TLS_KEY])


def renewal_reason(data: Mapping[str, bytes], names: list[str], now: dt.datetime) -> str | None:
    """Why the serving certificate in `data` must be re-issued; None while it is good."""
    held = material(data)
    if held is None:
        return "the Secret lacks ca.crt, tls.crt or tls.key"
    try:
        cert = x509.load_pem_x509_certificate(held.cert)
        ca = x509.load_pem_x509_certificate(held.ca)
    except ValueError as exc:
        return f"unreadable certificate: {exc}"
    if cert.not_valid_after_utc - RENEW_BEFORE < now:
        return f"it expires at {cert.not_valid_after_utc.isoformat()}"
    if cert.issuer != ca.subject:
        return "it was not issued by the CA in ca.crt"
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "it names no subject alternative names"
    missing = [n for n in names if n not in sans.get_values_for_type(x509.DNSName)]
    return f"it does not name {', '.join(missing)}" if missing else None


def new_secret_data(
    data: Mapping[str, bytes], names: list[str], now: dt.datetime
) -> dict[str, bytes]:
    """Fresh serving material: from the CA already in `data` when it has one, so the caBundle
    the API server trusts stays valid across renewals; a new CA otherwise."""
    ca: KeyPair | None = None
    if data.get(CA_CRT) and data.get(CA_KEY):
        ca_cert = x509.load_pem_x509_certificate(data[CA_CRT])
        if ca_cert.not_valid_after_utc - dt.timedelta(days=SERVING_DAYS) > now:
            ca = KeyPair(data[CA_CRT], data[CA_KEY])
    if ca is None:
        ca = issue_ca(now)
    serving = issue_serving(ca, names, now)
    return {CA_CRT: ca.cert, CA_KEY: ca.key, TLS_CRT: serving.cert, TLS_KEY: serving.key}


def encode(data: Mapping[str, bytes]) -> dict[str, str]:
    return {k: base64.b64encode(v).decode() for k, v in data.items()}


def ca_bundle_patch(config: Obj, ca: bytes) -> dict[str, Any] | None:
    """A strategic-merge patch giving every webhook of `config` the CA, or None if all have it."""
    bundle = base64.b64encode(ca).decode()
    stale = [
        w["name"]
        for w in config.get("webhooks") or []
        if (w.get("clientConfig") or {}).get("caBundle") != bundle
    ]
    if not stale:
        return None
    return {"webhooks": [{"name": name, "clientConfig": {"caBundle": bundle}} for name in stale]}


def is_loopback(ip: str | None) -> bool:
    if not ip:
        return False
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def desired_service(
    name: str,
    namespace: str,
    port: int,
    selector: Mapping[str, str],
    pod_ip: str | None,
    owner: Obj | None,
) -> dict[str, Any]:
    """The webhook's Service: ExternalName to this pod on a loopback cluster, else ClusterIP."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "nest-operator"},
    }
    if owner is not None:  # deleting the webhook configuration deletes its Service too
        meta["ownerReferences"] = [
            {
                "apiVersion": WEBHOOK_CONFIG_API,
                "kind": "ValidatingWebhookConfiguration",
                "name": owner["metadata"]["name"],
                "uid": owner["metadata"]["uid"],
            }
        ]
    ports = [{"name": "https", "port": port, "targetPort": port, "protocol": "TCP"}]
    spec: dict[str, Any]
    if is_loopback(pod_ip):
        # The API server dials `<externalName>:<clientConfig.service.port>` and verifies the
        # certificate for `<name>.<namespace>.svc`; no Endpoints are involved.
        spec = {"type": "ExternalName", "externalName": pod_ip, "ports": ports}
    else:
        spec = {"type": "ClusterIP", "selector": dict(selector), "ports": ports}
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec}


def service_change(current: Obj | None, desired: Obj) -> str | None:
    """ "create", "recreate" (the type changed: a ClusterIP cannot be patched away), "patch",
    or None when `current` already routes as `desired` does."""
    if current is None:
        return "create"
    have, want = current.get("spec") or {}, desired["spec"]
    if have.get("type") != want["type"]:
        return "recreate"
    keys = ("externalName",) if want["type"] == "ExternalName" else ("selector",)
    ports = [(p.get("port"), str(p.get("targetPort"))) for p in have.get("ports") or []]
    wanted_ports = [(p["port"], str(p["targetPort"])) for p in want["ports"]]
    owners = (current.get("metadata") or {}).get("ownerReferences") or []
    wanted_owners = desired["metadata"].get("ownerReferences") or []
    if any(have.get(k) != want.get(k) for k in keys) or ports != wanted_ports:
        return "patch"
    if [o.get("uid") for o in owners] != [o["uid"] for o in wanted_owners]:
        return "patch"
    return None
