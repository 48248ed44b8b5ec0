"""Where a cluster's OCI registry is, as the cluster announces it, and the credentials for it.

Function packages and build contexts are pushed to, and pulled from, a registry every component
must find the same way: the CLI (`nest deploy DIR`), the gateway (source uploads) and the build
Job all read the KEP-1755 announcement, ConfigMap `kube-public/local-registry-hosting`, which kind,
k3d, minikube and `nest cluster up` publish. The local cluster (`nest_cluster`, development
tooling outside the product) is imported by no component, so the announcement's format lives
here, in the lower layer every component imports; `nest_cluster.registry` (which publishes it)
imports it from here.

The announcement separates two names of one registry: `host`, where clients outside the cluster
push (the CLI, the gateway), and `hostFromClusterNetwork`, the name pods pull from, which is the
name written into references. Credentials come as Docker writes them: a `config.json` with
`auths` (a kubernetes.io/dockerconfigjson Secret holds the same document), read through
`sandbox.layers.credentials_for`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from sandbox.layers import Credentials, PackageError, credentials_for

HOSTING_NAMESPACE = "kube-public"
HOSTING_CONFIGMAP = "local-registry-hosting"
HOSTING_KEY = "localRegistryHosting.v1"
DOCKER_CONFIG_ENV = "DOCKER_CONFIG"
# A secret volume of a kubernetes.io/dockerconfigjson Secret names its key `.dockerconfigjson`;
# Docker's own directory has `config.json`. Either is accepted in a DOCKER_CONFIG directory.
DOCKER_CONFIG_FILES = ("config.json", ".dockerconfigjson")


@dataclass(frozen=True)
class RegistryHosting:
    """A cluster's published registry: where clients push, and the name pods pull from."""

    host: str
    host_from_cluster_network: str

    @property
    def pull_host(self) -> str:
        return self.host_from_cluster_network or self.host


def repository_for(namespace: str) -> str:
    """One repository per Kubernetes namespace (tenant): its functions and build contexts share
    blobs, and a registry's per-repository permissions map onto tenants."""
    return f"nest/{namespace}"


def parse_hosting(data: Mapping[str, str] | None) -> RegistryHosting | None:
    """The registry a KEP-1755 ConfigMap's data announces; None when it announces none."""
    try:
        document = yaml.safe_load((data or {}).get(HOSTING_KEY) or "")
    except yaml.YAMLError:
        return None
    if not isinstance(document, dict) or not isinstance(document.get("host"), str):
        return None
    in_cluster = document.get("hostFromClusterNetwork")
    return RegistryHosting(
        host=document["host"],
        host_from_cluster_network=in_cluster if isinstance(in_cluster, str) else "",
    )


def docker_config_credentials(
    registry: str, directory: str | Path | None = None, env: Mapping[str, str] | None = None
) -> Credentials | None:
    """The credentials for `registry` in a Docker config directory: `directory`, else
    $DOCKER_CONFIG; None when neither is set, the directory has no config, or it has no entry
    for the registry (anonymous access). A config that is not valid JSON is a PackageError:
    silently pulling anonymously would hide the mistake behind a 401."""
    where = directory or (env if env is not None else os.environ).get(DOCKER_CONFIG_ENV)
    if not where:
        return None
    for name in DOCKER_CONFIG_FILES:
        path = Path(where) / name
        try:
            raw = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            raise PackageError(f"cannot read {path}: {exc.strerror}", permanent=True) from exc
        return credentials_for(raw, registry)
    return None
