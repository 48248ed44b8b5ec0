"""The pool pod's doors on the real cluster: a signed-only data plane, an owner-only control
socket, and no ServiceAccount token where tenants' code runs.

A function is deployed through the gateway (as a platform would) and made ready by the operator;
then its runtime is called directly, as a co-located attacker or any pod of the cluster could:
without a signature, with a wrong key, or with a genuine signature lifted onto another request.
Only the gateway's path answers. The socket and token checks look at the runtime and sidecar
processes of the local node (each pod is processes on this host) through /proc/<pid>/root, so
they see each container's own mounts; on another cluster they are skipped.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from sandbox import dataplane_auth as auth
from tests.dataplane import cluster_keys, signed_headers
from tests.integration.test_gateway import (  # noqa: F401 - fixtures used by name
    Client,
    developer,
    function,
    gateway_url,
    operator_active,
)
from tests.kube import Kubectl, wait_for

TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
ECHO = "def handler(event, context):\n    return {'event': event}\n"


@pytest.fixture(autouse=True)
def with_operator(operator_active: bool) -> None:  # noqa: F811
    if not operator_active:
        pytest.skip("needs the operator (deploy/operator/) to make the function ready")


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    """(status, JSON body, headers) of a POST; never raises for an HTTP error status."""
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read()), resp.headers
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null"), err.headers


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def ready_address(developer: Client, name: str) -> dict[str, Any]:  # noqa: F811
    def ready() -> dict[str, Any] | None:
        found = developer.request("GET", developer.fn(f"/{name}/endpoints")).json()
        addresses: list[dict[str, Any]] = found["status"].get("ready") or []
        return addresses[0] if addresses else None

    return wait_for(ready, timeout=120, what=f"a ready sandbox of {name}")


def assert_refused(answer: tuple[int, Any, Any], words: str) -> None:
    status, body, headers = answer
    assert status == 401, body
    assert body["error"] == "Unauthorized" and words in body["message"], body
    assert headers["WWW-Authenticate"] == auth.CHALLENGE


def test_only_signed_requests_reach_a_sandbox_and_the_gateway_path_works(
    developer: Client,  # noqa: F811
) -> None:
    assert developer.create(**function("victim", ECHO, replicas=1)).status_code == 201
    address = ready_address(developer, "victim")
    base = f"http://{address['podIP']}:{address['port']}"
    url = f"{base}/v1/sandboxes/{address['uid']}/invoke"
    event = b'{"card": "4111 1111 1111 1111"}'

    assert_refused(post(url, event), "missing X-Nest-Signature")
    stranger = auth.KeyRing({"current": auth.new_key()})
    forged = stranger.headers("POST", f"/v1/sandboxes/{address['uid']}/invoke", event)
    assert_refused(post(url, event, forged), "unknown key")
    # A genuine signature, lifted onto another event or another route of the same sandbox.
    genuine = signed_headers(url, event)
    assert_refused(post(url, b'{"card": "x"}', genuine), "bad signature")
    trigger = f"{base}/v1/sandboxes/{address['uid']}/http/admin"
    assert_refused(post(trigger, event, genuine), "bad signature")
    status, text = get(f"{base}/metrics")
    assert status == 401 and address["uid"] not in text  # the listing of every sandbox

    # The gateway's path, and a correctly signed direct call, both answer.
    through = developer.invoke("victim", {"via": "gateway"})
    assert through.status_code == 200, through.text
    assert through.json() == {"event": {"via": "gateway"}}
    status, body, _ = post(url, event, genuine)
    assert (status, body) == (200, {"event": {"card": "4111 1111 1111 1111"}})
    metrics = cluster_keys().headers("GET", "/metrics")
    status, text = get(f"{base}/metrics", metrics)
    assert status == 200 and f'sandbox="{address["uid"]}"' in text
    assert get(f"{base}/healthz") == (200, "ok")  # probes stay open


def listening(ip: str, port: int) -> psutil.Process | None:
    """The process of the local node that listens on ip:port (a container's main process)."""
    for conn in psutil.net_connections(kind="tcp"):
        here = (conn.laddr.ip, conn.laddr.port) if conn.laddr else None
        if conn.status == psutil.CONN_LISTEN and conn.pid and here == (ip, port):
            return psutil.Process(conn.pid)
    return None


@pytest.fixture
def containers(nest_pool: list[dict[str, Any]]) -> tuple[psutil.Process, psutil.Process]:
    """The runtime and sidecar processes of the first pool pod, on this host."""
    ip = nest_pool[0]["status"]["podIP"]
    runtime, sidecar = listening(ip, 8080), listening(ip, 8081)
    if runtime is None or sidecar is None:
        pytest.skip(f"pool pod {ip} does not run on this host (not the local cluster)")
    return runtime, sidecar


def in_container(process: psutil.Process, path: str) -> Path:
    """`path` as the container sees it, through /proc/<pid>/root (its own mounts). Symlinks are
    followed inside that root: the kernel would resolve an absolute target (/var/run -> /run)
    against ours, not the container's."""
    root = Path(f"/proc/{process.pid}/root")
    here = root
    parts = list(Path(path.lstrip("/")).parts)
    for _ in range(40):  # bounded, like the kernel's symlink limit
        if not parts:
            return here
        here = here / parts.pop(0)
        if here.is_symlink():
            target = os.readlink(here)
            parts = [*Path(target.lstrip("/")).parts, *parts]
            here = root if target.startswith("/") else here.parent
    raise AssertionError(f"too many symlinks resolving {path} in pid {process.pid}")


def test_the_control_socket_is_the_runtime_users_alone(
    containers: tuple[psutil.Process, psutil.Process],
) -> None:
    runtime, sidecar = containers
    socket = in_container(runtime, "/var/run/nest/runtime.sock")
    info = os.stat(socket)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(socket.parent).st_mode) == 0o700
    assert info.st_uid == runtime.uids().effective == sidecar.uids().effective


def test_the_runtime_container_has_no_service_account_token(
    containers: tuple[psutil.Process, psutil.Process], nest_pool: list[dict[str, Any]]
) -> None:
    runtime, sidecar = containers
    assert nest_pool[0]["spec"]["automountServiceAccountToken"] is False
    assert not in_container(runtime, TOKEN).exists()
    assert not [k for k in runtime.environ() if "TOKEN" in k.upper()]
    # The sidecar, and only it, has one: projected and expiring (a legacy Secret token has no
    # `exp`), and bound to its pod where the node binds tokens (a kubelet always does).
    token = in_container(sidecar, TOKEN).read_text()
    claims = json.loads(jwt_payload(token))
    assert claims["exp"] - claims["iat"] <= 3600
    assert claims["sub"] == "system:serviceaccount:nest-system:nest-sidecar"
    bound = claims["kubernetes.io"].get("pod")
    assert bound is None or bound["name"] == nest_pool[0]["metadata"]["name"]


def jwt_payload(jwt: str) -> bytes:
    payload = jwt.split(".")[1]
    return base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))


def test_the_key_secret_is_what_the_runtimes_and_gateway_mount(kubectl: Kubectl) -> None:
    secret = kubectl.json("--namespace=nest-system", "get", "secret", auth.SECRET_NAME)
    assert set(secret["data"]) >= {auth.SIGNING_NAME}
    ring = auth.from_secret_data(secret["data"])
    assert ring.signing_id == cluster_keys().signing_id
