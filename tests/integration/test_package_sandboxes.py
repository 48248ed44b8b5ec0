"""Function packages running in the pool: `nest deploy DIR` with a requirements file, end to end.

The local cluster's real registry, the pool pods from deploy/ and the gateway: a function whose
requirements.txt names a real PyPI package answers through the gateway using it, in subprocess
mode; ten functions built on one 20 MB dependency layer (a wheel this test makes, from a local
wheelhouse: nothing big is downloaded) fetch that layer's blob once per pool pod, which the
sidecars' pull counters and the registry's access log both show; and a pull secret the sidecar
may not read leaves the sandbox retrying with a message naming the missing grant, until the
namespace grants it by name (docs/security.md).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from nest.package.build import Builder
from nest.package.push import hosting_from_cluster, push, repository_for
from nest.package.target import host_target
from nest_cluster.paths import ClusterPaths
from sandbox.layers import MANIFEST_MEDIA_TYPE, Reference
from sandbox.layers import client as layers_client
from tests.integration.test_gateway import (  # noqa: F401
    Client,
    gateway_url,
    operator_active,
    service_account_token,
)
from tests.kube import Kubectl, wait_for

Nest = Callable[..., subprocess.CompletedProcess[str]]
LAYER_BYTES = 20 * 1024 * 1024
FUNCTIONS = 10


@pytest.fixture(autouse=True)
def with_operator_and_gateway(operator_active: bool, gateway_url: str) -> None:  # noqa: F811
    if not operator_active:
        pytest.skip("needs the operator (deploy/operator/ or `nest operator run`)")


@pytest.fixture
def nest(kubeconfig: Path, namespace: str, tmp_path: Path) -> Nest:
    """`nest ARGS -n <test namespace>` with a build cache of this test's own."""
    env = {**os.environ, "NEST_KUBECONFIG": str(kubeconfig), "NEST_CACHE_DIR": str(tmp_path)}
    env.pop("NEST_GATEWAY", None)
    env.pop("NEST_REGISTRY", None)

    def run(*args: str, timeout: float = 300) -> Any:
        return subprocess.run(
            [sys.executable, "-m", "nest", *args, "-n", namespace],
            capture_output=True, text=True, env=env, timeout=timeout,
        )  # fmt: skip

    return run


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr}{proc.stdout}"
    return proc


def invoke(nest: Nest, name: str) -> Any:
    proc = ok(nest("-v", "invoke", name, "{}"))
    assert "through the gateway" in proc.stderr
    return json.loads(proc.stdout)


def test_a_package_with_a_pypi_dependency_answers_through_the_gateway(
    nest: Nest, kubectl: Kubectl, tmp_path: Path
) -> None:
    fn = tmp_path / "fn"
    fn.mkdir()
    (fn / "requirements.txt").write_text("six==1.16.0\n")
    (fn / "main.py").write_text(
        "import six\n\n"
        "def handler(event, context):\n"
        "    return {'six': six.__version__, 'from': six.__file__.rsplit('/', 2)[-2]}\n"
    )
    deployed = ok(nest("deploy", str(fn), "--name", "six-fn", "--memory", "64Mi"))
    assert "package: installing six" in deployed.stderr
    assert (
        kubectl.json("get", "sbxd", "six-fn")["spec"]["template"]["spec"]["function"]["isolation"]
        == "subprocess"
    )
    answer = invoke(nest, "six-fn")
    assert answer["six"] == "1.16.0"
    assert answer["from"].startswith("sha256-")  # six came from the unpacked dependency layer


def big_wheel(wheelhouse: Path) -> str:
    """A pure-Python wheel holding LAYER_BYTES of fresh random data (so its layer is new to
    every pod, and incompressible); its requirement line."""
    name, version = "nest_big_layer", "1.0"
    wheelhouse.mkdir()
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b"import os\nDATA = os.path.join(os.path.dirname(__file__), "
        b"'data.bin')\n",
        f"{name}/data.bin": os.urandom(LAYER_BYTES),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = "".join(f"{path},,\n" for path in [*files, f"{info}/RECORD"])
    files[f"{info}/RECORD"] = record.encode()
    with zipfile.ZipFile(wheelhouse / f"{name}-{version}-py3-none-any.whl", "w") as whl:
        for path, data in files.items():
            whl.writestr(path, data)
    return f"{name}=={version}"


