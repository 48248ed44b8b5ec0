"""`nest cluster up | down | status`: a real control plane as local processes.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler run as detached processes under
the state directory, plus an OCI registry for function packages (nest_cluster.registry) and the
local node's process runner (our kubelet stand-in). `up` is idempotent: running components are
kept, dead ones restarted; ports are chosen once, with the state, and kept for its life
(nest_cluster.ports) so kubeconfigs stay valid. `up` ends by starting the supervisor
(nest_cluster.supervisor), which restarts a component that dies, with back-off; `down` stops it
first. `up`, `down` and the supervisor's restarts hold a lock on the state directory: two `up`s
at once (two test sessions, say) would otherwise both find a component missing and start it
twice - two runners then run every pod twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from nest.dirs import conventional_state
from nest_cluster import ports as portmod
from nest_cluster import supervision
from nest_cluster.build import Builder
from nest_cluster.errors import ClusterError
from nest_cluster.paths import ClusterPaths
from nest_cluster.pki import ensure_pki, write_kubeconfig
from nest_cluster.ports import Ports as Ports
from nest_cluster.procs import ProcessSpec, ProcessTable, wait_until
from nest_cluster.registry import LocalRegistry, RegistryHosting, publish, recorded_port
from nest_cluster.runner import cgroups
from nest_cluster.runner.process import sweep

NODE_NAME = "nest-local"
# How runners are started (`python -m MODULE`), to find and stop one.
RUNNER_MODULE = "nest_cluster.runner"
SUPERVISOR = "supervisor"  # its name for pid and log files (`nest cluster logs supervisor`)
SUPERVISOR_MODULE = "nest_cluster.supervisor"
SERVICE_CIDR = "10.0.0.0/24"
# Started in this order, stopped in the reverse: the registry before the node, so pods that
# pull function packages at start find it.
COMPONENTS = (
    "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "registry", "node",
)  # fmt: skip


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


@dataclass(frozen=True)
class Health:
    """One component's state, as `nest cluster status` prints it."""

    name: str
    pid: int | None
    healthy: bool
    detail: str
    restarts: int = 0  # by the supervisor, since the cluster was last brought up from down


