"""Keys, certificates, tokens and kubeconfigs for the local control plane.

The API server serves TLS from a private CA so clients verify it like any real cluster; callers
authenticate with static bearer tokens (token-file auth), one identity per component, so RBAC
decides what each may do exactly as in a production cluster.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

SERVICE_IP = "10.0.0.1"


@dataclass(frozen=True)
class Identity:
    """A static-token user of the API server."""

    name: str
    groups: tuple[str, ...]


# The controller-manager and scheduler run under their bootstrap-RBAC identities; the local
# node's process runner and people use the admin identity.
IDENTITIES = {
    "admin": Identity("nest-admin", ("system:masters",)),
    "controller-manager": Identity("system:kube-controller-manager", ()),
    "scheduler": Identity("system:kube-scheduler", ()),
}


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def ensure_pki(pki: Path) -> None:
    """Create the CA, the serving certificate, the service-account key pair and tokens once."""
    pki.mkdir(parents=True, exist_ok=True, mode=0o700)
    if (pki / "tokens.csv").exists():
        return
    now = dt.datetime.now(dt.UTC)
    ca_key = _key()
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("nest-local-ca"))
        .issuer_name(_name("nest-local-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = _key()
    sans: list[x509.GeneralName] = [
        x509.DNSName(n)
        for n in ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc")
    ]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", SERVICE_IP)]
    server = (
        x509.CertificateBuilder()
        .subject_name(_name("kube-apiserver"))
        .issuer_name(ca.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    sa_key = _key()
    files = {
        "ca.crt": ca.public_bytes(serialization.Encoding.PEM),
        "ca.key": _pem_key(ca_key),
        "apiserver.crt": server.public_bytes(serialization.Encoding.PEM),
        "apiserver.key": _pem_key(server_key),
        "sa.key": _pem_key(sa_key),
        "sa.pub": sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    }
    for name, data in files.items():
        (pki / name).write_bytes(data)
        (pki / name).chmod(0o600)
    rows = []
    for component, ident in IDENTITIES.items():
        token = secrets.token_hex(24)
        (pki / f"{component}.token").write_text(token)
        groups = ",".join(ident.groups)
        rows.append(f'{token},{ident.name},{ident.name},"{groups}"')
    (pki / "tokens.csv").write_text("\n".join(rows) + "\n")
    (pki / "tokens.csv").chmod(0o600)


def write_kubeconfig(path: Path, server: str, pki: Path, component: str) -> None:
    """Write a kubeconfig for one identity, trusting the local CA."""
    token = (pki / f"{component}.token").read_text().strip()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "nest-local",
                "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")},
            }
        ],
        "users": [{"name": component, "user": {"token": token}}],
        "contexts": [
            {
                "name": "nest-local",
                "context": {"cluster": "nest-local", "user": component, "namespace": "default"},
            }
        ],
        "current-context": "nest-local",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
