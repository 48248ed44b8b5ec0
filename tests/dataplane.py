"""Signing requests that tests send straight to a pool pod's runtime, with the cluster's key.

Why: the runtimes answer only requests signed with the data-plane key (sandbox.dataplane_auth),
which lives in the Secret nest-system/nest-dataplane-key. Tests that invoke a sandbox directly
(bypassing the gateway on purpose) read it once with the admin kubeconfig and sign, as the
gateway does; `signed_headers` is the one call they need.
"""

from __future__ import annotations

import functools
import os
from urllib.parse import urlsplit

from kubernetes import client, config

from sandbox import dataplane_auth as auth

NAMESPACE = "nest-system"


def _kubeconfig() -> str:
    named = os.environ.get("NEST_KUBECONFIG")
    if named:
        return named
    from nest_cluster.control_plane import ControlPlane

    return str(ControlPlane().paths.kubeconfig)


@functools.cache
def cluster_keys() -> auth.KeyRing:
    """The cluster's data-plane keys (read once per test run: nothing rotates it meanwhile)."""
    api = config.new_client_from_config(config_file=_kubeconfig())
    try:
        secret = client.CoreV1Api(api).read_namespaced_secret(auth.SECRET_NAME, NAMESPACE)
    finally:
        api.close()
    return auth.from_secret_data(secret.data)


def path_of(url: str) -> str:
    """The request target a client sends for `url` (path and query, as written)."""
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def signed_headers(url: str, body: bytes = b"", method: str = "POST") -> dict[str, str]:
    """The X-Nest-Signature header for one request to a runtime's data plane."""
    return cluster_keys().headers(method, path_of(url), body)
