"""In-cluster builds through the gateway (issue 11, item 1): no Python on the platform's side.

A platform uploads a function directory with a requirements.txt (a real, small PyPI package) to
the real gateway of the local cluster; the context lands in the cluster's registry by digest;
the function created with `code.build` is built by the operator's Job (`nest-build`) and then
answers through the HTTP trigger, its FunctionView saying the build succeeded; a requirement
that does not exist fails the build, and the view says BuildFailed naming the package.
Bad uploads are RFC 7807 problems naming the entry, the size or the media type.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
from kubernetes import client

from nest.package.tarball import context_archive
from sandbox.context import pull_context
from sandbox.hosting import RegistryHosting
from sandbox.layers import Reference
from tests.archives import tar_gz
from tests.integration.test_gateway import (  # noqa: F401
    Client,
    assert_problem,
    gateway_url,
    operator_active,
    service_account_token,
)
from tests.kube import Kubectl, wait_for

REQUIREMENT = "six==1.16.0"  # small, pure Python, on PyPI for a decade
MISSING = "nest-no-such-distribution-4f1c==1.0"
BUILD_TIMEOUT = 300.0  # pip and a push in a Job: well under the Job's own deadline


@pytest.fixture
def hosting(api: client.ApiClient) -> RegistryHosting:
    from nest.package.push import hosting_from_cluster

    found = hosting_from_cluster(client.CoreV1Api(api))
    if found is None:
        pytest.skip("the cluster announces no registry (kube-public/local-registry-hosting)")
    return found


@pytest.fixture
def developer(kubectl: Kubectl, gateway_url: str) -> Client:  # noqa: F811
    token = service_account_token(kubectl, "platform", "nest-function-developer")
    return Client(gateway_url, kubectl.namespace, token)


def contexts_url(who: Client) -> str:
    return f"{who.base}/v1/namespaces/{who.ns}/contexts"


def upload(who: Client, data: bytes, content_type: str = "application/gzip") -> requests.Response:
    return who.request("POST", contexts_url(who), data=data, headers={"Content-Type": content_type})


def function_dir(root: Path, requirement: str) -> Path:
    fn = root / "fn"
    fn.mkdir(parents=True)
    (fn / "requirements.txt").write_text(f"{requirement}\n")
    (fn / "main.py").write_text(
        "import six\n\n"
        "def handler(event, context):\n"
        "    return {'six': six.__version__, 'from': six.__file__.rsplit('/', 2)[-2]}\n"
    )
    return fn


def archive(directory: Path, out: Path) -> bytes:
    return context_archive(directory, out).path.read_bytes()


def test_an_uploaded_directory_is_stored_in_the_registry_by_digest(
    developer: Client, hosting: RegistryHosting, tmp_path: Path
) -> None:
    data = archive(function_dir(tmp_path, REQUIREMENT), tmp_path / "ctx.tar.gz")
    resp = upload(developer, data)
    assert resp.status_code == 201, resp.text
    answer = resp.json()
    assert (answer["files"], answer["bytes"]) == (2, len(data))
    ref = Reference.parse(answer["context"])
    assert (ref.registry, ref.repository) == (hosting.pull_host, f"nest/{developer.ns}")
    # What pods pull is what was uploaded: every byte verified against the digest.
    pulled = tmp_path / "pulled"
    assert pull_context(answer["context"], pulled) == 2
    assert (pulled / "requirements.txt").read_text() == f"{REQUIREMENT}\n"
    # The same directory is the same context: re-uploading unchanged code changes nothing.
    assert upload(developer, data).json()["context"] == answer["context"]


def test_bad_uploads_are_problems_naming_the_cause(
    developer: Client,
    kubectl: Kubectl,
    gateway_url: str,  # noqa: F811
) -> None:
    linked = tar_gz({"main.py": "x = 1\n", "secrets": "->/etc/shadow"})
    body = assert_problem(upload(developer, linked), 400, "'secrets' is a link")
    assert body["errors"][0]["field"] == "body:secrets"
    assert_problem(upload(developer, b"PK\x03\x04 a zip"), 400, "not gzip-compressed")
    assert_problem(upload(developer, tar_gz({"a.py": ""}), "application/json"), 415, "gzip")
    too_big = b"\x1f\x8b" + b"\0" * (64 * 1024 * 1024 - 1)
    assert_problem(upload(developer, too_big), 413, "67108864")
    token = service_account_token(kubectl, "invoker", "nest-function-invoker")
    invoker = Client(gateway_url, kubectl.namespace, token)
    assert_problem(upload(invoker, tar_gz({"a.py": ""})), 403)


def built(developer: Client, name: str) -> dict[str, Any] | None:
    """The function's build view once the build ended (True or False), else None."""
    resp = developer.request("GET", developer.fn(f"/{name}"))
    assert resp.status_code == 200, resp.text
    view = resp.json().get("build")
    return view if view and view["status"] in ("True", "False") else None