def fetch_manifest(ref: str) -> Any:
    """The package's manifest (not its blobs: the registry's log counts the pods' blob GETs)."""
    parsed = Reference.parse(ref)
    reg = layers_client(parsed.registry)
    url = f"{reg.prefix}://{parsed.registry}/v2/{parsed.repository}/manifests/{parsed.digest}"
    return reg.do_request(url, "GET", headers={"Accept": MANIFEST_MEDIA_TYPE}).json()


def pool_pods(api: client.ApiClient) -> dict[str, str]:
    """Live pool pods: name -> IP."""
    listed = client.CoreV1Api(api).list_namespaced_pod(
        "nest-system", label_selector="app.kubernetes.io/name=nest-pool"
    )
    return {
        str(p.metadata.name): str(p.status.pod_ip)
        for p in listed.items
        if not p.metadata.deletion_timestamp and p.status.pod_ip
    }


def sidecar_metrics(pod_ip: str) -> str:
    with urllib.request.urlopen(f"http://{pod_ip}:8081/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def counter(metrics: str, name: str, digest: str) -> int:
    found = re.search(rf'^{name}_total{{digest="{re.escape(digest)}"}} (\S+)$', metrics, re.M)
    return int(float(found.group(1))) if found else 0


def test_a_20mb_layer_shared_by_ten_functions_is_fetched_once_per_pod(
    nest: Nest, kubectl: Kubectl, api: client.ApiClient, kubeconfig: Path, tmp_path: Path
) -> None:
    pool_before = pool_pods(api)
    requirement = big_wheel(tmp_path / "wheels")
    requirements = f"--no-index\n--find-links {tmp_path / 'wheels'}\n{requirement}\n"
    names = [f"big-{i}" for i in range(FUNCTIONS)]
    refs = []
    for i, name in enumerate(names):
        fn = tmp_path / name
        fn.mkdir()
        (fn / "requirements.txt").write_text(requirements)
        (fn / "main.py").write_text(
            f"import os\nimport nest_big_layer\n\nN = {i}\n\n"
            "def handler(event, context):\n"
            "    return {'n': N, 'bytes': os.path.getsize(nest_big_layer.DATA)}\n"
        )
        deployed = ok(nest("deploy", str(fn), "--name", name, "--memory", "64Mi", "--no-wait"))
        refs.append(re.findall(r"\((\S+@sha256:[0-9a-f]{64})\)", deployed.stderr)[-1])
    assert len(set(refs)) == FUNCTIONS  # ten packages, not one
    layers = set()
    for ref in refs:  # the dependency layer is one blob of ~20 MB in every manifest
        manifest = fetch_manifest(ref)
        deps = [d for d in manifest["layers"] if "dependencies" in d["mediaType"]]
        assert len(deps) == 1 and deps[0]["size"] >= LAYER_BYTES * 0.95
        layers.add(deps[0]["digest"])
    (layer,) = layers

    for i, name in enumerate(names):
        answer = wait_for(lambda name=name: _answer(nest, name), timeout=180,
                          what=f"{name} to answer through the gateway")  # fmt: skip
        assert answer == {"n": i, "bytes": LAYER_BYTES}

    custom = client.CustomObjectsApi(api)
    sandboxes = custom.list_namespaced_custom_object(
        "nest.sandbox.dev", "v1alpha1", kubectl.namespace, "sandboxes"
    )["items"]
    hosts = {s["spec"]["podName"] for s in sandboxes if s["status"].get("phase") == "Running"}
    assert len([s for s in sandboxes if s["status"].get("phase") == "Running"]) == FUNCTIONS
    pool = pool_pods(api)
    assert hosts <= set(pool)
    fetched = {}
    for pod, ip in pool.items():  # hosts fetched and unpacked it once; no pod did twice
        metrics = sidecar_metrics(ip)
        fetched[pod] = counter(metrics, "nest_sidecar_layer_blob_fetches", layer)
        unpacked = counter(metrics, "nest_sidecar_layer_unpacks", layer)
        if pod in hosts:
            assert (fetched[pod], unpacked) == (1, 1), pod
        assert fetched[pod] <= 1 and unpacked <= 1, pod

    # The registry's own word, where it is the local cluster's: one GET of the blob per pod
    # that fetched it (exactly the counters' sum unless a pool pod was replaced meanwhile, whose
    # counters went with it).
    paths = ClusterPaths.default()
    log = paths.logs / "registry.log"
    if paths.kubeconfig.resolve() == kubeconfig.resolve() and log.exists():
        blob_get = f'GET /v2/nest/{kubectl.namespace}/blobs/{layer} HTTP/1.1" 200 '
        gets = [line for line in log.read_text().splitlines() if blob_get in line]
        if set(pool) == set(pool_before):
            assert len(gets) == sum(fetched.values()), gets
        else:
            assert sum(fetched.values()) <= len(gets) <= len(set(pool) | set(pool_before)), gets


def _answer(nest: Nest, name: str) -> Any:
    proc = nest("invoke", name, "{}")
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def test_the_management_api_deploys_a_package_by_digest(
    kubectl: Kubectl,
    api: client.ApiClient,
    gateway_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    fn = tmp_path / "fn"
    fn.mkdir()
    (fn / "requirements.txt").write_text("six==1.16.0\n")
    (fn / "main.py").write_text(
        "import six\n\ndef handler(event, context):\n    return {'six': six.__version__}\n"
    )
    hosting = hosting_from_cluster(client.CoreV1Api(api))
    assert hosting is not None
    package = Builder(tmp_path / "cache", lambda line: None).build(fn, host_target())
    ref = push(package, hosting, repository_for(kubectl.namespace), "api", lambda line: None)
    token = service_account_token(kubectl, "developer", "nest-function-developer")
    developer = Client(gateway_url, kubectl.namespace, token)
    created = developer.create(name="via-api", handler="main:handler", code={"oci": {"ref": ref}})
    assert created.status_code == 201, created.text
    stored = kubectl.json("get", "sbxd", "via-api")["spec"]["template"]["spec"]["function"]
    assert stored["source"] == {"oci": {"ref": ref}}

    def answered() -> Any:
        resp = developer.invoke("via-api", {})
        return resp.json() if resp.status_code == 200 else None

    assert wait_for(answered, timeout=180, what="via-api to answer") == {"six": "1.16.0"}
    tag = developer.create(
        name="by-tag", handler="main:handler", code={"oci": {"ref": ref.split("@")[0] + ":api"}}
    )
    assert tag.status_code in (400, 422) and "code.oci.ref" in tag.text, tag.text


def test_a_pull_secret_is_read_only_when_the_namespace_grants_it_by_name(
    nest: Nest, kubectl: Kubectl, api: client.ApiClient, tmp_path: Path
) -> None:
    fn = tmp_path / "fn"
    fn.mkdir()
    (fn / "requirements.txt").write_text("six==1.16.0\n")
    (fn / "main.py").write_text(
        "import six\n\ndef handler(event, context):\n    return {'ok': True}\n"
    )
    hosting = hosting_from_cluster(client.CoreV1Api(api))
    assert hosting is not None
    auth = base64.b64encode(b"user:password").decode()
    config = json.dumps({"auths": {hosting.pull_host: {"auth": auth}}})
    kubectl.run("create", "secret", "generic", "creds", "--type=kubernetes.io/dockerconfigjson",
                f"--from-literal=.dockerconfigjson={config}")  # fmt: skip
    ok(nest("deploy", str(fn), "--name", "secret-fn", "--pull-secret", "creds", "--no-wait"))

    def refused() -> str | None:
        for sbx in kubectl.json("get", "sbx")["items"]:
            message = (sbx.get("status") or {}).get("message") or ""
            if "may not read the pull secret Secret" in message:
                return str(message)
        return None

    message = wait_for(refused, timeout=120, what="the sandbox to say it may not read the Secret")
    assert f"Secret {kubectl.namespace}/creds" in message and "docs/security.md" in message

    kubectl.run("create", "role", "nest-pull-secrets", "--verb=get", "--resource=secrets",
                "--resource-name=creds")  # fmt: skip
    kubectl.run("create", "rolebinding", "nest-pull-secrets", "--role=nest-pull-secrets",
                "--serviceaccount=nest-system:nest-sidecar")  # fmt: skip
    answer = wait_for(lambda: _answer(nest, "secret-fn"), timeout=180,
                      what="the function to run once the Secret is granted")  # fmt: skip
    assert answer == {"ok": True}
