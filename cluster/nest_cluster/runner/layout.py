"""Where the runner keeps each pod's files under its state dir, and which loopback IP a pod owns.

Every pod gets `<state>/pods/<uid>/` holding `pod.json` (namespace, name, containers, IP), its
volumes, its container logs and per-container files (termination messages). The IP allocation
is *derived* from those files rather than kept in a separate table, so a runner restart keeps
every pod's address and removing a pod's directory is all it takes to release it. A second local
cluster (another state dir) starts elsewhere in 127.0.0.0/8 (`--first-pod-ip`), so its pods never
collide with the first one's addresses.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from nest_cluster.errors import RunnerError

#: 127.0.0.1 belongs to the control plane; pods get 127.0.0.2 and up.
FIRST_POD_IP = ipaddress.IPv4Address("127.0.0.2")
LAST_POD_IP = ipaddress.IPv4Address("127.255.255.254")


def allocate_ip(used: Iterable[str], first: str = str(FIRST_POD_IP)) -> str:
    """The lowest loopback address from `first` (127.0.0.2) that no pod holds."""
    taken = {ipaddress.IPv4Address(ip) for ip in used}
    candidate = ipaddress.IPv4Address(first)
    while candidate in taken:
        candidate += 1
        if candidate > LAST_POD_IP:
            raise RunnerError("no free loopback address left for pods")
    return str(candidate)


@dataclass(frozen=True)
class PodMeta:
    """The record that outlives the runner process."""

    uid: str
    namespace: str
    name: str
    ip: str
    containers: tuple[str, ...]


class PodDir:
    """One pod's directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def meta_file(self) -> Path:
        return self.root / "pod.json"

    @property
    def volumes(self) -> Path:
        return self.root / "volumes"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def containers(self) -> Path:
        """Per-container files, by container name (termination message files)."""
        return self.root / "containers"

    def volume(self, name: str) -> Path:
        return self.volumes / name

    def log(self, container: str, previous: bool = False) -> Path:
        return self.logs / (f"{container}.previous.log" if previous else f"{container}.log")

    def read_meta(self) -> PodMeta | None:
        try:
            raw = json.loads(self.meta_file.read_text())
            return PodMeta(**{**raw, "containers": tuple(raw["containers"])})
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def write_meta(self, meta: PodMeta) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.meta_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(meta)))
        tmp.replace(self.meta_file)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class Layout:
    """The runner's state directory."""

    def __init__(self, state_dir: Path, first_ip: str = str(FIRST_POD_IP)) -> None:
        self.state_dir = state_dir
        self.pods_root = state_dir / "pods"
        self.first_ip = first_ip

    def pod(self, uid: str) -> PodDir:
        return PodDir(self.pods_root / uid)

    def pods(self) -> Iterator[tuple[PodDir, PodMeta]]:
        if not self.pods_root.is_dir():
            return
        for root in sorted(self.pods_root.iterdir()):
            pod = PodDir(root)
            meta = pod.read_meta()
            if meta is not None:
                yield pod, meta

    def claim(self, uid: str, namespace: str, name: str, containers: Iterable[str]) -> PodMeta:
        """The pod's record, creating it with a fresh IP the first time this uid is seen."""
        pod = self.pod(uid)
        meta = pod.read_meta()
        if meta is None:
            ip = allocate_ip((m.ip for _, m in self.pods()), self.first_ip)
            meta = PodMeta(uid, namespace, name, ip, tuple(containers))
            pod.write_meta(meta)
        return meta

    def find(self, namespace: str, name: str) -> PodMeta | None:
        for _, meta in self.pods():
            if (meta.namespace, meta.name) == (namespace, name):
                return meta
        return None
