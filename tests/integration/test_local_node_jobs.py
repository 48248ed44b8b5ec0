"""Build-style Jobs on the local node: non-root, token-less, reporting through termination messages.

The operator's build Job (docs: /work/notes/build-contract.md) runs `nest-build` as uid 65532 with
no capabilities and no API rights; its only way back is the termination message, which the
operator reads from the pod's status. These tests run Jobs of exactly that shape (the program is
"the image's" python, as `image: nest:latest` resolves on this node) through the real Job
controller and scheduler, and read what the kubelet's rules put in the pod's status: the file at
terminationMessagePath, or with FallbackToLogsOnError the tail of the log of a failed container.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import pytest
from kubernetes import client

from tests.integration.test_local_node import _create, _logs, _phase, _pod, _status
from tests.kube import wait_for

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("NEST_KUBECONFIG")), reason="needs the local node of `nest cluster up`"
)
LIMITS = {"cpu": "1", "memory": "1Gi"}
SCRATCH = "/var/lib/nest/tmp"  # the build Job's emptyDir (operator/build_logic.py)
RESULT = '{"ref": "127.0.0.1:5000/nest/ns@sha256:' + "ab" * 32 + '", "natives": []}'
# Reads the pull secret's config and writes into its scratch emptyDir, as nest-build does.
BUILD = """
import json, os, sys
print("uid", os.getuid(), "gid", os.getgid(), "home", os.environ["HOME"], flush=True)
auths = json.load(open(os.path.join(os.environ["DOCKER_CONFIG"], "config.json")))["auths"]
open(os.path.join(os.environ["HOME"], "work"), "w").write("scratch")
print("registries", sorted(auths), flush=True)
for step in range(100):
    print("step", step, flush=True)
mode, message = sys.argv[1], sys.argv[2]
if message:
    with open("/dev/termination-log", "w") as f:
        f.write(message)
sys.exit(0 if mode == "ok" else 1)
"""


def _job(name: str, policy: str, mode: str, message: str) -> dict[str, Any]:
    container = {
        "name": "build",
        "image": "nest:latest",
        "command": ["python", "-c", BUILD],
        "args": [mode, message],
        "env": [{"name": "HOME", "value": SCRATCH}, {"name": "DOCKER_CONFIG", "value": "/docker"}],
        "terminationMessagePolicy": policy,
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": LIMITS},
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [
            {"name": "tmp", "mountPath": SCRATCH},
            {"name": "pull", "mountPath": "/docker", "readOnly": True},
        ],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"nest.sandbox.dev/build": name}},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": 300,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 65532},
                    "containers": [container],
                    "volumes": [
                        {"name": "tmp", "emptyDir": {}},
                        {"name": "pull", "secret": {"secretName": "pull"}},
                    ],
                }
            },
        },
    }


def _pull_secret(api: client.ApiClient, namespace: str) -> None:
    config = json.dumps({"auths": {"127.0.0.1:5000": {"auth": "dTpw"}}}).encode()
    secret = client.V1Secret(
        metadata=client.V1ObjectMeta(name="pull"),
        data={"config.json": base64.b64encode(config).decode()},
    )
    client.CoreV1Api(api).create_namespaced_secret(namespace, secret)


def _read(call: Any, *args: str, **kwargs: str) -> Any:
    """An API read as plain JSON (the typed models hide what the server sent)."""
    return json.loads(call(*args, _preload_content=False, **kwargs).data)


def _finished(api: client.ApiClient, namespace: str, name: str) -> str:
    """The Job's final condition type (Complete or Failed), once the controller set it."""

    def done() -> str | None:
        job = _read(client.BatchV1Api(api).read_namespaced_job_status, name, namespace)
        for condition in job.get("status", {}).get("conditions") or []:
            if condition["type"] in ("Complete", "Failed") and condition["status"] == "True":
                return str(condition["type"])
        return None

    return wait_for(done, timeout=120, what=f"job {name} finished")


