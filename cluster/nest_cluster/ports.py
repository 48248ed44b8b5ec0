"""The local cluster's ports: chosen once, when its state is created, and never again.

Every kubeconfig, the node's `--api-server`, the registry announcement and any client holding a
connection name these ports, and the API server names etcd's. Choosing anew on a later `up` (as
`up` once did whenever a recorded port was busy - for instance etcd's, because etcd still ran
after the API server alone had died) splits the cluster: new kubeconfigs against an etcd port
nothing listens on. So ports are part of the state like the certificates: a cluster with a
recorded cluster.json reuses them, and a recorded port held by something else is an error that
names the port and its holder - the operator of the machine decides, never a silent re-pick.

Fresh ports are taken below the kernel's ephemeral range (net.ipv4.ip_local_port_range) when it
leaves room: the kernel hands ports of that range to outgoing connections, so a port chosen there
can be taken by any client's connection while its component is down for a restart.
"""

from __future__ import annotations

import contextlib
import random
import socket
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import psutil

# Which component listens on each recorded port: the one whose start needs the port free.
OWNERS = {
    "etcd_client": "etcd",
    "etcd_peer": "etcd",
    "apiserver": "kube-apiserver",
    "controller_manager": "kube-controller-manager",
    "scheduler": "kube-scheduler",
}
REGISTRY = "registry"
LOWEST = 10000  # below it live well-known and commonly configured services
EPHEMERAL_FILE = "/proc/sys/net/ipv4/ip_local_port_range"


@dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int


@dataclass(frozen=True)
class Holder:
    """A process using a port, as far as psutil can tell."""

    pid: int | None
    command: str
    state: str  # LISTEN, ESTABLISHED, TIME_WAIT, ...


def recorded_ports(cluster_json: Mapping[str, Any]) -> Ports | None:
    """The control plane's ports recorded in cluster.json; None without a usable record."""
    raw = cluster_json.get("ports")
    if not isinstance(raw, dict):
        return None
    values = [raw.get(f.name) for f in fields(Ports)]
    valid = [v for v in values if isinstance(v, int) and 0 < v < 65536]
    return Ports(*valid) if len(valid) == len(values) else None


def choose(
    cluster_json: Mapping[str, Any], registry: int | None, fresh: Callable[[int], list[int]]
) -> tuple[Ports, int]:
    """The cluster's ports: the recorded ones whenever there are, fresh ones only where none is
    recorded (a new cluster; or only the registry's, for a state from before the registry).
    `registry` is the registry port recorded in the same file (nest_cluster.registry reads it)."""
    ports = recorded_ports(cluster_json)
    needed = (len(fields(Ports)) if ports is None else 0) + (registry is None)
    new = iter(fresh(needed) if needed else [])
    if ports is None:
        ports = Ports(*(next(new) for _ in fields(Ports)))
    return ports, registry if registry is not None else next(new)


def by_port(ports: Ports, registry: int) -> dict[int, tuple[str, str]]:
    """Each port with (its component, what it is for), for checks and messages."""
    out = {port: (OWNERS[name], name.replace("_", " ")) for name, port in asdict(ports).items()}
    out[registry] = (REGISTRY, "registry")
    return out


def to_check(ports: Ports, registry: int, running: Collection[str]) -> dict[int, tuple[str, str]]:
    """The ports that must be free: those of the components about to be started. A running
    component holds its own ports, so its ports prove nothing."""
    return {p: use for p, use in by_port(ports, registry).items() if use[0] not in running}


def conflict_message(port: int, component: str, use: str, holder: Holder | None) -> str:
    who = (
        f"pid {holder.pid} ({holder.command}, {holder.state})"
        if holder is not None and holder.pid is not None
        else f"a socket in state {holder.state} psutil cannot attribute"
        if holder is not None
        else "a process psutil cannot name"
    )
    return (
        f"port {port} ({use}) recorded for {component} is in use by {who}; stop it, or start "
        "a new cluster with `nest cluster down --purge` (its ports are part of its state)"
    )


def conflicts(
    wanted: Mapping[int, tuple[str, str]],
    is_free: Callable[[int], bool],
    holder: Callable[[int], Holder | None],
) -> list[str]:
    """One message per wanted port that is not free."""
    return [
        conflict_message(port, component, use, holder(port))
        for port, (component, use) in sorted(wanted.items())
        if not is_free(port)
    ]


def fresh_range(ephemeral: tuple[int, int]) -> tuple[int, int] | None:
    """Where to draw fresh ports from: below the ephemeral range when it leaves at least a few
    thousand ports there, else None (let the kernel choose)."""
    low = ephemeral[0]
    return (LOWEST, low - 1) if low - LOWEST >= 2000 else None


def pick(
    count: int,
    is_free: Callable[[int], bool],
    span: tuple[int, int] | None,
    rng: random.Random,
    kernel_pick: Callable[[], int],
    attempts: int = 200,
) -> list[int]:
    """`count` distinct free ports: random ones of `span`, or the kernel's where none is left."""
    chosen: list[int] = []
    for _ in range(attempts):
        if len(chosen) == count or span is None:
            break
        port = rng.randint(*span)
        if port not in chosen and is_free(port):
            chosen.append(port)
    while len(chosen) < count:
        port = kernel_pick()
        if port not in chosen:
            chosen.append(port)
    return chosen


# -- the machine ------------------------------------------------------------------------------


def port_free(port: int) -> bool:
    """Whether a component could listen on `port` of 127.0.0.1. Go listens with SO_REUSEADDR, so
    connections in TIME_WAIT from before a restart do not count as taking the port."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def kernel_pick() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def ephemeral_range() -> tuple[int, int]:
    try:
        with open(EPHEMERAL_FILE) as f:
            low, high = (int(v) for v in f.read().split())
    except (OSError, ValueError):
        return (32768, 60999)  # Linux's default
    return (low, high)


def fresh_ports(count: int) -> list[int]:
    """`count` distinct free ports for a new cluster."""
    span = fresh_range(ephemeral_range())
    return pick(count, port_free, span, random.Random(), kernel_pick)


def holder_of(port: int) -> Holder | None:
    """The process using local `port`, listeners first (needs root to see other users')."""
    with contextlib.suppress(psutil.Error, OSError):
        found = [c for c in psutil.net_connections(kind="tcp") if c.laddr and c.laddr.port == port]
        found.sort(key=lambda c: c.status != psutil.CONN_LISTEN)
        for conn in found:
            if conn.pid is None:
                continue
            try:
                command = " ".join(psutil.Process(conn.pid).cmdline())[:120]
            except psutil.Error:
                command = "?"
            return Holder(conn.pid, command, conn.status)
        if found:
            return Holder(None, "", found[0].status)
    return None
