"""Shared fixtures: a real Kubernetes API server for integration tests, a namespace per test.

The API server is the local one from `nest cluster up` (brought up once per run, or reused), or
any cluster whose kubeconfig NEST_KUBECONFIG names. It is never mocked.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from tests.kube import Kubectl, wait_for

POOL_SELECTOR = "app.kubernetes.io/name=nest-pool"
INTEGRATION = "tests/integration/"
# Integration tests that touch neither the shared pool pods nor the cluster's own components:
# the local node's pods, private clusters, a pool of stand-in pods. They run beside the rest.
APART = tuple(
    f"{INTEGRATION}{name}"
    for name in ("test_local_node", "test_cluster_lifecycle.py", "test_lifecycle.py")
)
# A private cluster held down for minutes: mostly waiting, so it gets a worker of its own.
OUTAGE = f"{INTEGRATION}test_outage.py"


# Tests that run sandbox runtimes or backends of their own on this host: one runtime's sandboxes
# live in `<the test process's cgroup>/nest-sandboxes/sbx-<id>`, and the tests reuse ids, so two
# xdist workers (one cgroup) running them at once would kill each other's sandboxes.
RUNTIMES = (
    "tests/conformance/",
    "tests/unit/sandbox/",
    "tests/unit/isolation/",
    "tests/unit/gateway/test_body_limits.py",
    "tests/unit/sidecar/test_native_pins.py",
)


def _group(nodeid: str) -> str:
    """Which tests must run one after another: those sharing the pool pods ("cluster"), those
    apart from it ("apart"), the private cluster's outage ("outage"), those running runtimes
    ("runtimes"); any other test module is a group of its own."""
    if nodeid.startswith(OUTAGE):
        return "outage"
    if nodeid.startswith(APART):
        return "apart"
    if nodeid.startswith(INTEGRATION):
        return "cluster"
    if nodeid.startswith(RUNTIMES):
        return "runtimes"
    return nodeid.split("::", 1)[0]


def pytest_configure(config: pytest.Config) -> None:
    # Groups are handed out in collection order (below), not largest first.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False
    if not hasattr(config, "workerinput"):  # the run itself, not an xdist worker
        config.stash[_CLUSTER_WAS_UP] = _local_cluster_recorded()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The long groups first, so that under `pytest -n` (as `make test` runs) each gets a worker
    of its own at once while the other unit tests spread over what is left."""
    rank = {"cluster": 0, "outage": 1, "apart": 2, "runtimes": 3}
    items.sort(key=lambda item: rank.get(_group(item.nodeid), 4))


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist's `loadscope`, with `_group` as the scope. (xdist's `loadgroup` reads a marker
    through a node-id suffix that pytest 9.2 no longer lets a plugin set.)"""
    from xdist.scheduler import LoadScopeScheduling

    class Groups(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return _group(nodeid)

    return Groups(config, log)


_CLUSTER_WAS_UP = pytest.StashKey[bool]()


def _local_cluster_recorded() -> bool:
    """Whether the local cluster is there (recorded, not alive: an API server its supervisor is
    restarting is still somebody's)."""
    if os.environ.get("NEST_KUBECONFIG"):
        return True
    from nest_cluster.control_plane import ControlPlane

    return ControlPlane().procs.recorded("kube-apiserver")


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A local cluster this run had to start (CI) goes down again at its very end, unless
    NEST_KEEP_CLUSTER=1; one a developer brought up stays up (fast reruns). Decided by the run,
    not a worker: under xdist two workers use the cluster and either may finish first."""
    config = session.config
    if hasattr(config, "workerinput") or config.stash.get(_CLUSTER_WAS_UP, True):
        return
    if os.environ.get("NEST_KEEP_CLUSTER") == "1" or not _local_cluster_recorded():
        return
    from nest_cluster.control_plane import ControlPlane

    ControlPlane().down()


@pytest.fixture(scope="session")
def kubeconfig() -> Iterator[Path]:
    """The API server's kubeconfig: NEST_KUBECONFIG's, or the local cluster's, brought up if it
    is not (`up` holds the cluster's lock: two workers may ask at once)."""
    named = os.environ.get("NEST_KUBECONFIG")
    if named:
        yield Path(named)
        return
    from nest_cluster.control_plane import ControlPlane

    plane = ControlPlane()
    plane.up()
    yield plane.paths.kubeconfig


@pytest.fixture(scope="session")
def kubectl_binary() -> str:
    from nest_cluster.control_plane import ControlPlane

    return ControlPlane().kubectl_path()


@pytest.fixture(scope="session")
def api(kubeconfig: Path) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(kubeconfig))


@pytest.fixture
def namespace(api: client.ApiClient) -> Iterator[str]:
    """A fresh namespace, ready for pods (its default ServiceAccount exists), deleted after."""
    core = client.CoreV1Api(api)
    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    # Pods are admitted only once the default ServiceAccount has its token secret.
    wait_for(
        lambda: core.read_namespaced_service_account("default", name).secrets,
        what=f"default ServiceAccount token in {name}",
    )
    _wait_for_leftovers_to_leave(api, name)
    yield name
    _delete_sandboxes(api, name)
    core.delete_namespace(name, propagation_policy="Background")


def _delete_sandboxes(api: client.ApiClient, namespace: str) -> None:
    """Delete a test's Sandboxes (and what makes them) before its namespace: the namespace
    controller reaches custom resources only after seconds of discovery, and the next test
    waits for these to leave the shared pool pods (`_wait_for_leftovers_to_leave`)."""
    custom = client.CustomObjectsApi(api)
    for plural in ("sandboxdeployments", "sandboxreplicasets", "sandboxes"):
        # No CRDs (a test of the bare cluster), or already going: the namespace follows.
        with contextlib.suppress(client.exceptions.ApiException):
            custom.delete_collection_namespaced_custom_object(
                "nest.sandbox.dev", "v1alpha1", namespace, plural
            )


def _wait_for_leftovers_to_leave(api: client.ApiClient, ours: str, timeout: float = 60) -> None:
    """Earlier tests' namespaces are deleted in the background; their namespace-mode sandboxes
    may still hold the shared pool pods, where TenantIsolation lets no other namespace in.
    Give them up to `timeout` to go (a test that needs the pool then still sees it busy)."""
    custom = client.CustomObjectsApi(api)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            items = custom.list_cluster_custom_object("nest.sandbox.dev", "v1alpha1", "sandboxes")
        except client.exceptions.ApiException:
            return  # no CRDs yet: nothing can be left over
        left = [
            s for s in items["items"]
            if s["metadata"]["namespace"].startswith("t-") and s["metadata"]["namespace"] != ours
        ]  # fmt: skip
        if not left:
            return
        time.sleep(0.5)  # polling the condition above, bounded by the deadline


@pytest.fixture
def kubectl(kubectl_binary: str, kubeconfig: Path, namespace: str) -> Kubectl:
    return Kubectl(kubectl_binary, kubeconfig, namespace)


@pytest.fixture(scope="session")
def nest_crds(kubeconfig: Path, kubectl_binary: str) -> list[str]:
    """The Nest CRDs applied from crds/*.yaml and Established; their names."""
    import subprocess

    import crds

    crd_dir = Path(crds.__file__).parent
    base = [kubectl_binary, f"--kubeconfig={kubeconfig}"]
    applied = subprocess.run(
        [*base, "apply", "-k", str(crd_dir), "-o", "name"], capture_output=True, text=True
    )
    assert applied.returncode == 0, applied.stderr
    names = [line.split("/", 1)[1] for line in applied.stdout.split()]
    established = subprocess.run(
        [*base, "wait", "--for=condition=established", "--timeout=60s"]
        + [f"crd/{name}" for name in names],
        capture_output=True,
        text=True,
    )
    assert established.returncode == 0, established.stderr
    return names


@pytest.fixture(scope="session")
def nest_deployed(kubeconfig: Path, kubectl_binary: str, nest_crds: list[str]) -> Path:
    """deploy/ applied once per run (CRDs, RBAC, operator, gateway, pool); its kubeconfig."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    base = [kubectl_binary, f"--kubeconfig={kubeconfig}", "--namespace=nest-system"]
    applied = subprocess.run(
        [*base, "apply", "-k", str(root / "deploy")], capture_output=True, text=True
    )
    assert applied.returncode == 0, applied.stderr
    # Every Sandbox write passes SandboxRestriction (failurePolicy Fail), which the operator
    # serves: a freshly started cluster refuses them until it answers. Wait for an answer.
    custom = client.CustomObjectsApi(config.new_client_from_config(config_file=str(kubeconfig)))
    probe = {
        "apiVersion": "nest.sandbox.dev/v1alpha1",
        "kind": "Sandbox",
        "metadata": {"name": "admission-probe"},
        "spec": {"function": {"handler": "main:handler", "source": {"path": "/nonexistent"}}},
    }

    def admitted() -> bool:
        try:
            custom.create_namespaced_custom_object(
                "nest.sandbox.dev", "v1alpha1", "default", "sandboxes", probe, dry_run="All"
            )
        except client.exceptions.ApiException:
            return False
        return True

    wait_for(admitted, timeout=180, what="SandboxRestriction (the operator) to answer")
    _clear_the_demo(kubeconfig)
    return kubeconfig


def _clear_the_demo(kubeconfig: Path) -> None:
    """`make demo` leaves its functions in namespace nest-demo; their namespace-mode sandboxes
    own both shared pool pods (TenantIsolation), which the suite needs. Remove them, saying so."""
    core = client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))
    try:
        core.delete_namespace("nest-demo", propagation_policy="Background")
    except client.exceptions.ApiException as err:
        if err.status == 404:
            return
        raise
    print("\ntests: deleting namespace nest-demo (left by `make demo`): the suite needs the pool")

    def gone() -> bool:
        try:
            core.read_namespace("nest-demo")
        except client.exceptions.ApiException as err:
            return err.status == 404
        return False

    wait_for(gone, timeout=180, what="namespace nest-demo to be gone")


@pytest.fixture
def nest_pool(nest_deployed: Path) -> list[dict[str, Any]]:
    """The pool pods as they are now, every one of them Ready (tests delete and add pool pods,
    so a list taken at the start of the run would go stale)."""
    core = client.CoreV1Api(config.new_client_from_config(config_file=str(nest_deployed)))

    def ready_pods() -> list[dict[str, Any]] | None:
        listed = core.list_namespaced_pod("nest-system", label_selector=POOL_SELECTOR)
        pods: list[dict[str, Any]] = core.api_client.sanitize_for_serialization(listed)["items"]
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        statuses = [c for p in live for c in (p.get("status") or {}).get("containerStatuses") or []]
        if len(live) < 2 or len(statuses) != 2 * len(live) or not all(c["ready"] for c in statuses):
            return None
        return sorted(live, key=lambda p: str(p["metadata"]["name"]))

    return wait_for(ready_pods, timeout=120, what="the pool pods from deploy/ to be Ready")