def _job_pod(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    core = client.CoreV1Api(api)
    (pod,) = _read(core.list_namespaced_pod, namespace, label_selector=f"job-name={name}")["items"]
    return _pod(api, namespace, pod["metadata"]["name"])


def _run_job(api: client.ApiClient, namespace: str, job: dict[str, Any]) -> tuple[str, Any]:
    name = job["metadata"]["name"]
    client.BatchV1Api(api).create_namespaced_job(namespace, job)  # type: ignore[arg-type]
    outcome = _finished(api, namespace, name)
    pod = _job_pod(api, namespace, name)
    return outcome, _status(pod, "build")


@pytest.mark.parametrize(
    ("policy", "mode", "message", "outcome", "exit_code", "reported"),
    [
        # Success: the built ref, as nest-build writes it (the operator's policy is the fallback).
        ("FallbackToLogsOnError", "ok", RESULT, "Complete", 0, RESULT),
        # Failure with a message of its own: the file wins over the log.
        ("FallbackToLogsOnError", "fail", "no wheel for numpy==1.0", "Failed", 1,
         "no wheel for numpy==1.0"),
        # Failure without one: the last 80 of its 102 log lines (steps 20 to 99).
        ("FallbackToLogsOnError", "fail", "", "Failed", 1,
         "\n".join(f"step {i}" for i in range(20, 100)) + "\n"),
        ("File", "fail", "no wheel for numpy==1.0", "Failed", 1, "no wheel for numpy==1.0"),
        ("File", "ok", RESULT, "Complete", 0, RESULT),
        # File never falls back: nothing written, no message.
        ("File", "fail", "", "Failed", 1, None),
    ],
)  # fmt: skip
def test_a_non_root_build_job_reports_through_its_termination_message(
    api: client.ApiClient,
    namespace: str,
    policy: str,
    mode: str,
    message: str,
    outcome: str,
    exit_code: int,
    reported: str | None,
) -> None:
    _pull_secret(api, namespace)
    result, status = _run_job(api, namespace, _job("build", policy, mode, message))
    assert result == outcome
    terminated = status["state"]["terminated"]
    assert terminated["exitCode"] == exit_code
    assert terminated["reason"] == ("Completed" if exit_code == 0 else "Error")
    assert terminated.get("message") == reported


def test_the_build_job_ran_as_its_user_with_its_volumes(
    api: client.ApiClient, namespace: str
) -> None:
    """What the build relies on besides the message: its uid, HOME, the pull secret, scratch."""
    _pull_secret(api, namespace)
    job = _job("whoami", "FallbackToLogsOnError", "fail", "")
    assert _run_job(api, namespace, job)[0] == "Failed"
    pod = _job_pod(api, namespace, "whoami")
    log = _logs(namespace, pod["metadata"]["name"])
    assert log.splitlines()[:2] == [
        f"uid 65532 gid 0 home {SCRATCH}", "registries ['127.0.0.1:5000']",
    ]  # fmt: skip


RESTARTS = """
import pathlib, sys
runs = pathlib.Path("/var/run/nest-test/work/runs")
n = len(runs.read_text()) if runs.exists() else 0
runs.write_text("x" * (n + 1))
open("/dev/termination-log", "w").write(f"attempt {n}")
sys.exit(1 if n == 0 else 0)
"""


def test_a_restarted_container_keeps_the_previous_message_in_last_state(
    api: client.ApiClient, namespace: str
) -> None:
    """Each instance has a file of its own: the first one's message stays in lastState."""
    spec = {
        "restartPolicy": "OnFailure",
        "volumes": [{"name": "work", "emptyDir": {}}],
        "containers": [{
            "name": "c", "image": "nest:latest", "command": ["python", "-c", RESTARTS],
            "volumeMounts": [{"name": "work", "mountPath": "/var/run/nest-test/work"}],
        }],
    }  # fmt: skip
    _create(api, namespace, "twice", spec)
    status = _status(_phase(api, namespace, "twice", "Succeeded"), "c")
    assert status["restartCount"] == 1
    assert status["state"]["terminated"]["message"] == "attempt 1"
    assert status["lastState"]["terminated"]["message"] == "attempt 0"
    assert status["lastState"]["terminated"]["exitCode"] == 1
