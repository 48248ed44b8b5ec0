"""Where the local cluster keeps its build cache and its state, and which Kubernetes it builds.

Builds are keyed by version under the user's cache directory so a second `nest cluster up` starts
in seconds; state (etcd data, keys, kubeconfig, logs, pid files) lives under the state directory
so that `nest cluster down --purge` can remove it without touching the cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nest.dirs import cache_dir, state_dir

KUBERNETES_VERSION = "1.20.2"
DEBIAN_SOURCE_PACKAGE = "kubernetes"
DEBIAN_SOURCE_VERSION = "1.20.5+really1.20.2-1.1+deb12u1"
BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")


@dataclass(frozen=True)
class ClusterPaths:
    """Every file the local cluster reads or writes, derived from two roots."""

    cache: Path
    state: Path

    @classmethod
    def default(cls) -> ClusterPaths:
        """The roots the `nest` command also reads (nest.dirs): it finds this kubeconfig."""
        return cls(cache=cache_dir(), state=state_dir())

    @property
    def build_root(self) -> Path:
        return self.cache / "kubernetes" / KUBERNETES_VERSION

    @property
    def bin_dir(self) -> Path:
        return self.build_root / "bin"

    def binary(self, name: str) -> Path:
        return self.bin_dir / name

    @property
    def kubeconfig(self) -> Path:
        return self.state / "kubeconfig"

    @property
    def pki(self) -> Path:
        return self.state / "pki"

    @property
    def etcd_data(self) -> Path:
        return self.state / "etcd"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def run(self) -> Path:
        return self.state / "run"

    @property
    def config(self) -> Path:
        return self.state / "cluster.json"
