"""The local node gives pods what a kubelet + runc give them: PID namespaces and securityContext.

Pods are created on the real API server, scheduled onto `nest-local` and run by the runner; what
each container saw is read back from its log (`nest cluster logs`). Waits are deadlines on state.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from nest_cluster.runner.security import CAPABILITIES, DEFAULT_CAPABILITIES, mask
from tests.integration.test_local_node import _create, _logs, _phase, _pod, _status
from tests.kube import wait_for

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("NEST_KUBECONFIG")), reason="needs the local node of `nest cluster up`"
)
# A program every uid may run: the venv's interpreter lives under /root (0700).
PY = "/usr/bin/python3"
MNT = "/var/run/nest-test"  # mount points are made on the host's root: keep them in one place
STATUS = ["grep", "-E", "^(Uid|Gid|Groups|Cap[A-Za-z]+|NoNewPrivs):", "/proc/self/status"]


def _run(api: client.ApiClient, namespace: str, name: str, spec: dict[str, Any]) -> str:
    """Run a pod to completion; its (only, or `main`) container's log."""
    _create(api, namespace, name, {"restartPolicy": "Never", **spec})
    pod = _phase(api, namespace, name, "Succeeded")
    container = spec["containers"][-1]["name"]
    assert _status(pod, container)["state"]["terminated"]["exitCode"] == 0
    return _logs(namespace, f"{name}/{container}")


def _status_lines(log: str) -> dict[str, str]:
    pairs = [line.split(":", 1) for line in log.splitlines() if ":" in line]
    return {k.strip(): v.strip() for k, v in pairs}


def _shared(share: bool) -> dict[str, Any]:
    """Container `a` runs a marked process; `b` waits until it runs, then counts what it sees."""
    ready = f"{MNT}/shared/a-running"
    a = (
        "import pathlib, time  # nest-pid-marker\n"
        f"pathlib.Path({ready!r}).write_text('1')\n"
        "time.sleep(600)\n"
    )
    b = (
        "import os, pathlib, time\n"
        f"while not pathlib.Path({ready!r}).exists(): time.sleep(0.05)\n"
        "seen = [p for p in os.listdir('/proc') if p.isdigit() and int(p) != os.getpid()\n"
        "        and b'nest-pid-marker' in open(f'/proc/{p}/cmdline', 'rb').read()]\n"
        "print('pid', os.getpid(), 'sees', len(seen), flush=True)\n"
    )
    mount = [{"name": "shared", "mountPath": f"{MNT}/shared"}]
    return {
        "shareProcessNamespace": share,
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 1,
        "volumes": [{"name": "shared", "emptyDir": {}}],
        "containers": [
            {"name": "a", "image": "x", "command": [PY, "-c", a], "volumeMounts": mount},
            {"name": "b", "image": "x", "command": [PY, "-c", b], "volumeMounts": mount},
        ],
    }


def _b_log(api: client.ApiClient, namespace: str, name: str) -> str:
    def done() -> str | None:
        state = _status(_pod(api, namespace, name), "b")["state"].get("terminated")
        return _logs(namespace, f"{name}/b") if state else None

    return wait_for(done, timeout=60, what=f"container b of {name} done")


def test_containers_of_a_pod_cannot_see_each_others_processes(
    api: client.ApiClient, namespace: str
) -> None:
    _create(api, namespace, "apart", _shared(share=False))
    assert _b_log(api, namespace, "apart").split() == ["pid", "1", "sees", "0"]


def test_with_share_process_namespace_they_can(api: client.ApiClient, namespace: str) -> None:
    _create(api, namespace, "together", _shared(share=True))
    words = _b_log(api, namespace, "together").split()
    assert words[2:] == ["sees", "1"]
    assert words[1] != "1"  # PID 1 is the pod's pause process, as with a kubelet


def test_run_as_user_group_and_supplemental_groups(api: client.ApiClient, namespace: str) -> None:
    pod_sc = {"runAsUser": 1000, "runAsGroup": 3000, "supplementalGroups": [4000], "fsGroup": 2000}
    container = {"name": "main", "image": "x", "command": STATUS,
                 "securityContext": {"runAsUser": 1234}}  # fmt: skip
    status = _status_lines(_run(api, namespace, "who", {"securityContext": pod_sc,
                                                       "containers": [container]}))  # fmt: skip
    assert status["Uid"].split() == ["1234"] * 4  # the container's runAsUser wins
    assert status["Gid"].split() == ["3000"] * 4
    assert set(status["Groups"].split()) == {"2000", "4000"}