class ControlPlane:
    """The local cluster rooted at one state directory."""

    def __init__(self, paths: ClusterPaths | None = None) -> None:
        self.paths = paths or ClusterPaths.default()
        self.procs = ProcessTable(self.paths.run, self.paths.logs)
        self.registry = LocalRegistry(self.paths.state)

    # -- configuration -------------------------------------------------------------------------

    def _choose_ports(self) -> tuple[Ports, int]:
        """The recorded ports (a state recorded before the registry existed gains a registry
        port); fresh ones only for a cluster without state."""
        recorded = self._recorded()
        return portmod.choose(recorded, recorded_port(recorded), portmod.fresh_ports)

    def _check_ports(self, ports: Ports, registry: int) -> None:
        """Fail, naming the holder, when a port of a component about to start is taken."""
        running = {name for name in COMPONENTS if self.procs.find(name) is not None}
        wanted = portmod.to_check(ports, registry, running)
        found = portmod.conflicts(wanted, portmod.port_free, portmod.holder_of)
        if found:
            raise ClusterError("; ".join(found))

    def _recorded_ports(self) -> Ports:
        ports = portmod.recorded_ports(self._recorded())
        if ports is None:
            raise ClusterError(f"no ports recorded in {self.paths.config}: run `nest cluster up`")
        return ports

    def _recorded(self) -> dict[str, Any]:
        try:
            recorded = json.loads(self.paths.config.read_text())
        except (OSError, ValueError):
            return {}
        return recorded if isinstance(recorded, dict) else {}

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

    def component_spec(self, name: str) -> ProcessSpec:
        """How to (re)start one component on the recorded ports: the supervisor's view."""
        if name == "registry":
            port = recorded_port(self._recorded())
            if port is None:
                raise ClusterError(f"no registry port recorded in {self.paths.config}")
            return self.registry.spec(port)
        return self._specs(self._recorded_ports())[name]

    def _supervisor_spec(self) -> ProcessSpec:
        argv = [
            sys.executable, "-m", SUPERVISOR_MODULE, f"--state-dir={self.paths.state.resolve()}",
            f"--cache-dir={self.paths.cache.resolve()}",
        ]  # fmt: skip
        return ProcessSpec(SUPERVISOR, argv)

    def runner_pids(self) -> list[int]:
        """Every runner serving this state's node, whether or not its pid file names it."""
        return [p.pid for p in _runners(str((self.paths.state / "node").resolve()))]

    @property
    def supervision_path(self) -> Path:
        """The supervisor's record of restarts, which `status` reads."""
        return self.paths.run / "supervision.json"

    def _supervision(self) -> dict[str, supervision.Track]:
        try:
            return supervision.loads(self.supervision_path.read_text())
        except OSError:
            return {}

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
            port = recorded_port(self._recorded())
            return self.registry.healthy(port) if port else (False, "no port recorded")
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

    @contextlib.contextmanager
    def try_locked(self) -> Iterator[bool]:
        """The lifecycle lock if nobody holds it (True), else nothing (False), without waiting."""
        self.paths.state.mkdir(parents=True, exist_ok=True)
        with open(self.paths.state / "lifecycle.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True

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
        ports, registry_port = self._choose_ports()
        self._check_ports(ports, registry_port)
        ensure_pki(self.paths.pki)
        server = self._server(ports)
        _write_kubeconfig(self.paths.kubeconfig, server, self.paths.pki, "admin")
        for component in ("controller-manager", "scheduler"):
            path = self.paths.state / f"{component}.kubeconfig"
            _write_kubeconfig(path, server, self.paths.pki, component)
        recorded = {"ports": vars(ports), "registry": {"port": registry_port}}
        _replace_if_changed(self.paths.config, json.dumps(recorded, indent=2))
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
        # Last: it must find every component's pid file, or it takes the cluster for stopped.
        self.procs.start(self._supervisor_spec())

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
        # First, so that nothing stopped below is started again (it also cannot take the lock).
        self.procs.stop(SUPERVISOR, grace=10.0)
        self.supervision_path.unlink(missing_ok=True)
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
        """Every component, then the supervisor; restarts as the supervisor counted them."""
        ports = portmod.recorded_ports(self._recorded())
        tracks, now = self._supervision(), time.time()
        rows = []
        for name in COMPONENTS:
            proc, track = self.procs.find(name), tracks.get(name)
            restarts = track.restarts if track else 0
            if proc is None or ports is None:
                pending = supervision.describe(track, now)
                detail = f"not running: {pending}" if pending else "not running"
                rows.append(Health(name, None, False, detail, restarts))
                continue
            ok, detail = self._healthy(name, ports)
            rows.append(Health(name, proc.pid, ok, detail, restarts))
        supervisor = self.procs.find(SUPERVISOR)
        detail = (
            "restarts dead components (back-off 1s doubling to 30s)"
            if supervisor
            else "not running: dead components stay down until `nest cluster up`"
        )
        rows.append(Health(SUPERVISOR, supervisor.pid if supervisor else None,
                           supervisor is not None, detail))  # fmt: skip
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


def _replace_if_changed(path: Path, text: str) -> None:
    """Write atomically, and not at all when unchanged: clients read these files any time."""
    try:
        if path.read_text() == text:
            return
    except OSError:
        pass
    tmp = path.with_name(f".{path.name}.tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
        out.write(text)  # kubeconfigs hold tokens: never readable by others, not for a moment
    os.replace(tmp, path)


def _write_kubeconfig(path: Path, server: str, pki: Path, component: str) -> None:
    """pki's kubeconfig, replaced only when it changed (with the ports kept, it never does)."""
    tmp = path.with_name(f".{path.name}.new")
    tmp.unlink(missing_ok=True)
    tmp.touch(mode=0o600)  # before it holds the token
    write_kubeconfig(tmp, server, pki, component)
    text = tmp.read_text()
    tmp.unlink()
    _replace_if_changed(path, text)


def _say(message: str) -> None:
    print(f"nest: {message}", file=sys.stderr, flush=True)
