"""The local cluster's OCI registry: Debian's `docker-registry` (CNCF distribution 2.8) on loopback.

Function packages are OCI artifacts pulled by digest (see `sandbox.layers`), so the local cluster
needs a real registry for `nest deploy DIR` to work without any service outside the machine. It
runs like the cluster's other components: a detached process of the state directory, its storage
under it (`nest cluster down --purge` removes it), its port chosen free once and recorded in
cluster.json, kept across restarts so published references stay valid.

Its address is published the way kind, k3d and minikube publish theirs (KEP-1755): ConfigMap
`kube-public/local-registry-hosting` (its format is `sandbox.hosting`'s, which the gateway and
the build Job read too), so the CLI, the tests and in-cluster builders find it from
the kubeconfig alone and work unchanged against any cluster that follows the same convention.
Pods of the local node share the host's loopback, so `127.0.0.1:PORT` is also the address pods
pull from. It serves plain HTTP without authentication: it listens only on 127.0.0.1, and every
pull is verified against the digest in the function's source anyway.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from nest_cluster.procs import ProcessSpec
from sandbox.hosting import HOSTING_CONFIGMAP as HOSTING_CONFIGMAP
from sandbox.hosting import HOSTING_KEY as HOSTING_KEY
from sandbox.hosting import HOSTING_NAMESPACE as HOSTING_NAMESPACE
from sandbox.hosting import RegistryHosting as RegistryHosting
from sandbox.hosting import parse_hosting as parse_hosting

NAME = "registry"  # the component's name in `nest cluster status` and its pid/log files
BINARY = "docker-registry"
PACKAGE = "docker-registry"  # the Debian package that ships BINARY
HELP = "docs/functions.md (function packages)"


def address(port: int) -> str:
    return f"127.0.0.1:{port}"


def config(root: Path, port: int, http_secret: str) -> dict[str, Any]:
    """distribution's configuration: filesystem storage under `root`, loopback only.

    Deletes are enabled so `registry garbage-collect` can reclaim old packages; the HTTP secret
    is fixed per state directory so an upload survives a restart of the registry.
    """
    return {
        "version": 0.1,
        "log": {"level": "warn", "fields": {"service": "registry"}},
        "storage": {
            "filesystem": {"rootdirectory": str(root / "data")},
            "delete": {"enabled": True},
            "cache": {"blobdescriptor": "inmemory"},
        },
        "http": {"addr": address(port), "secret": http_secret},
        "health": {"storagedriver": {"enabled": True, "interval": "10s", "threshold": 3}},
    }


def recorded_port(cluster_json: Mapping[str, Any]) -> int | None:
    """The registry port recorded in cluster.json, if any (older states have none)."""
    port = (cluster_json.get("registry") or {}).get("port")
    return port if isinstance(port, int) and 0 < port < 65536 else None


def hosting_configmap(hosting: RegistryHosting) -> dict[str, Any]:
    """The KEP-1755 ConfigMap announcing the registry to the cluster's users."""
    document = {
        "host": hosting.host,
        "hostFromClusterNetwork": hosting.host_from_cluster_network,
        "hostFromContainerRuntime": hosting.host_from_cluster_network,
        "help": HELP,
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": HOSTING_CONFIGMAP, "namespace": HOSTING_NAMESPACE},
        "data": {HOSTING_KEY: yaml.safe_dump(document, sort_keys=True)},
    }


class LocalRegistry:
    """The registry process of one local cluster's state directory."""

    def __init__(self, state: Path) -> None:
        self.root = state / "registry"

    @property
    def config_path(self) -> Path:
        return self.root / "config.yml"

    def _http_secret(self) -> str:
        path = self.root / "http-secret"
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            self.root.mkdir(parents=True, exist_ok=True)
            secret = secrets.token_hex(32)
            path.touch(mode=0o600)
            path.write_text(secret)
            return secret

    def spec(self, port: int) -> ProcessSpec:
        """Write the configuration for `port` and say how to run the registry with it."""
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        body = json.dumps(config(self.root, port, self._http_secret()), indent=2)
        self.config_path.touch(mode=0o600)  # it holds the HTTP secret
        self.config_path.write_text(body + "\n")  # JSON is YAML
        return ProcessSpec(NAME, [BINARY, "serve", str(self.config_path)])

    @staticmethod
    def healthy(port: int) -> tuple[bool, str]:
        """Whether the registry answers the distribution API's version check (GET /v2/)."""
        url = f"http://{address(port)}/v2/"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                ok = resp.status == 200
                api = resp.headers.get("Docker-Distribution-Api-Version", "")
        except urllib.error.HTTPError as err:
            return False, f"{url}: HTTP {err.code}"
        except OSError as err:
            return False, f"{url}: {getattr(err, 'reason', err)}"
        return ok, f"{address(port)} ({api or 'no API version'})"


def publish(kubectl: str, kubeconfig: Path, hosting: RegistryHosting) -> str | None:
    """Create or update the KEP-1755 ConfigMap (an apply: idempotent on every `up`); None when
    done, else kubectl's complaint (kube-public appears a moment after a new API server)."""
    manifest = json.dumps(hosting_configmap(hosting))
    done = subprocess.run(
        [kubectl, f"--kubeconfig={kubeconfig}", "apply", "-f", "-"],
        input=manifest, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return None if done.returncode == 0 else done.stderr.strip() or f"exit {done.returncode}"
