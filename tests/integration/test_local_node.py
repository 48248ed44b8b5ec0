"""The local node's process runner, end to end against the real control plane.

Every pod here is scheduled by the real kube-scheduler onto `nest-local` and run by the runner as
local processes; assertions read what the runner reported through the API server (or, for logs,
what `nest cluster logs` prints). Waits are deadlines on observable state, never sleeps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.kube import Kubectl, wait_for

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("NEST_KUBECONFIG")), reason="needs the local node of `nest cluster up`"
)
PY = sys.executable  # has the kubernetes client, for the in-cluster test


def _pod(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    resp: Any = client.CoreV1Api(api).read_namespaced_pod(name, namespace, _preload_content=False)
    pod: dict[str, Any] = json.loads(resp.data)
    return pod


def _create(api: client.ApiClient, namespace: str, name: str, spec: dict[str, Any]) -> None:
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}

    def create() -> bool:
        # A fresh namespace's ServiceAccount may not have its token yet: admission says retry.
        try:
            client.CoreV1Api(api).create_namespaced_pod(namespace, body)
        except ApiException as err:
            if err.status != 409:
                raise
        return True

    wait_for(create, timeout=30, what=f"pod {name} created")


def _phase(api: client.ApiClient, namespace: str, name: str, phase: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        pod = _pod(api, namespace, name)
        return pod if pod.get("status", {}).get("phase") == phase else None

    return wait_for(probe, timeout=60, what=f"pod {name} {phase}")


def _status(pod: dict[str, Any], container: str) -> dict[str, Any]:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    return next(s for s in statuses if s["name"] == container)


def _logs(namespace: str, ref: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "nest", "cluster", "logs", f"{namespace}/{ref}"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def _gone(api: client.ApiClient, namespace: str, name: str) -> bool:
    try:
        _pod(api, namespace, name)
    except ApiException as err:
        return err.status == 404
    return False


WEB = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: python:3.11
        command: ["python3", "-m", "http.server", "--bind", "$(POD_IP)", "8080"]
        env:
        - name: POD_IP
          valueFrom: {fieldRef: {fieldPath: status.podIP}}
        ports: [{name: http, containerPort: 8080}]
        readinessProbe:
          httpGet: {path: /, port: http}
          periodSeconds: 1
"""


def _web_pod(kubectl: Kubectl) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        items = kubectl.json("get", "pods", "-l", "app=web")["items"]
        return items[0] if items and items[0]["status"].get("podIP") else None

    return wait_for(probe, timeout=60, what="a web pod with an IP")


def test_deployment_pod_runs_ready_and_is_available(kubectl: Kubectl) -> None:
    kubectl.apply(WEB)
    wait_for(
        lambda: kubectl.json("get", "deployment", "web")["status"].get("availableReplicas") == 1,
        timeout=60,
        what="deployment web available",
    )
    pod = _web_pod(kubectl)
    ip = pod["status"]["podIP"]
    assert ip.startswith("127.") and ip != "127.0.0.1"
    assert pod["status"]["phase"] == "Running"
    ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert ready["Ready"] == "True" and ready["ContainersReady"] == "True"
    web = _status(pod, "web")
    assert web["ready"] and web["containerID"].startswith("nest://")
    # The server really listens on the pod's own loopback address.
    with urllib.request.urlopen(f"http://{ip}:8080/", timeout=5) as resp:
        assert resp.status == 200


def test_deleting_the_deployment_collects_replicaset_and_pods(kubectl: Kubectl) -> None:
    kubectl.apply(WEB)
    pod = _web_pod(kubectl)
    pid = int(wait_for(lambda: _status(_web_pod(kubectl), "web").get("containerID"),
                       what="web container started").removeprefix("nest://"))  # fmt: skip
    kubectl.run("delete", "deployment", "web", "--cascade=background", "--wait=false")
    wait_for(
        lambda: not kubectl.json("get", "replicasets,pods", "-l", "app=web")["items"],
        timeout=60,
        what="replica set and pods collected",
    )
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_downward_api_env_and_logs(api: client.ApiClient, namespace: str) -> None:
    script = (
        'echo "name=$POD_NAME ns=$POD_NAMESPACE ip=$POD_IP uid=$POD_UID";'
        ' echo "expanded=$(POD_NAME) api=$KUBERNETES_SERVICE_HOST"'
    )
    fields = {
        "POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace",
        "POD_IP": "status.podIP", "POD_UID": "metadata.uid",
    }  # fmt: skip
    env = [{"name": k, "valueFrom": {"fieldRef": {"fieldPath": v}}} for k, v in fields.items()]
    container = {"name": "main", "image": "busybox", "command": ["sh", "-c", script], "env": env}
    _create(api, namespace, "envy", {"restartPolicy": "Never", "containers": [container]})
    pod = _phase(api, namespace, "envy", "Succeeded")
    ip, uid = pod["status"]["podIP"], pod["metadata"]["uid"]
    assert _status(pod, "main")["state"]["terminated"]["reason"] == "Completed"
    assert _logs(namespace, "envy").splitlines() == [
        f"name=envy ns={namespace} ip={ip} uid={uid}",
        "expanded=envy api=127.0.0.1",
    ]


