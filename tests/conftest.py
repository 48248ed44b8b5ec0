"""Shared fixtures: a real Kubernetes API server for integration tests, a namespace per test.

The API server is the local one from `nest cluster up` (brought up once per run, or reused), or
any cluster whose kubeconfig NEST_KUBECONFIG names. It is never mocked.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from tests.kube import Kubectl, wait_for


@pytest.fixture(scope="session")
def kubeconfig() -> Path:
    named = os.environ.get("NEST_KUBECONFIG")
    if named:
        return Path(named)
    from nest.cluster.control_plane import ControlPlane

    plane = ControlPlane()
    plane.up()
    return plane.paths.kubeconfig


@pytest.fixture(scope="session")
def kubectl_binary() -> str:
    from nest.cluster.control_plane import ControlPlane

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
    wait_for(
        lambda: core.read_namespaced_service_account("default", name),
        what=f"default ServiceAccount in {name}",
    )
    yield name
    core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture
def kubectl(kubectl_binary: str, kubeconfig: Path, namespace: str) -> Kubectl:
    return Kubectl(kubectl_binary, kubeconfig, namespace)