def test_capabilities_match_the_security_context(api: client.ApiClient, namespace: str) -> None:
    containers = [
        {"name": "default", "image": "x", "command": STATUS},
        {"name": "bind-only", "image": "x", "command": STATUS, "securityContext": {
            "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}},
        {"name": "nonroot", "image": "x", "command": STATUS,
         "securityContext": {"runAsUser": 1000}},
        {"name": "privileged", "image": "x", "command": STATUS,
         "securityContext": {"privileged": True}},
        {"name": "main", "image": "x", "command": STATUS,
         "securityContext": {"capabilities": {"drop": ["NET_RAW"], "add": ["SYS_PTRACE"]}}},
    ]  # fmt: skip
    last = _status_lines(_run(api, namespace, "caps", {"containers": containers}))
    seen = {c["name"]: _status_lines(_logs(namespace, f"caps/{c['name']}")) for c in containers}
    assert seen["main"] == last
    default = mask(DEFAULT_CAPABILITIES)
    assert int(seen["default"]["CapEff"], 16) == default == 0xA80425FB
    assert int(seen["default"]["CapBnd"], 16) == default
    bind = 1 << CAPABILITIES["NET_BIND_SERVICE"]
    assert int(seen["bind-only"]["CapEff"], 16) == bind == int(seen["bind-only"]["CapBnd"], 16)
    # A non-root user keeps the bounding set but has no effective capabilities.
    assert int(seen["nonroot"]["CapEff"], 16) == 0
    assert int(seen["nonroot"]["CapBnd"], 16) == default
    # Privileged: every capability the node itself has.
    own = _status_lines(Path("/proc/self/status").read_text())
    assert int(seen["privileged"]["CapEff"], 16) == int(own["CapBnd"], 16)
    changed = default & ~(1 << CAPABILITIES["NET_RAW"]) | (1 << CAPABILITIES["SYS_PTRACE"])
    assert int(seen["main"]["CapEff"], 16) == changed
    assert all(int(s["CapInh"], 16) == 0 for s in seen.values())


def test_no_new_privs_when_privilege_escalation_is_disallowed(
    api: client.ApiClient, namespace: str
) -> None:
    containers = [
        {"name": "default", "image": "x", "command": STATUS},
        {"name": "main", "image": "x", "command": STATUS,
         "securityContext": {"allowPrivilegeEscalation": False}},
    ]  # fmt: skip
    assert (
        _status_lines(_run(api, namespace, "nnp", {"containers": containers}))["NoNewPrivs"] == "1"
    )
    assert _status_lines(_logs(namespace, "nnp/default"))["NoNewPrivs"] == "0"


def test_a_read_only_root_filesystem_refuses_writes(api: client.ApiClient, namespace: str) -> None:
    script = (
        "if touch /nest-read-only-probe 2>/dev/null || touch /etc/nest-ro-probe 2>/dev/null; then"
        " echo root-writable; else echo root-read-only; fi;"
        f" echo ok > {MNT}/scratch/f && cat {MNT}/scratch/f"
    )
    container = {
        "name": "main", "image": "x", "command": ["sh", "-c", script],
        "securityContext": {"readOnlyRootFilesystem": True},
        "volumeMounts": [{"name": "scratch", "mountPath": f"{MNT}/scratch"}],
    }  # fmt: skip
    spec = {"volumes": [{"name": "scratch", "emptyDir": {}}], "containers": [container]}
    assert _run(api, namespace, "ro", spec).split() == ["root-read-only", "ok"]
    assert not os.path.exists("/nest-read-only-probe")


def test_run_as_non_root_refuses_a_root_container(api: client.ApiClient, namespace: str) -> None:
    container = {"name": "main", "image": "x", "command": ["true"]}
    spec = {"securityContext": {"runAsNonRoot": True}, "containers": [container]}
    _create(api, namespace, "rooted", spec)

    def refused() -> dict[str, Any] | None:
        pod = _pod(api, namespace, "rooted")
        waiting = _status(pod, "main")["state"].get("waiting") or {}
        return waiting if waiting.get("reason") == "CreateContainerConfigError" else None

    waiting = wait_for(refused, timeout=60, what="CreateContainerConfigError")
    uid = _pod(api, namespace, "rooted")["metadata"]["uid"]
    assert waiting["message"] == (
        f'container has runAsNonRoot and image will run as root (pod: "rooted_{namespace}({uid})",'
        " container: main)"
    )
    assert _pod(api, namespace, "rooted")["status"]["phase"] == "Pending"


def test_exec_probes_run_inside_the_container(api: client.ApiClient, namespace: str) -> None:
    # The file exists only in the container's own mount of the volume, and the probe must also
    # run as the container's user, in its PID namespace (PID 1 is the program).
    probe = f"{PY} -c \"import os; assert os.getuid() == 1234; open('{MNT}/probe/ready')\""
    script = f"import pathlib, time; pathlib.Path('{MNT}/probe/ready').touch(); time.sleep(600)"
    container = {
        "name": "main", "image": "x", "command": [PY, "-c", script],
        "securityContext": {"runAsUser": 1234},
        "volumeMounts": [{"name": "probe", "mountPath": f"{MNT}/probe"}],
        "readinessProbe": {"exec": {"command": ["sh", "-c", probe]}, "periodSeconds": 1},
    }  # fmt: skip
    spec = {
        "terminationGracePeriodSeconds": 1,
        "volumes": [{"name": "probe", "emptyDir": {}}],
        "containers": [container],
    }
    _create(api, namespace, "probed", spec)
    wait_for(lambda: _status(_pod(api, namespace, "probed"), "main")["ready"], timeout=60,
             what="exec readiness probe passing")  # fmt: skip
