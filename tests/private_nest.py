"""Nest in a private local cluster: for tests that must stop the control plane itself.

Why: the shared cluster serves every xdist worker, so an API-server outage longer than a few
seconds cannot be staged there. A second state directory gives a second control plane (own
ports, own pod addresses 127.N.0.x, own registry: nest_cluster.control_plane.first_pod_ip), and
deploy/ is applied to it as conftest's `nest_deployed` applies it to the shared one: the CRDs
first (Established), then the rest, then a wait until SandboxRestriction admits a dry-run
Sandbox. Scaled down to what such a test needs, to keep a 2-core machine's CPU for the others:
one operator replica (leader election still on), the gateway and the pool as deploy/ has them
unless told otherwise. The pods are this installation's processes (the local node ignores
images), so the code under test is the work tree's.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

from nest_cluster.control_plane import ControlPlane, first_pod_ip
from nest_cluster.paths import ClusterPaths
from tests.kube import wait_for

ROOT = Path(__file__).resolve().parents[1]
SYSTEM = "nest-system"
POOL_SELECTOR = "app.kubernetes.io/name=nest-pool"
GATEWAY_SELECTOR = "app.kubernetes.io/name=nest-gateway"
OPERATOR_SELECTOR = "app.kubernetes.io/name=nest-operator"
# The Deployments of deploy/ scaled for a private cluster: the smallest that still has two
# pool pods (a function spread over two pods) and two gateways (one may restart).
REPLICAS = {"nest-operator": 1, "nest-gateway": 2, "nest-pool": 2}


@dataclass
class PrivateNest:
    """A private cluster with Nest running in it."""

    plane: ControlPlane
    api: client.ApiClient

    @property
    def kubeconfig(self) -> Path:
        return Path(self.plane.paths.kubeconfig)

    @property
    def pod_ip_prefix(self) -> str:
        """Its pods' addresses begin so (none of the shared cluster's does)."""
        return str(first_pod_ip(self.plane.paths.state)).rsplit(".", 1)[0] + "."

    def kubectl(self, *args: str, input: str | None = None, timeout: float = 60) -> str:
        """kubectl against this cluster; fails with its stderr."""
        cmd = [self.plane.kubectl_path(), f"--kubeconfig={self.kubeconfig}", *args]
        done = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{done.stderr}{done.stdout}")
        return done.stdout

    def runner(self) -> Callable[..., str]:
        """kubectl as bench.chaos_load.Scene takes it: (*args) -> stdout."""

        def run(*args: str) -> str:
            return self.kubectl(*args)

        return run


def scaled(manifests: str, replicas: Mapping[str, int]) -> str:
    """deploy/'s manifests with the named Deployments' replicas set (the rest unchanged)."""
    docs = [d for d in yaml.safe_load_all(manifests) if d]
    for doc in docs:
        name = str((doc.get("metadata") or {}).get("name") or "")
        if doc.get("kind") == "Deployment" and name in replicas:
            doc["spec"]["replicas"] = replicas[name]
    return yaml.safe_dump_all(docs, sort_keys=False)


def _admits(custom: client.CustomObjectsApi) -> bool:
    """SandboxRestriction (served by the operator, failurePolicy Fail) admits a dry-run."""
    probe = {
        "apiVersion": "nest.sandbox.dev/v1alpha1",
        "kind": "Sandbox",
        "metadata": {"name": "admission-probe"},
        "spec": {"function": {"handler": "main:handler", "source": {"path": "/nonexistent"}}},
    }
    try:
        custom.create_namespaced_custom_object(
            "nest.sandbox.dev", "v1alpha1", "default", "sandboxes", probe, dry_run="All",
            _request_timeout=10,
        )  # fmt: skip
    except Exception:
        return False
    return True


def ready_pods(core: client.CoreV1Api, selector: str, want: int) -> list[dict[str, Any]] | None:
    """Exactly `want` live pods of `selector` in nest-system, every container Ready."""
    listed = core.list_namespaced_pod(SYSTEM, label_selector=selector, _request_timeout=10)
    pods: list[dict[str, Any]] = core.api_client.sanitize_for_serialization(listed)["items"]
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    for pod in live:
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        if not statuses or not all(c["ready"] for c in statuses):
            return None
    return live if len(live) == want else None


def plane_at(state: Path) -> ControlPlane:
    """The control plane of a private cluster at `state` (the build cache shared), not started."""
    return ControlPlane(ClusterPaths(cache=ClusterPaths.default().cache, state=state))


def bring_up(plane: ControlPlane, replicas: Mapping[str, int] = REPLICAS) -> PrivateNest:
    """`plane` up, Nest deployed in it and answering (every Deployment's pods Ready)."""
    plane.up(timeout=180)
    api = config.new_client_from_config(config_file=str(plane.paths.kubeconfig))
    nest = PrivateNest(plane, api)
    crds = nest.kubectl("apply", "-k", str(ROOT / "crds"), "-o", "name").split()
    nest.kubectl("wait", "--for=condition=established", "--timeout=60s", *crds, timeout=90)
    manifests = nest.kubectl("kustomize", str(ROOT / "deploy"))
    nest.kubectl("apply", "-f", "-", input=scaled(manifests, replicas), timeout=120)
    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    wait_for(lambda: _admits(custom), 240, "SandboxRestriction (the operator) to answer", 1.0)
    for name, selector in (("nest-pool", POOL_SELECTOR), ("nest-gateway", GATEWAY_SELECTOR),
                           ("nest-operator", OPERATOR_SELECTOR)):  # fmt: skip
        want = replicas.get(name, 1)
        wait_for(lambda s=selector, w=want: ready_pods(core, s, w), 240,  # type: ignore[misc]
                 f"{want} Ready {name} pods", 1.0)  # fmt: skip
    return nest


def namespace(nest: PrivateNest, name: str) -> str:
    """A namespace whose default ServiceAccount has its token (pods are admitted then)."""
    core = client.CoreV1Api(nest.api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    wait_for(
        lambda: core.read_namespaced_service_account("default", name).secrets,
        60, f"default ServiceAccount token in {name}",
    )  # fmt: skip
    return name


def down(plane: ControlPlane) -> None:
    """Stop it and remove its state (`down --purge`); a component a test left stopped (SIGSTOP)
    is resumed first, so that it can be stopped."""
    from bench.chaos_faults import resume_all
    from nest_cluster.control_plane import COMPONENTS

    resume_all(p.pid for p in (plane.procs.find(n) for n in COMPONENTS) if p is not None)
    plane.down(purge=True)
