"""The faults of the chaos harness, and the host-side facts it checks (processes, orphans).

Why a module of its own: bench.chaos decides what to measure and when a fault is over; this one
knows how each fault is done to the local cluster (every pod is processes on this host, found by
the HOSTNAME the process runner gives each container; the control plane's processes are in its
ProcessTable) and how to tell a sandbox process from the Sandbox it belongs to (its cgroup,
`sbx-<Sandbox uid>`, from isolation.principals). A fault is a plain object: `inject` does it and
returns a probe saying whether its effect has been seen and undone (the container restarted, the
pod replaced, the API server answering again), so convergence is never declared before the fault
has even been noticed.

The API server and etcd are held down with SIGSTOP, not killed: the supervisor restarts a dead
one at once, but a stopped process is alive to it, and its port stops answering as a hung
server's would. The hold runs in a detached helper process that sends SIGCONT after the hold
whatever happens to the benchmark, so a crash here never leaves the shared cluster frozen.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from kubernetes import client

SYSTEM = "nest-system"
POOL_SELECTOR = "app.kubernetes.io/name=nest-pool"
OPERATOR_SELECTOR = "app.kubernetes.io/name=nest-operator"
GATEWAY_SELECTOR = "app.kubernetes.io/name=nest-gateway"
TIMEOUT = 5  # every API call: a stopped API server must not hang the harness
SANDBOX_CGROUP = re.compile(r"/sbx-([0-9a-f-]{36})\b")
HOLD_SECONDS = 20.0

Probe = Callable[[], bool]


def container_process(pod: str, command: str) -> psutil.Process | None:
    """The main process of one container of `pod` on this host: its HOSTNAME is the pod name,
    its program is `command` (nest-runtime, nest-sidecar, ...) and its parent is the runner's
    shim (the runtime's zygote and sandboxes share the HOSTNAME, not the parent)."""
    for proc in psutil.process_iter(["cmdline", "ppid"]):
        cmdline = proc.info.get("cmdline") or []
        if len(cmdline) < 2 or Path(cmdline[1]).name != command:
            continue
        try:
            if proc.environ().get("HOSTNAME") != pod:
                continue
            parent = psutil.Process(proc.info["ppid"])
            if any("shim.py" in part for part in parent.cmdline()):
                return proc
        except (psutil.Error, OSError):
            continue
    return None


def node_key(state: Path | None = None) -> str | None:
    """The cgroup directory name of a local cluster's node (the default cluster's without
    `state`), which every cgroup of its pods' processes passes through; None for a cluster that
    is not local (NEST_KUBECONFIG): its processes are not on this host."""
    if state is None and os.environ.get("NEST_KUBECONFIG"):
        return None
    from nest_cluster.control_plane import NODE_NAME
    from nest_cluster.paths import ClusterPaths
    from nest_cluster.runner.cgroups import node_key as key

    paths = ClusterPaths(ClusterPaths.default().cache, state) if state else ClusterPaths.default()
    return str(key(NODE_NAME, str(paths.state / "node")))


def sandbox_processes(node: str | None = None) -> dict[int, str]:
    """pid -> Sandbox uid of every live sandbox process on this host (by its cgroup); with
    `node` (`node_key`), only those of that local cluster's node: two local clusters (a test's
    private one beside the shared one) must not take each other's sandboxes for orphans."""
    found: dict[int, str] = {}
    for proc in psutil.process_iter(["status"]):
        if proc.info.get("status") == psutil.STATUS_ZOMBIE:
            continue
        try:
            text = Path(f"/proc/{proc.pid}/cgroup").read_text()
        except OSError:
            continue
        match = SANDBOX_CGROUP.search(text)
        if match and (node is None or f"/{node}/" in text):
            found[proc.pid] = match.group(1)
    return found


def orphans(
    core: client.CoreV1Api, custom: client.CustomObjectsApi, node: str | None = None
) -> dict[int, str]:
    """Sandbox processes (of `node`'s pods, when given) whose Sandbox no longer exists (any
    namespace), seen twice: processes are listed before and after the Sandboxes, so one deleted
    between the two reads (its process still going, rightly) is not counted unless it is still
    there afterwards."""
    first = sandbox_processes(node)
    if not first:
        return {}
    listed: Any = custom.list_cluster_custom_object(
        "nest.sandbox.dev", "v1alpha1", "sandboxes", _request_timeout=TIMEOUT
    )
    alive = {s["metadata"]["uid"] for s in listed["items"]}
    second = sandbox_processes(node)
    return {pid: uid for pid, uid in first.items() if uid not in alive and second.get(pid) == uid}


def plain(api: client.ApiClient, obj: object) -> dict[str, Any]:
    """A client model as the API's JSON (camelCase keys, absent fields absent)."""
    body: dict[str, Any] = api.sanitize_for_serialization(obj)
    return body


def pods(core: client.CoreV1Api, selector: str) -> list[dict[str, Any]]:
    listed = core.list_namespaced_pod(SYSTEM, label_selector=selector, _request_timeout=TIMEOUT)
    items: list[dict[str, Any]] = core.api_client.sanitize_for_serialization(listed)["items"]
    return sorted(items, key=lambda p: str(p["metadata"]["name"]))


def ready(pod: dict[str, Any]) -> bool:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return bool(statuses) and all(c["ready"] for c in statuses)


def restarts(pod: dict[str, Any], container: str) -> int:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status["name"] == container:
            return int(status.get("restartCount") or 0)
    return 0


def deployment_settled(apps: client.AppsV1Api, name: str) -> bool:
    """A system Deployment fully rolled out and available, no old pod left over."""
    d = plain(
        apps.api_client, apps.read_namespaced_deployment(name, SYSTEM, _request_timeout=TIMEOUT)
    )
    want, s = d["spec"].get("replicas", 1), d.get("status") or {}
    counts = ("updatedReplicas", "readyReplicas", "availableReplicas", "replicas")
    observed = s.get("observedGeneration", 0) >= d["metadata"].get("generation", 0)
    return observed and all(s.get(key, 0) == want for key in counts)


SYSTEM_DEPLOYMENTS = ("nest-operator", "nest-gateway", "nest-pool")


def unsettled(core: client.CoreV1Api, apps: client.AppsV1Api) -> list[str]:
    """What keeps the system from settled: Deployments not fully available, pods terminating."""
    found = [
        f"deployment {n} not settled" for n in SYSTEM_DEPLOYMENTS if not deployment_settled(apps, n)
    ]
    listed = plain(core.api_client, core.list_namespaced_pod(SYSTEM, _request_timeout=TIMEOUT))
    found += [f"pod {p['metadata']['name']} terminating" for p in listed["items"]
              if p["metadata"].get("deletionTimestamp")]  # fmt: skip
    return found


def system_settled(core: client.CoreV1Api, apps: client.AppsV1Api) -> bool:
    """Operator, gateway and pool all available, and no system pod still terminating."""
    return not unsettled(core, apps)


def operator_leader(core: client.CoreV1Api) -> tuple[dict[str, Any], str]:
    """The operator pod holding the leader Lease (and how it was found). With leader election
    (a Lease in nest-system whose name says operator) its holder; with one replica, that one."""
    replicas = [
        p for p in pods(core, OPERATOR_SELECTOR) if not p["metadata"].get("deletionTimestamp")
    ]
    if not replicas:
        raise RuntimeError("no nest-operator pod")
    coordination = client.CoordinationV1Api(core.api_client)
    leases = plain(
        core.api_client, coordination.list_namespaced_lease(SYSTEM, _request_timeout=TIMEOUT)
    )
    for lease in leases["items"]:
        holder, name = str(lease["spec"].get("holderIdentity") or ""), lease["metadata"]["name"]
        if "operator" not in name or not holder:
            continue
        for pod in replicas:
            if pod["metadata"]["name"] in holder:
                return pod, f"lease {name}"
    if len(replicas) == 1:
        return replicas[0], "the only replica"
    return replicas[0], "no leader Lease matched: the first replica"


def _kill(pod: str, command: str) -> tuple[int, float]:
    """kill -9; the pid, and when (monotonic) the process was gone. Until then its listening
    socket still accepts connections that its death then resets: requests sent before that
    moment were in flight in the killed process, whatever the clock said when the fault began
    (finding the process takes a scan of /proc, tenths of a second)."""
    proc = container_process(pod, command)
    if proc is None:
        raise RuntimeError(f"no {command} process of pod {pod} on this host")
    proc.send_signal(signal.SIGKILL)
    # Gone before we looked, or a zombie nobody reaped yet: its sockets are closed either way.
    with contextlib.suppress(psutil.Error):
        proc.wait(timeout=5)
    return proc.pid, time.monotonic()


@dataclass
class Injected:
    """What a fault did, and the probe that says its effect came and went; `struck`: when
    (monotonic) it took effect, if later than when it was begun (a killed process gone)."""

    detail: str
    recovered: Probe
    struck: float | None = None


def kill_container(
    core: client.CoreV1Api, apps: client.AppsV1Api, pod: dict[str, Any], container: str,
    command: str,
) -> Injected:  # fmt: skip
    """kill -9 of one container's main process; recovered once the runner restarted it (its
    restartCount went up) and the system is settled again."""
    name = pod["metadata"]["name"]
    before = restarts(pod, container)
    pid, struck = _kill(name, command)

    def recovered() -> bool:
        now = core.read_namespaced_pod(name, SYSTEM, _request_timeout=TIMEOUT)
        body = core.api_client.sanitize_for_serialization(now)
        return restarts(body, container) > before and ready(body) and system_settled(core, apps)

    return Injected(f"kill -9 {command} pid {pid} of {name}", recovered, struck)


def delete_pod(core: client.CoreV1Api, apps: client.AppsV1Api, pod: dict[str, Any]) -> Injected:
    """A graceful delete of one pool pod (its terminationGracePeriod, preStop if any)."""
    name, uid = pod["metadata"]["name"], pod["metadata"]["uid"]
    core.delete_namespaced_pod(name, SYSTEM, _request_timeout=TIMEOUT)

    def recovered() -> bool:
        present = {p["metadata"]["uid"] for p in pods(core, POOL_SELECTOR)}
        return uid not in present and system_settled(core, apps)

    return Injected(f"graceful delete of pod {name}", recovered)


def rollout_restart(
    core: client.CoreV1Api, apps: client.AppsV1Api, kubectl: Callable[..., str]
) -> Injected:
    """`kubectl rollout restart deployment/nest-pool`: every pool pod replaced, rolling."""
    old = {p["metadata"]["uid"] for p in pods(core, POOL_SELECTOR)}
    kubectl("-n", SYSTEM, "rollout", "restart", "deployment/nest-pool")

    def recovered() -> bool:
        present = {p["metadata"]["uid"] for p in pods(core, POOL_SELECTOR)}
        return not (present & old) and system_settled(core, apps)

    return Injected(f"rollout restart of nest-pool ({len(old)} pods)", recovered)


def hold_stopped(proc: psutil.Process, seconds: float = HOLD_SECONDS) -> subprocess.Popen[bytes]:
    """SIGSTOP `proc` for `seconds`, then SIGCONT, from a detached helper process: the process
    is resumed even if this benchmark dies meanwhile (the helper is in a session of its own)."""
    code = (
        "import os, signal, sys, time\n"
        "pid, hold = int(sys.argv[1]), float(sys.argv[2])\n"
        "os.kill(pid, signal.SIGSTOP)\n"
        "print('stopped', flush=True)\n"
        "try:\n"
        "    time.sleep(hold)\n"  # the outage itself: its length is the fault, not a wait
        "finally:\n"
        "    os.kill(pid, signal.SIGCONT)\n"
    )
    helper = subprocess.Popen(
        [sys.executable, "-c", code, str(proc.pid), str(seconds)],
        stdout=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    assert helper.stdout is not None
    line = helper.stdout.readline()  # returns once the SIGSTOP was sent
    if line.strip() != b"stopped":
        raise RuntimeError(f"could not stop pid {proc.pid}")
    return helper


def stop_component(
    core: client.CoreV1Api, apps: client.AppsV1Api, proc: psutil.Process, what: str,
    seconds: float = HOLD_SECONDS,
) -> Injected:  # fmt: skip
    """A control-plane component down (SIGSTOP) for `seconds`; recovered once resumed and the
    system settled again (which needs the API server to answer)."""
    helper = hold_stopped(proc, seconds)

    def recovered() -> bool:
        if helper.poll() is None:
            return False
        return system_settled(core, apps)

    return Injected(f"{what} pid {proc.pid} stopped for {seconds:g}s", recovered)


def resume_all(pids: Iterable[int]) -> None:
    """SIGCONT, in case: a component must never stay stopped because of us."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
        except OSError:
            continue
