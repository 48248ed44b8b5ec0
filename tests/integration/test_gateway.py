"""The gateway from deploy/ against the real API server: management, auth by RBAC, routing.

The gateway runs as the pod deploy/ creates (auth on, its own least-privilege ServiceAccount);
tests reach it at the pod IP and authenticate with ServiceAccount tokens whose rights come from
RoleBindings to the ClusterRoles deploy/gateway ships. Without the operator, routing tests play
its part: they bind Sandboxes to pool pods and write SandboxEndpoints status by hand. With the
operator deployed those tests step aside (it would overwrite the hand-written endpoints) and
test_gateway_e2e.py covers the same paths for real. Whether an operator runs is asked of the
cluster once per session (`operator_active`).
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from kubernetes import client

from gateway import openapi
from nest_api import convert
from nest_api import models as m
from tests.dataplane import signed_headers
from tests.integration.test_sidecar import PID_HANDLER, bind, running
from tests.kube import Kubectl, wait_for

ROOT = Path(__file__).resolve().parents[2]
GATEWAY_SELECTOR = "app.kubernetes.io/name=nest-gateway"
COUNTER = (
    "import uuid\n"
    "INSTANCE = uuid.uuid4().hex\n"
    "COUNT = 0\n"
    "def handler(event, context):\n"
    "    global COUNT\n"
    "    COUNT += 1\n"
    "    return {'instance': INSTANCE, 'count': COUNT, 'event': event,\n"
    "            'sandbox': context.function_name}\n"
)
TRIGGER = (
    "def handler(event, context):\n"
    "    r = context.request\n"
    "    return {'method': r.method, 'path': r.path, 'query': dict(r.query),\n"
    "            'header': r.headers.get('X-Test'), 'auth': r.headers.get('Authorization'),\n"
    "            'body': r.body.decode()}\n"
)


@pytest.fixture(scope="session")
def operator_active(api: client.ApiClient, nest_crds: list[str]) -> bool:
    """Whether an operator (from deploy/ or run by hand) manages this cluster's functions.

    Asked of the cluster, not of process lists: a canary SandboxDeployment gets its
    SandboxEndpoints (one per deployment) only when an operator's endpoints controller runs.
    """
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    ns = f"canary-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    body = convert.deployment_for(
        ns, m.FunctionCreate.model_validate(function("canary", replicas=0))
    )
    args = ("nest.sandbox.dev", "v1alpha1", ns)
    custom.create_namespaced_custom_object(*args, "sandboxdeployments", body.to_k8s())
    try:
        wait_for(lambda: custom.get_namespaced_custom_object(*args, "sandboxendpoints", "canary"),
                 timeout=8, what="an operator to create the canary's SandboxEndpoints")  # fmt: skip
        return True
    except AssertionError:
        return False
    finally:
        core.delete_namespace(ns, propagation_policy="Background")


@pytest.fixture
def gateway_url(nest_pool: list[dict[str, Any]], api: client.ApiClient) -> str:
    """The base URL of the gateway pod from deploy/, once it is Ready (asked per test: a pod
    replaced meanwhile has a new IP)."""
    core = client.CoreV1Api(api)

    def ready() -> str | None:
        pods = core.list_namespaced_pod("nest-system", label_selector=GATEWAY_SELECTOR).items
        for pod in pods:
            statuses = pod.status.container_statuses or []
            if pod.metadata.deletion_timestamp is None and statuses and statuses[0].ready:
                return f"http://{pod.status.pod_ip}:8090"
        return None

    return wait_for(ready, timeout=120, what="the nest-gateway pod from deploy/ to be Ready")


@pytest.fixture
def without_operator(operator_active: bool) -> None:
    if operator_active:
        pytest.skip("an operator owns SandboxEndpoints here; test_gateway_e2e.py covers this")


def service_account_token(kubectl: Kubectl, name: str, cluster_role: str | None) -> str:
    """A token of a new ServiceAccount, bound (in the test namespace) to `cluster_role`."""
    kubectl.run("create", "serviceaccount", name)
    if cluster_role:
        kubectl.run(
            "create", "rolebinding", name, f"--clusterrole={cluster_role}",
            f"--serviceaccount={kubectl.namespace}:{name}",
        )  # fmt: skip

    def secret() -> str | None:
        sa = kubectl.json("get", "serviceaccount", name)
        names = [s["name"] for s in sa.get("secrets") or []]
        return names[0] if names else None

    data = kubectl.json("get", "secret", wait_for(secret, what=f"token of {name}"))["data"]
    return base64.b64decode(data["token"]).decode()


class Client:
    """The gateway's HTTP API for one caller."""

    def __init__(self, base: str, namespace: str, token: str | None) -> None:
        self.base = base
        self.ns = namespace
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def fn(self, suffix: str = "") -> str:
        return f"{self.base}/v1/namespaces/{self.ns}/functions{suffix}"

    def request(self, method: str, url: str, **kw: Any) -> requests.Response:
        return self.session.request(method, url, timeout=60, **kw)

    def create(self, **body: Any) -> requests.Response:
        return self.request("POST", self.fn(), json=body)

    def invoke(self, name: str, event: Any) -> requests.Response:
        return self.request("POST", self.fn(f"/{name}:invoke"), json=event)


