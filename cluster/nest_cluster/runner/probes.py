"""Readiness and liveness probes: httpGet, tcpSocket and exec, run against the pod's loopback IP.

Exec probes run inside the container (its PID, mount and cgroup namespaces, its cgroup, user and
capabilities) through the shim's `join` mode, as the kubelet runs them through `runc exec`.

One thread per probe per container instance; it owns the success/failure counters and reports to
the pod worker only when the probe's verdict flips (thresholds applied), so a healthy container
costs one probe per period and no status writes.
"""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from nest_cluster.runner import process
from nest_cluster.runner.security import Security

Obj = Mapping[str, Any]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """Where and how a container's probes run."""

    pod_ip: str
    pid: int
    env: Mapping[str, str]
    ports: Mapping[str, int]  # named container ports
    isolate: bool  # the container has its own namespaces: exec probes must enter them
    security: Security | None = None  # exec probes run with the container's credentials
    procs: tuple[str, ...] = ()  # ... and in its cgroup (cgroup.procs as the container sees it)


def _port(value: int | str, target: Target) -> int:
    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    if value not in target.ports:
        raise ValueError(f"no container port named {value!r}")
    return target.ports[value]


def _http(spec: Obj, target: Target, timeout: float) -> bool:
    host = spec.get("host") or target.pod_ip
    port = _port(spec["port"], target)
    conn: http.client.HTTPConnection
    if (spec.get("scheme") or "HTTP").upper() == "HTTPS":
        # The kubelet does not verify probe certificates either.
        ctx = ssl._create_unverified_context()
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    headers = {h["name"]: h["value"] for h in spec.get("httpHeaders") or []}
    headers.setdefault("User-Agent", "kube-probe/1.20")
    try:
        conn.request("GET", spec.get("path") or "/", headers=headers)
        status = conn.getresponse().status
    finally:
        conn.close()
    return 200 <= status < 400


def _tcp(spec: Obj, target: Target, timeout: float) -> bool:
    host = spec.get("host") or target.pod_ip
    with socket.create_connection((host, _port(spec["port"], target)), timeout=timeout):
        return True


def _exec(spec: Obj, target: Target, timeout: float) -> bool:
    command = list(spec.get("command") or [])
    if target.isolate:
        # As `runc exec`: the container's namespaces, cgroup, user and capabilities.
        security = target.security or Security()
        try:
            code = process.exec_in(target.pid, command, target.env, security, target.procs,
                                   timeout)  # fmt: skip
        except process.StartError:
            return False
        return code == 0
    done = subprocess.run(
        command,
        env=dict(target.env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
    )
    return done.returncode == 0


def run_once(probe: Obj, target: Target) -> bool:
    """One probe attempt; any error (refused, timeout, bad spec) counts as a failure."""
    timeout = float(probe.get("timeoutSeconds") or 1)
    try:
        if "httpGet" in probe:
            return _http(probe["httpGet"], target, timeout)
        if "tcpSocket" in probe:
            return _tcp(probe["tcpSocket"], target, timeout)
        if "exec" in probe:
            return _exec(probe["exec"], target, timeout)
    except (OSError, ValueError, http.client.HTTPException, subprocess.SubprocessError):
        return False
    log.warning("probe without a supported handler: %s", sorted(probe))
    return False


class Prober(threading.Thread):
    """Runs one probe until `stop` is set; calls `report(ok)` each time the verdict flips."""

    def __init__(
        self,
        probe: Obj,
        target: Target,
        initial: bool,
        report: Callable[[bool], None],
        stop: threading.Event,
    ) -> None:
        super().__init__(daemon=True, name=f"probe-{target.pid}")
        self.probe, self.target, self.report, self.stop = probe, target, report, stop
        self.verdict = initial

    def run(self) -> None:
        period = float(self.probe.get("periodSeconds") or 10)
        need_ok = int(self.probe.get("successThreshold") or 1)
        need_fail = int(self.probe.get("failureThreshold") or 3)
        oks = fails = 0
        if self.stop.wait(float(self.probe.get("initialDelaySeconds") or 0)):
            return
        while not self.stop.is_set():
            if run_once(self.probe, self.target):
                oks, fails = oks + 1, 0
            else:
                oks, fails = 0, fails + 1
            flipped = (not self.verdict and oks >= need_ok) or (self.verdict and fails >= need_fail)
            if flipped and not self.stop.is_set():
                self.verdict = not self.verdict
                self.report(self.verdict)
            if self.stop.wait(period):
                return
