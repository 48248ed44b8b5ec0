"""`nest cluster up | down | status`: a real control plane as local processes.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler run as detached processes under
the state directory, plus an OCI registry for function packages (nest_cluster.registry) and the
local node's process runner (our kubelet stand-in). `up` is
idempotent: running components are kept, dead ones restarted; ports are chosen free once and kept
while they stay free so kubeconfigs remain valid across restarts. `up` and `down` hold a lock on
the state directory: two `up`s at once (two test sessions, say) would otherwise both find a
component missing and start it twice - two runners then run every pod twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from nest.dirs import conventional_state
from nest_cluster.build import Builder
from nest_cluster.errors import ClusterError
from nest_cluster.paths import ClusterPaths
from nest_cluster.pki import ensure_pki, write_kubeconfig
from nest_cluster.procs import ProcessSpec, ProcessTable, wait_until
from nest_cluster.registry import (
    LocalRegistry,
    RegistryHosting,
    port_free,
    publish,
    recorded_port,
)
from nest_cluster.runner import cgroups
from nest_cluster.runner.process import sweep

NODE_NAME = "nest-local"
# How runners are started (`python -m MODULE`), to find and stop one.
RUNNER_MODULE = "nest_cluster.runner"
SERVICE_CIDR = "10.0.0.0/24"
# Started in this order, stopped in the reverse: the registry before the node, so pods that
# pull function packages at start find it.
COMPONENTS = (
    "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "registry", "node",
)  # fmt: skip


@dataclass
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int


def node_env(inherited: Mapping[str, str]) -> dict[str, str]:
    """The local node's environment: its pods' commands resolve from this Python's bin first.

    The local node ignores images, so "the image" is this installation: `nest-runtime` and
    `nest-sidecar` in deploy/'s pod specs must resolve even when the venv is not activated.
    """
    bin_dir = str(Path(sys.executable).parent)
    path = inherited.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    if path.split(os.pathsep)[0] != bin_dir:
        path = os.pathsep.join([bin_dir, path])
    return {**inherited, "PATH": path, "PYTHONUNBUFFERED": "1"}


def first_pod_ip(state: Path) -> str:
    """Where the node's pod addresses start: 127.0.0.2 for the usual state directory, another
    127.N.0.2 for any other, so that two local clusters' pods never share an address."""
    if state.resolve() == conventional_state().resolve():
        return "127.0.0.2"
    return f"127.{1 + int(hashlib.sha256(str(state.resolve()).encode()).hexdigest(), 16) % 254}.0.2"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass(frozen=True)
class Health:
    """One component's state, as `nest cluster status` prints it."""

    name: str
    pid: int | None
    healthy: bool
    detail: str