@pytest.fixture
def builds_in_cluster(operator_active: bool) -> None:  # noqa: F811
    if not operator_active:
        pytest.skip("needs the operator (deploy/operator/), which runs the build Jobs")


@pytest.mark.usefixtures("builds_in_cluster")
def test_a_function_built_in_the_cluster_answers_through_the_http_trigger(
    developer: Client, tmp_path: Path
) -> None:
    data = archive(function_dir(tmp_path, REQUIREMENT), tmp_path / "ctx.tar.gz")
    context = upload(developer, data).json()["context"]
    resp = developer.create(
        name="built", handler="main:handler", code={"build": {"context": context}},
        memory="64Mi",
    )  # fmt: skip
    assert resp.status_code == 201, resp.text
    assert resp.json()["build"]["context"] == context
    view = wait_for(lambda: built(developer, "built"), BUILD_TIMEOUT, "the build to end")
    assert (view["status"], view["reason"]) == ("True", "Succeeded"), view
    ref = Reference.parse(view["ref"])
    assert ref.repository == f"nest/{developer.ns}" and view["ref"] in view["message"]

    def answered() -> dict[str, Any] | None:
        got = developer.request("POST", f"{developer.base}/fn/{developer.ns}/built/", json={})
        return got.json() if got.status_code == 200 else None

    answer = wait_for(answered, 120, "the built function to answer through the HTTP trigger")
    assert answer["six"] == "1.16.0"
    assert answer["from"].startswith("sha256-")  # six came from the built dependency layer


@pytest.mark.usefixtures("builds_in_cluster")
def test_a_requirement_that_does_not_exist_fails_the_build_naming_it(
    developer: Client, tmp_path: Path
) -> None:
    data = archive(function_dir(tmp_path, MISSING), tmp_path / "ctx.tar.gz")
    context = upload(developer, data).json()["context"]
    resp = developer.create(
        name="unbuildable", handler="main:handler", code={"build": {"context": context}}
    )
    assert resp.status_code == 201, resp.text
    view = wait_for(lambda: built(developer, "unbuildable"), BUILD_TIMEOUT, "the build to end")
    assert (view["status"], view["reason"]) == ("False", "BuildFailed"), view
    assert MISSING.split("==")[0] in view["message"].splitlines()[0], view["message"]
    assert view.get("ref") is None


@pytest.mark.usefixtures("builds_in_cluster")
def test_nest_deploy_can_leave_the_build_to_the_cluster(
    developer: Client, kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    fn = function_dir(tmp_path, REQUIREMENT)
    env = {**os.environ, "NEST_KUBECONFIG": str(kubeconfig), "NEST_CACHE_DIR": str(tmp_path)}
    env.pop("NEST_REGISTRY", None)
    deployed = subprocess.run(
        [sys.executable, "-m", "nest", "deploy", str(fn), "--name", "cli-built",
         "--build-in-cluster", "--timeout", str(BUILD_TIMEOUT), "-n", namespace],
        capture_output=True, text=True, env=env, timeout=BUILD_TIMEOUT + 60,
    )  # fmt: skip
    assert deployed.returncode == 0, deployed.stderr
    assert "build context" in deployed.stderr and "building" in deployed.stderr
    assert "package: installing" not in deployed.stderr  # no pip ran here
    source = developer.request("GET", developer.fn("/cli-built")).json()["spec"]["template"]
    assert "build" in source["spec"]["function"]["source"]
    got = developer.request("POST", f"{developer.base}/fn/{namespace}/cli-built/", json={})
    assert got.status_code == 200, got.text
    assert got.json()["six"] == "1.16.0"