@pytest.fixture
def developer(kubectl: Kubectl, gateway_url: str) -> Client:
    token = service_account_token(kubectl, "developer", "nest-function-developer")
    return Client(gateway_url, kubectl.namespace, token)


def function(name: str, code: str = COUNTER, **extra: Any) -> dict[str, Any]:
    return {"name": name, "handler": "main:handler", "files": {"main.py": code},
            "isolation": "namespace", **extra}  # fmt: skip


def assert_problem(resp: requests.Response, status: int, *words: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    body: dict[str, Any] = resp.json()
    assert body["status"] == status and body["type"].startswith("https://nest.sandbox.dev/")
    for word in words:
        assert word in json.dumps(body), body
    return body


def test_openapi_and_docs_are_served(gateway_url: str) -> None:
    assert requests.get(f"{gateway_url}/openapi.json", timeout=10).json() == openapi.document()
    page = requests.get(f"{gateway_url}/docs", timeout=10)
    assert page.status_code == 200 and "/v1/namespaces/{namespace}/functions" in page.text


def test_rbac_decides_who_may_read_deploy_and_invoke(
    kubectl: Kubectl, gateway_url: str, developer: Client
) -> None:
    ns = kubectl.namespace
    nobody = Client(gateway_url, ns, service_account_token(kubectl, "nobody", None))
    invoker = Client(gateway_url, ns, service_account_token(kubectl, "invoker",
                                                            "nest-function-invoker"))  # fmt: skip
    anonymous = Client(gateway_url, ns, None)
    forged = Client(gateway_url, ns, "not-a-real-token")

    assert_problem(anonymous.request("GET", anonymous.fn()), 401, "Bearer")
    assert_problem(forged.request("GET", forged.fn()), 401, "invalid bearer token")
    assert_problem(nobody.request("GET", nobody.fn()), 403, "may not list sandboxdeployments")
    assert_problem(nobody.create(**function("f")), 403, "may not create sandboxdeployments")
    assert_problem(nobody.invoke("f", {}), 403, "may not create sandboxdeployments/invoke f")
    assert_problem(invoker.request("GET", invoker.fn("/f")), 403, "may not get")
    assert developer.create(**function("f", replicas=0)).status_code == 201
    # The invoker passes authorisation; what it reaches is the function (held, then answered)
    # or, here, a function deleted meanwhile: not a 403.
    assert developer.request("DELETE", developer.fn("/f")).status_code == 204
    assert_problem(invoker.invoke("f", {}), 404)  # "not found", or "was deleted" if seen going


def test_management_round_trip(kubectl: Kubectl, developer: Client) -> None:
    created = developer.create(**function("hello", replicas=0, env={"A": "1"}))
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["spec"]["template"]["spec"]["function"]["env"] == {"A": "1"}
    stored = kubectl.json("get", "sbxd", "hello")
    assert stored["spec"]["replicas"] == 0 and stored["metadata"]["uid"] == body["uid"]

    assert_problem(developer.create(**function("hello")), 409, "already exists")
    bad = developer.create(**function("x", autoscaling={"minReplicas": 3, "maxReplicas": 1}))
    assert_problem(bad, 422, "autoscaling", "minReplicas must not exceed maxReplicas")
    assert_problem(developer.create(name="Bad_Name"), 422, '"field": "name"', '"field": "handler"')
    not_json = developer.request(
        "POST", developer.fn(), data=b"{", headers={"Content-Type": "application/json"}
    )
    assert_problem(not_json, 400, "not JSON")
    assert_problem(developer.request("GET", developer.fn("/Nope")), 400, "path parameter name")

    listed = developer.request("GET", developer.fn()).json()["items"]
    assert [f["name"] for f in listed] == ["hello"]
    update = {"handler": "main:handler", "files": {"main.py": PID_HANDLER}, "timeoutSeconds": 7}
    replaced = developer.request("PUT", developer.fn("/hello"), json=update)
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["spec"]["template"]["spec"]["function"]["timeoutSeconds"] == 7
    assert replaced.json()["spec"]["replicas"] == 0, "an update keeps the replicas"

    scaled = developer.request("PUT", developer.fn("/hello/scale"), json={"replicas": 0})
    assert scaled.json()["replicas"] == 0
    assert developer.request("GET", developer.fn("/hello/scale")).json()["replicas"] == 0
    status = developer.request("GET", developer.fn("/hello/rollout")).json()
    assert set(status) >= {"complete", "message", "replicas", "updatedReplicas"}
    assert developer.request("GET", developer.fn("/hello/sandboxes")).json() == {"items": []}
    endpoints = developer.request("GET", developer.fn("/hello/endpoints")).json()
    assert endpoints["name"] == "hello" and endpoints["status"]["readyCount"] == 0

    assert developer.request("DELETE", developer.fn("/hello")).status_code == 204
    assert_problem(developer.request("GET", developer.fn("/hello")), 404, "hello not found")
    assert_problem(developer.request("GET", developer.fn("/hello/endpoints")), 404)


def write_endpoints(api: client.ApiClient, ns: str, name: str, ready: list[Any]) -> None:
    """Play the operator's endpoints controller: create the object, then write its status."""
    custom = client.CustomObjectsApi(api)
    args = ("nest.sandbox.dev", "v1alpha1", ns, "sandboxendpoints")
    try:
        current = custom.get_namespaced_custom_object(*args, name)
    except client.ApiException:
        body = {"apiVersion": "nest.sandbox.dev/v1alpha1", "kind": "SandboxEndpoints",
                "metadata": {"name": name}}  # fmt: skip
        current = custom.create_namespaced_custom_object(*args, body)
    current["status"] = {"ready": ready, "notReady": []}
    custom.replace_namespaced_custom_object_status(*args, name, current)


def address(obj: dict[str, Any]) -> dict[str, Any]:
    status = obj["status"]
    meta = obj["metadata"]
    return {"sandbox": meta["name"], "uid": meta["uid"], "podName": obj["spec"]["podName"],
            "podIP": status["podIP"], "port": status["port"]}  # fmt: skip


def bound_sandboxes(
    kubectl: Kubectl, pods: list[dict[str, Any]], name: str, code: str, **function: Any
) -> list[dict[str, Any]]:
    for i, pod in enumerate(pods):
        bind(kubectl, f"{name}-{i}", pod, {"inline": {"main.py": code}},
             isolation="namespace", **function)  # fmt: skip
    return [running(kubectl, f"{name}-{i}") for i in range(len(pods))]


def test_invoke_spreads_over_ready_sandboxes_and_retries_unreachable_ones(
    kubectl: Kubectl,
    api: client.ApiClient,
    developer: Client,
    nest_pool: list[dict[str, Any]],
    without_operator: None,
) -> None:
    assert developer.create(**function("spread", replicas=0)).status_code == 201
    sandboxes = bound_sandboxes(kubectl, nest_pool, "spread", COUNTER, concurrency=4)
    # An address that refuses connections: a loopback IP no pod has, on a closed port.
    dead = {"sandbox": "gone", "uid": "gone-uid", "podName": "gone", "podIP": "127.0.0.254",
            "port": 9}  # fmt: skip
    write_endpoints(api, kubectl.namespace, "spread", [dead, *map(address, sandboxes)])
    wait_for(lambda: developer.invoke("spread", {"i": -1}).status_code == 200,
             what="the gateway to route to the hand-written endpoints")  # fmt: skip
    served = set()
    for i in range(20):
        resp = developer.invoke("spread", {"i": i})
        assert resp.status_code == 200, resp.text
        assert resp.json()["event"] == {"i": i}
        served.add(resp.json()["sandbox"])
    assert served == {f"{kubectl.namespace}/spread-0", f"{kubectl.namespace}/spread-1"}
    assert kubectl.json("get", "sbxd", "spread")["spec"]["replicas"] == 0, "no scale-up needed"


def test_http_trigger_passes_method_path_query_headers_and_body(
    kubectl: Kubectl,
    api: client.ApiClient,
    developer: Client,
    nest_pool: list[dict[str, Any]],
    without_operator: None,
) -> None:
    assert developer.create(**function("web", code=TRIGGER, replicas=0)).status_code == 201
    [sandbox] = bound_sandboxes(kubectl, nest_pool[:1], "web", TRIGGER)
    write_endpoints(api, kubectl.namespace, "web", [address(sandbox)])
    url = f"{developer.base}/fn/{kubectl.namespace}/web/items/42"

    def call() -> requests.Response | None:
        resp = developer.request("PUT", url, params={"q": "a b"}, data=b"payload",
                                 headers={"X-Test": "yes"})  # fmt: skip
        assert resp.status_code in (200, 503), resp.text  # 503 until the endpoints are seen
        return resp if resp.status_code == 200 else None

    body = wait_for(call, what="the HTTP trigger to answer").json()
    assert body == {"method": "PUT", "path": "/items/42", "query": {"q": "a b"}, "header": "yes",
                    "auth": None, "body": "payload"}  # fmt: skip


def test_held_requests_are_released_once_when_a_sandbox_turns_ready(
    kubectl: Kubectl,
    api: client.ApiClient,
    developer: Client,
    nest_pool: list[dict[str, Any]],
    without_operator: None,
) -> None:
    """Scale from zero with the test as the operator: every request answered exactly once.

    The test is the autoscaler too: it follows the gateway's demand stream, as the operator's
    does, and scales when a line says requests are held (the gateway itself never scales)."""
    spec = function("cold", autoscaling={"minReplicas": 0, "maxReplicas": 2}, concurrency=16)
    assert developer.create(**spec).status_code == 201
    demand_url = f"{developer.base}/v1/demand"
    stream = requests.get(demand_url, stream=True, timeout=30,
                          headers=signed_headers(demand_url, method="GET"))  # fmt: skip
    assert stream.status_code == 200, stream.text
    lines = stream.iter_lines()
    results: dict[int, requests.Response] = {}
    threads = [
        threading.Thread(
            target=lambda i=i: results.__setitem__(i, developer.invoke("cold", {"i": i}))
        )
        for i in range(8)
    ]
    for thread in threads:
        thread.start()
    # The activator reported the held demand at once; the gateway wrote no scale.
    held = {"namespace": kubectl.namespace, "name": "cold"}
    wait_for(lambda: any(held.items() <= e.items() for e in json.loads(next(lines))["held"]),
             what="the gateway's demand line for the held requests")  # fmt: skip
    stream.close()
    assert kubectl.json("get", "sbxd", "cold")["spec"]["replicas"] == 0
    kubectl.run("scale", "sbxd", "cold", "--replicas=1")  # the autoscaler's part
    metric = f'nest_gateway_queued{{function="cold",namespace="{kubectl.namespace}"}} 8.0'
    wait_for(lambda: metric in requests.get(f"{developer.base}/metrics", timeout=10).text,
             what="8 requests held by the activator")  # fmt: skip
    [sandbox] = bound_sandboxes(kubectl, nest_pool[:1], "cold", COUNTER, concurrency=16)
    write_endpoints(api, kubectl.namespace, "cold", [address(sandbox)])
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results) == list(range(8))
    bodies = [r.json() for r in results.values()]
    assert all(r.status_code == 200 for r in results.values()), [r.text for r in results.values()]
    assert sorted(b["event"]["i"] for b in bodies) == list(range(8))
    assert sorted(b["count"] for b in bodies) == list(range(1, 9)), "each ran exactly once"
    cold = f'nest_gateway_cold_starts_total{{function="cold",namespace="{kubectl.namespace}"}}'
    assert cold in requests.get(f"{developer.base}/metrics", timeout=10).text


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def small_gateway(kubeconfig: Path, nest_crds: list[str]) -> Iterator[Callable[[], str]]:
    """A gateway process with a 2-request queue and a 3 s activation timeout, auth off; it never
    reaches a runtime (its function never turns ready), so it holds no data-plane key."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--kubeconfig", str(kubeconfig), "--no-auth",
         "--insecure-dataplane",
         "--port", str(port), "--queue-size", "2", "--activation-timeout", "3"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        return requests.get(f"{base}/readyz", timeout=2).status_code == 200

    wait_for(ready, what="the local gateway to be ready")
    yield lambda: base
    proc.terminate()
    proc.wait(timeout=10)


def test_full_queue_is_503_and_a_long_wait_is_504(
    kubectl: Kubectl, small_gateway: Callable[[], str]
) -> None:
    """A function that never turns ready (its code does not import) under the activator."""
    gw = Client(small_gateway(), kubectl.namespace, None)
    broken = "import no_such_module_anywhere\ndef handler(e, c):\n    return 1\n"
    assert gw.create(**function("never", code=broken, autoscaling={"maxReplicas": 1})).ok
    results: list[requests.Response] = []
    threads = [threading.Thread(target=lambda: results.append(gw.invoke("never", {})))
               for _ in range(2)]  # fmt: skip
    for thread in threads:
        thread.start()
    metric = f'nest_gateway_queued{{function="never",namespace="{kubectl.namespace}"}} 2.0'
    wait_for(lambda: metric in requests.get(f"{gw.base}/metrics", timeout=10).text,
             what="2 requests held")  # fmt: skip
    assert_problem(gw.invoke("never", {}), 503, "already wait")
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == 2
    for resp in results:
        assert_problem(resp, 504, "became ready within 3s")
