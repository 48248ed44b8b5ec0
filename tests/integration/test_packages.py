"""Function packages against the local cluster's real registry (distribution 2.8 on loopback).

A directory with a requirements.txt naming a real PyPI package is built (pip, for this
interpreter: the local pool's), pushed through oras-py and pulled back by digest with the same
client, verified. `nest deploy DIR` then writes a SandboxDeployment whose source is the package.
Running it in a pool pod is the sidecar's part (its own tests).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from kubernetes import client

from nest.package.build import Builder
from nest.package.push import hosting_from_cluster, push, repository_for
from nest.package.target import host_target
from nest_cluster.registry import RegistryHosting
from sandbox.layers import (
    CODE_MEDIA_TYPE,
    DEPENDENCIES_MEDIA_TYPE,
    PackageError,
    Reference,
    pull_layers,
)

REQUIREMENT = "six==1.16.0"  # small, pure Python, on PyPI for a decade


@pytest.fixture
def hosting(api: client.ApiClient) -> RegistryHosting:
    found = hosting_from_cluster(client.CoreV1Api(api))
    if found is None:
        pytest.skip("the cluster announces no registry (kube-public/local-registry-hosting)")
    return found


def _function(root: Path) -> Path:
    fn = root / "fn"
    (fn / "lib").mkdir(parents=True)
    (fn / "main.py").write_text("import six\n\ndef handler(event, context):\n    return six.PY3\n")
    (fn / "lib" / "util.py").write_text("X = 1\n")
    (fn / "requirements.txt").write_text(f"{REQUIREMENT}\n")
    return fn


def _names(blob: Path) -> set[str]:
    with tarfile.open(blob) as tar:
        return set(tar.getnames())


def test_a_package_is_pushed_and_pulled_back_by_digest(
    hosting: RegistryHosting, namespace: str, tmp_path: Path
) -> None:
    said: list[str] = []
    builder = Builder(tmp_path / "cache", said.append)
    package = builder.build(_function(tmp_path), host_target())
    ref = push(package, hosting, repository_for(namespace), "fn", said.append)
    parsed = Reference.parse(ref)
    assert (parsed.registry, parsed.repository) == (hosting.pull_host, f"nest/{namespace}")

    pulled = pull_layers(ref, tmp_path / "blobs")
    assert pulled.config["distributions"] == [{"name": "six", "native": False, "version": "1.16.0"}]
    assert pulled.config["python"]["abi"] == host_target().abi
    assert [(layer.media_type, layer.digest) for layer in pulled.layers] == [
        (media, blob.digest) for media, blob in package.layers
    ]
    deps, code = pulled.layers
    assert deps.media_type == DEPENDENCIES_MEDIA_TYPE and code.media_type == CODE_MEDIA_TYPE
    assert "six.py" in _names(deps.path)
    assert not any(n.endswith(".pyc") or n.startswith("bin") for n in _names(deps.path))
    assert _names(code.path) == {"main.py", "lib", "lib/util.py"}

    # Same directory, same package: a redeploy of unchanged code is the same reference, and a
    # second pull finds every blob already there (what makes a shared layer one fetch per pod).
    again = push(builder.build(_function(tmp_path / "again"), host_target()), hosting,
                 repository_for(namespace), "fn", said.append)  # fmt: skip
    assert again == ref
    assert any("already in the registry" in line for line in said)
    before = {layer.path: layer.path.stat().st_mtime_ns for layer in pulled.layers}
    pull_layers(ref, tmp_path / "blobs")
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_a_reference_the_registry_does_not_hold_is_refused(
    hosting: RegistryHosting, namespace: str, tmp_path: Path
) -> None:
    missing = f"{hosting.pull_host}/{repository_for(namespace)}@sha256:{'0' * 64}"
    with pytest.raises(PackageError) as caught:
        pull_layers(missing, tmp_path / "blobs")
    assert "404" in str(caught.value) and not caught.value.permanent
    assert not (tmp_path / "blobs").exists() or not any((tmp_path / "blobs").rglob("*"))


def test_nest_deploy_builds_pushes_and_deploys_the_package(
    kubeconfig: Path, api: client.ApiClient, namespace: str, nest_crds: list[str], tmp_path: Path
) -> None:
    env = {**os.environ, "NEST_KUBECONFIG": str(kubeconfig), "NEST_CACHE_DIR": str(tmp_path)}
    env.pop("NEST_REGISTRY", None)
    deployed = subprocess.run(
        [sys.executable, "-m", "nest", "deploy", str(_function(tmp_path)), "--name", "pkg",
         "--no-wait", "-n", namespace],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert deployed.returncode == 0, deployed.stderr
    assert "package: installing six" in deployed.stderr
    custom = client.CustomObjectsApi(api)
    stored = custom.get_namespaced_custom_object(
        "nest.sandbox.dev", "v1alpha1", namespace, "sandboxdeployments", "pkg"
    )
    source = stored["spec"]["template"]["spec"]["function"]["source"]
    assert list(source) == ["oci"]
    ref = source["oci"]["ref"]
    assert f"created ({ref})" in deployed.stderr
    pulled = pull_layers(ref, tmp_path / "blobs")
    assert pulled.config["requirements"] == [REQUIREMENT]
