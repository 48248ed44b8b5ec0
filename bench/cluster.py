"""The real cluster the end-to-end benchmarks run on: local control plane and the deploy/ pool.

Why: end-to-end figures (bind → Ready, apply → all Ready) only mean something against a real API
server with the real pool pods, set up exactly as a user would (`kubectl apply -k deploy/`).
NEST_KUBECONFIG names another cluster instead of the local one.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from kubernetes import client, config

from crds import constants as names
from nest_cluster.control_plane import ControlPlane

ROOT = Path(__file__).resolve().parents[1]
POOL_SELECTOR = "app.kubernetes.io/name=nest-pool"


class BenchCluster:
    """kubeconfig, API client and kubectl for one benchmark run, with a namespace of its own."""

    def __init__(self) -> None:
        named = os.environ.get("NEST_KUBECONFIG")
        plane = ControlPlane()
        if named:
            self.kubeconfig = Path(named)
        else:
            plane.up()
            self.kubeconfig = plane.paths.kubeconfig
        self.kubectl_binary = plane.kubectl_path()
        self.api = config.new_client_from_config(config_file=str(self.kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.namespace = f"bench-{uuid.uuid4().hex[:6]}"
        self.pools: list[str] = []

    def unserved_pool(self, prefix: str) -> str:
        """A SandboxPool whose pods do not exist: its sandboxes pass admission and stay unbound
        (for benchmarks that bind by hand, or measure bare creates). Deleted on exit."""
        name = f"{prefix}-{self.namespace}"
        self.custom.create_cluster_custom_object(
            names.GROUP, names.VERSION, names.POOL_PLURAL,
            {
                "apiVersion": names.API_VERSION, "kind": names.POOL_KIND,
                "metadata": {"name": name},
                "spec": {
                    "podNamespace": self.namespace,
                    "podSelector": {"matchLabels": {f"{names.GROUP}/unserved": "true"}},
                },
            },
        )  # fmt: skip
        self.pools.append(name)
        return name

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        cmd = [self.kubectl_binary, f"--kubeconfig={self.kubeconfig}", *args]
        proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def deploy(self, timeout: float = 180) -> list[dict[str, Any]]:
        """Apply deploy/ and return the pool pods once every one of them is Ready."""
        self.kubectl("apply", "-k", str(ROOT / "deploy"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            listed = self.core.list_namespaced_pod("nest-system", label_selector=POOL_SELECTOR)
            pods: list[dict[str, Any]] = self.api.sanitize_for_serialization(listed)["items"]
            live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
            statuses = [c for p in live for c in p["status"].get("containerStatuses") or []]
            if live and len(statuses) == 2 * len(live) and all(c["ready"] for c in statuses):
                return live
            time.sleep(0.2)
        raise RuntimeError("the pool from deploy/ did not become Ready")

    def __enter__(self) -> BenchCluster:
        self.core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=self.namespace))
        )
        return self

    def __exit__(self, *exc: object) -> None:
        """Delete the namespace and wait until it is gone: its sandboxes hold pool capacity, and
        the next benchmark must not be measured against a pool still full of them."""
        for pool in self.pools:
            self.custom.delete_cluster_custom_object(
                "nest.sandbox.dev", "v1alpha1", "sandboxpools", pool
            )
        self.core.delete_namespace(self.namespace, propagation_policy="Background")
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                self.core.read_namespace(self.namespace)
            except client.exceptions.ApiException as err:
                if err.status == 404:
                    return
                raise
            time.sleep(0.2)  # polling the deletion, bounded by the deadline
        raise RuntimeError(f"namespace {self.namespace} still terminating after 180s")