class ControlPlane:
    """The local cluster rooted at one state directory."""

    def __init__(self, paths: ClusterPaths | None = None) -> None:
        self.paths = paths or ClusterPaths.default()
        self.procs = ProcessTable(self.paths.run, self.paths.logs)
        self.registry = LocalRegistry(self.paths.state)

    # -- configuration -------------------------------------------------------------------------

    def _ports(self, running: bool) -> Ports:
        """Keep recorded ports when the cluster runs or they are still free; else choose anew."""
        try:
            recorded = Ports(**json.loads(self.paths.config.read_text())["ports"])
        except (OSError, KeyError, TypeError, ValueError):
            recorded = None
        if recorded is not None and (running or all(map(_port_free, asdict(recorded).values()))):
            return recorded
        return Ports(*(_free_port() for _ in range(5)))

    def _recorded(self) -> dict[str, Any]:
        try:
            recorded = json.loads(self.paths.config.read_text())
        except (OSError, ValueError):
            return {}
        return recorded if isinstance(recorded, dict) else {}

    def _registry_port(self, running: bool) -> int:
        """Like `_ports`, separately: a state recorded before the registry existed keeps its
        control plane's ports and only gains a registry port."""
        port = recorded_port(self._recorded())
        if port is not None and (running or port_free(port)):
            return port
        return _free_port()

    def registry_address(self) -> str | None:
        """`127.0.0.1:PORT` of this cluster's registry as recorded, or None before any `up`."""
        port = recorded_port(self._recorded())
        return f"127.0.0.1:{port}" if port is not None else None

    def _server(self, ports: Ports) -> str:
        return f"https://127.0.0.1:{ports.apiserver}"

    def _specs(self, ports: Ports) -> dict[str, ProcessSpec]:
        pki, bins = self.paths.pki, self.paths.binary
        cm_config = self.paths.state / "controller-manager.kubeconfig"
        sched_config = self.paths.state / "scheduler.kubeconfig"
        etcd_url = f"http://127.0.0.1:{ports.etcd_client}"
        peer_url = f"http://127.0.0.1:{ports.etcd_peer}"
        etcd = [
            "etcd", "--name=nest", f"--data-dir={self.paths.etcd_data}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=nest={peer_url}", "--log-level=warn",
        ]  # fmt: skip
        apiserver = [
            str(bins("kube-apiserver")), f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={ports.apiserver}", "--insecure-port=0",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--token-auth-file={pki / 'tokens.csv'}", "--authorization-mode=RBAC",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # The default reconciler keeps rejecting a loopback address for the `kubernetes`
            # endpoint; nothing in this cluster routes through that Service anyway.
            "--endpoint-reconciler-type=none", "--allow-privileged=true",
            "--profiling=false", "--v=1",
        ]  # fmt: skip
        controller_manager = [
            str(bins("kube-controller-manager")), f"--kubeconfig={cm_config}",
            f"--authentication-kubeconfig={cm_config}", f"--authorization-kubeconfig={cm_config}",
            "--bind-address=127.0.0.1", f"--secure-port={ports.controller_manager}", "--port=0",
            "--leader-elect=false", "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            # No cloud, no pod network: IPAM, node lifecycle (our runner keeps the node fresh)
            # and the cloud controllers have nothing to do here.
            "--controllers=*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service,-route",
            "--profiling=false", "--v=1",
        ]  # fmt: skip
        scheduler = [
            str(bins("kube-scheduler")), f"--kubeconfig={sched_config}",
            f"--authentication-kubeconfig={sched_config}",
            f"--authorization-kubeconfig={sched_config}",
            "--bind-address=127.0.0.1", f"--secure-port={ports.scheduler}", "--port=0",
            "--leader-elect=false", "--profiling=false", "--v=1",
        ]  # fmt: skip
        node = [
            sys.executable, "-m", RUNNER_MODULE,
            f"--kubeconfig={self.paths.kubeconfig}", f"--node-name={NODE_NAME}",
            f"--state-dir={self.paths.state / 'node'}",
            f"--ca-file={pki / 'ca.crt'}", f"--api-server={self._server(ports)}",
            f"--first-pod-ip={first_pod_ip(self.paths.state)}",
        ]  # fmt: skip
        return {
            "etcd": ProcessSpec("etcd", etcd),
            "kube-apiserver": ProcessSpec("kube-apiserver", apiserver),
            "kube-controller-manager": ProcessSpec("kube-controller-manager", controller_manager),
            "kube-scheduler": ProcessSpec("kube-scheduler", scheduler),
            "node": ProcessSpec("node", node, env=node_env(os.environ)),
        }

    # -- probes --------------------------------------------------------------------------------

    def _get(self, url: str, token: str, verify: bool) -> tuple[int, str]:
        if verify:
            ctx = ssl.create_default_context(cafile=str(self.paths.pki / "ca.crt"))
        else:  # controller-manager and scheduler serve self-signed loopback certificates
            ctx = ssl._create_unverified_context()
        req = urllib.request.Request(url)
        req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=2, context=ctx) as resp:
                return resp.status, resp.read().decode(errors="replace")
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(errors="replace")
        except (OSError, ssl.SSLError) as err:
            return 0, str(err)

    def _health_urls(self, ports: Ports) -> dict[str, str]:
        return {
            "etcd": f"http://127.0.0.1:{ports.etcd_client}/health",
            "kube-apiserver": f"{self._server(ports)}/readyz",
            "kube-controller-manager": f"https://127.0.0.1:{ports.controller_manager}/healthz",
            "kube-scheduler": f"https://127.0.0.1:{ports.scheduler}/healthz",
        }

    def _healthy(self, name: str, ports: Ports) -> tuple[bool, str]:
        if name == "node":
            return self._node_ready()
        if name == "registry":
            return self.registry.healthy(self._registry_port(True))
        token = (self.paths.pki / "admin.token").read_text().strip()
        verify = name == "kube-apiserver"  # the one served with our CA's certificate
        code, body = self._get(self._health_urls(ports)[name], token, verify)
        return code == 200, body.strip().splitlines()[0][:80] if body.strip() else str(code)

    def _node_ready(self) -> tuple[bool, str]:
        kubectl = self.kubectl_path()
        out = subprocess.run(
            [kubectl, f"--kubeconfig={self.paths.kubeconfig}", "get", "node", NODE_NAME, "-o",
             "jsonpath={.status.conditions[?(@.type=='Ready')].status}"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        ready = out.stdout.strip() == "True"
        return ready, f"node {NODE_NAME} Ready={out.stdout.strip() or 'unknown'}"

    def kubectl_path(self) -> str:
        built = self.paths.binary("kubectl")
        return str(built) if built.exists() else (shutil.which("kubectl") or "kubectl")

    # -- lifecycle -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.paths.state.mkdir(parents=True, exist_ok=True)
        with open(self.paths.state / "lifecycle.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            yield

    def up(self, timeout: float = 120.0) -> None:
        with self._locked():
            self._up(timeout)

    def _up(self, timeout: float) -> None:
        Builder(self.paths).build()
        if shutil.which("etcd") is None:
            raise ClusterError("etcd not found: install Debian's etcd-server package")
        if shutil.which("docker-registry") is None:
            raise ClusterError(
                "docker-registry not found: install Debian's docker-registry package "
                "(scripts/bootstrap does)"
            )
        running = self.procs.find("kube-apiserver") is not None
        ports = self._ports(running)
        registry_port = self._registry_port(self.procs.find("registry") is not None)
        ensure_pki(self.paths.pki)
        server = self._server(ports)
        write_kubeconfig(self.paths.kubeconfig, server, self.paths.pki, "admin")
        for component in ("controller-manager", "scheduler"):
            path = self.paths.state / f"{component}.kubeconfig"
            write_kubeconfig(path, server, self.paths.pki, component)
        recorded = {"ports": asdict(ports), "registry": {"port": registry_port}}
        self.paths.config.write_text(json.dumps(recorded, indent=2))
        specs = {**self._specs(ports), "registry": self.registry.spec(registry_port)}
        started = time.monotonic()
        for name in COMPONENTS:
            proc = self.procs.start(specs[name])
            wait_until(
                lambda n=name: self._healthy(n, ports)[0],  # type: ignore[misc]
                timeout,
                f"{name} (log: {self.procs.log_path(name)})",
                alive=proc.is_running,
            )
            _say(f"{name:<24} ready  (+{time.monotonic() - started:.1f}s)")
        # Pods share the host's loopback: the address clients push to is the one pods pull from.
        where = f"127.0.0.1:{registry_port}"
        complaint: list[str | None] = []

        def published() -> bool:
            hosting = RegistryHosting(where, where)
            complaint[:] = [publish(self.kubectl_path(), self.paths.kubeconfig, hosting)]
            return complaint[0] is None

        try:
            wait_until(published, timeout, "kube-public/local-registry-hosting")
        except ClusterError as exc:
            raise ClusterError(f"{exc}: cannot publish the registry ({complaint[-1]})") from exc

    def down(self, purge: bool = False) -> None:
        with self._locked():
            self._down()
        if purge:
            shutil.rmtree(self.paths.state, ignore_errors=True)

    def restart_node(self, timeout: float = 120.0) -> list[int]:
        """Restart only the local node's runner (to load new runner code), leaving the control
        plane up; returns the pids of the runner processes it stopped.

        Its pods get SIGTERM and their grace period, then run again under the new runner
        (restartCount + 1). Every runner of this state directory goes, a stray second one too.
        """
        node_dir = str((self.paths.state / "node").resolve())
        with self._locked():
            recorded = self.procs.find("node")
            stopped = [recorded.pid] if recorded else []
            self.procs.stop("node", grace=30.0)
            strays = [p for p in _runners(node_dir) if p.pid not in stopped]
            for proc in strays:
                with contextlib.suppress(psutil.Error):
                    proc.terminate()
            psutil.wait_procs(strays, timeout=30.0)
            stopped += [p.pid for p in strays]
            sweep(node_dir)
            if os.geteuid() == 0:
                cgroups.clean_node(cgroups.discover(), cgroups.node_key(NODE_NAME, node_dir))
            self._up(timeout)
        return stopped

    def _down(self) -> None:
        for name in reversed(COMPONENTS):
            # The node first: its pods get SIGTERM and their grace period while the API is up.
            self.procs.stop(name, grace=30.0 if name == "node" else 10.0)
            if name == "node":
                # Even if the runner died, nothing it started may outlive the cluster.
                node_dir = str((self.paths.state / "node").resolve())
                sweep(node_dir)
                if os.geteuid() == 0:
                    cgroups.clean_node(cgroups.discover(), cgroups.node_key(NODE_NAME, node_dir))

    def status(self) -> list[Health]:
        ports = self._ports(True)
        rows = []
        for name in COMPONENTS:
            proc = self.procs.find(name)
            if proc is None:
                rows.append(Health(name, None, False, "not running"))
                continue
            ok, detail = self._healthy(name, ports)
            rows.append(Health(name, proc.pid, ok, detail))
        return rows


def _runners(node_dir: str) -> list[psutil.Process]:
    """The runner processes serving the node rooted at `node_dir` (exact state-dir match)."""
    found = []
    for proc in psutil.process_iter():
        try:
            argv = proc.cmdline()
        except psutil.Error:
            continue
        dirs = [a.split("=", 1)[1] for a in argv if a.startswith("--state-dir=")]
        if RUNNER_MODULE in argv and any(str(Path(d).resolve()) == node_dir for d in dirs):
            found.append(proc)
    return found


def _say(message: str) -> None:
    print(f"nest: {message}", file=sys.stderr, flush=True)