def test_two_containers_share_an_empty_dir(api: client.ApiClient, namespace: str) -> None:
    token = uuid.uuid4().hex
    mount = [{"name": "shared", "mountPath": "/var/run/nest"}]
    path = f"/var/run/nest/{token}"
    writer = f"echo {token} > {path}.tmp && mv {path}.tmp {path}"
    reader = f"while [ ! -f {path} ]; do sleep 0.1; done; cat {path}"
    spec = {
        "restartPolicy": "Never",
        "volumes": [{"name": "shared", "emptyDir": {}}],
        "containers": [
            {
                "name": "writer",
                "image": "x",
                "command": ["sh", "-c", writer],
                "volumeMounts": mount,
            },
            {
                "name": "reader",
                "image": "x",
                "command": ["sh", "-c", reader],
                "volumeMounts": mount,
            },
        ],
    }
    _create(api, namespace, "pair", spec)
    _phase(api, namespace, "pair", "Succeeded")
    assert _logs(namespace, "pair/reader").strip() == token
    # The mount lives in the containers' own mount namespaces, not on the host.
    assert not Path(path).exists()


def test_crashing_container_restarts_with_back_off(api: client.ApiClient, namespace: str) -> None:
    container = {"name": "crash", "image": "x", "command": ["sh", "-c", "echo boom; exit 3"]}
    _create(api, namespace, "crashy", {"containers": [container]})

    def crash_looping() -> dict[str, Any] | None:
        status = _status(_pod(api, namespace, "crashy"), "crash")
        waiting = status["state"].get("waiting") or {}
        looping = status["restartCount"] >= 2 and waiting.get("reason") == "CrashLoopBackOff"
        return status if looping else None

    status = wait_for(crash_looping, timeout=60, what="crash loop with restarts")
    assert status["lastState"]["terminated"]["exitCode"] == 3
    assert not status["ready"]
    assert "boom" in _logs(namespace, "crashy")


def test_unrunnable_commands_get_a_clear_reason(api: client.ApiClient, namespace: str) -> None:
    missing = "/nonexistent/nest-no-such-binary"
    spec = {
        "restartPolicy": "Never",
        "containers": [
            {"name": "missing", "image": "x", "command": [missing]},
            {"name": "entrypoint", "image": "some/image:1"},
        ],
    }
    _create(api, namespace, "broken", spec)
    pod = _phase(api, namespace, "broken", "Failed")
    for name, needle in (("missing", missing), ("entrypoint", "command")):
        terminated = _status(pod, name)["state"]["terminated"]
        assert terminated["reason"] == "RunContainerError"
        assert needle in terminated["message"]


def test_deleting_a_pod_sigterms_its_process(
    api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    marker = tmp_path / "signal"
    program = (
        "import signal, sys, time\n"
        "def term(*_):\n"
        f"    open({str(marker)!r}, 'w').write('TERM')\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, term)\n"
        "print('waiting', flush=True)\n"
        "while True: signal.pause()\n"
    )
    container = {"name": "main", "image": "x", "command": [PY, "-c", program]}
    _create(api, namespace, "victim", {"containers": [container]})
    pod = _phase(api, namespace, "victim", "Running")
    pid = int(_status(pod, "main")["containerID"].removeprefix("nest://"))
    assert psutil.pid_exists(pid)
    # Running means exec'd; the handler is in place only once the program says so.
    wait_for(lambda: "waiting" in _logs(namespace, "victim"), what="SIGTERM handler installed")
    client.CoreV1Api(api).delete_namespaced_pod("victim", namespace)
    wait_for(lambda: _gone(api, namespace, "victim"), timeout=60, what="pod object gone")
    assert marker.read_text() == "TERM"
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_in_cluster_config_reaches_the_api_server(
    api: client.ApiClient, kubectl: Kubectl, namespace: str
) -> None:
    kubectl.run(
        "create", "rolebinding", "default-view", "--clusterrole=view",
        f"--serviceaccount={namespace}:default",
    )  # fmt: skip
    program = (
        "from kubernetes import client, config\n"
        "config.load_incluster_config()\n"
        "ns = open('/var/run/secrets/kubernetes.io/serviceaccount/namespace').read()\n"
        "pods = client.CoreV1Api().list_namespaced_pod(ns).items\n"
        "print('pods:', ' '.join(p.metadata.name for p in pods))\n"
    )
    container = {"name": "main", "image": "x", "command": [PY, "-c", program]}
    _create(api, namespace, "insider", {"restartPolicy": "Never", "containers": [container]})
    _phase(api, namespace, "insider", "Succeeded")
    assert _logs(namespace, "insider").strip() == "pods: insider"
