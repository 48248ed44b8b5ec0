"""A pod's sandbox, in CRI terms: what its containers share and what each instance is given.

The pod worker (pods.py) decides WHEN a container starts and stops; this module decides WHAT it
starts with: its credentials (`security.resolve`), a fresh cgroup per instance with the
container's limits (`cgroups.create`), its PID namespace (its own, or with
`shareProcessNamespace` the pod's, held by a pause process whose PID 1 reaps orphans exactly as
the pause container does), which system mounts turn read-only, its own termination message file
(`termination`) and the directories it must be shown to reach the image (`security.reach`).
When an instance ends it removes that instance's cgroup and says whether the kernel OOM-killed
it and where its message was written; when the pod goes it stops the pause process and removes
the pod's cgroup.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nest_cluster.errors import RunnerError
from nest_cluster.runner import cgroups, process, security, termination
from nest_cluster.runner.cgroups import ContainerCgroup, Support
from nest_cluster.runner.security import Security
from nest_cluster.runner.volumes import Mount

Obj = Mapping[str, Any]
log = logging.getLogger(__name__)
#: Read-only for non-privileged containers, like runc's sysfs and cgroup mounts.
SYSTEM_READONLY = ("/sys", "/sys/fs/cgroup")


@dataclass(frozen=True)
class Host:
    """What the node can give containers."""

    node: str  # the node's cgroup key (cgroups.node_key)
    isolate: bool  # root: namespaces, mounts, credentials
    cgroups: Support
    last_cap: int


@dataclass(frozen=True)
class Instance:
    """What one running container instance was given, for exec probes and its teardown."""

    security: Security
    cgroup: ContainerCgroup | None
    message_file: Path | None = None  # its termination message file, if it was given one

    @property
    def procs_inside(self) -> tuple[str, ...]:
        """The cgroup.procs files as the container sees them (exec joins these)."""
        if self.cgroup is None:
            return ()
        return tuple(f"{point}/cgroup.procs" for point in self.cgroup.inside)


@dataclass(frozen=True)
class Ended:
    """What the sandbox knows of an instance that is gone."""

    oom_killed: bool = False
    message_file: Path | None = None


def readonly_paths(support: Support, cgroup: ContainerCgroup | None) -> list[str]:
    """System mounts a non-privileged container sees read-only: /sys and every cgroup mount
    except the container's own cgroup, bound at its hierarchy's mount point."""
    bound = set(cgroup.inside) if cgroup else set()
    return [*SYSTEM_READONLY, *(p for p in support.points if p not in bound)]


class PodSandbox:
    """One pod's shared pieces; used only from its worker's thread."""

    def __init__(self, host: Host, pod: Obj, files: Path) -> None:
        self.host = host
        self.files = files  # per-container files (the kubelet's pods/<uid>/containers)
        self.uid: str = pod["metadata"]["uid"]
        self.share_pid = bool((pod.get("spec") or {}).get("shareProcessNamespace"))
        self.pause: subprocess.Popen[bytes] | None = None
        self.instances: dict[str, Instance] = {}  # container name -> its live instance
        self.problem = ""  # a cgroup this pod could not have

    @property
    def message(self) -> str:
        """The pod-level status message, if the node runs it with less than asked."""
        if not self.host.isolate:
            return ""
        if self.problem:
            return f"{self.problem}; its memory, cpu and pids limits are not enforced"
        return cgroups.message(self.host.cgroups)

    def resolve(self, pod: Obj, container: Obj) -> Security:
        """The container's credentials; `security.ConfigError` if it must not be created."""
        return security.resolve(pod, container, self.host.last_cap)

    def _cgroup(self, container: Obj, creds: Security, instance: int) -> ContainerCgroup | None:
        support = self.host.cgroups
        if not (self.host.isolate and support.usable):
            return None
        name = f"{container['name']}-{instance}"
        try:
            return cgroups.create(
                support, self.host.node, self.uid, name, container, (creds.uid, creds.gid)
            )
        except OSError as err:
            # Degrade like a node without cgroups does, and say so in the pod's status.
            self.problem = f"container {container['name']} has no cgroup ({err.strerror or err})"
            log.warning("pod %s: %s", self.uid, self.problem)
            return None

    def _pid_namespace(self, env: Mapping[str, str]) -> str | None:
        if not (self.share_pid and self.host.isolate):
            return None
        if self.pause is None or self.pause.poll() is not None:
            # A pause that died took the pod's namespace, and its processes, with it.
            procs: list[str] = []
            support = self.host.cgroups
            if support.usable:
                directories = cgroups.pod_dirs(support, self.host.node, self.uid)
                for directory in directories:
                    Path(directory, "pause").mkdir(parents=True, exist_ok=True)
                procs = [f"{d}/pause/cgroup.procs" for d in directories]
            try:
                self.pause = process.start_pause(env, procs)
            except process.StartError as err:
                raise RunnerError(f"starting the pod's PID namespace: {err.message}") from err
        return process.pid_namespace(self.pause.pid)

    def launch(
        self,
        container: Obj,
        creds: Security,
        instance: int,
        argv: Sequence[str],
        env: Mapping[str, str],
        mounts: Sequence[Mount],
        logfile: Path,
    ) -> process.Launch:
        """The `process.Launch` of a new instance; its cgroup exists from here on."""
        pid_ns = self._pid_namespace(env)
        message_file: Path | None = None
        reach: list[security.Reach] = []
        if self.host.isolate:  # without a mount namespace, see `termination`
            if termination.message_path(container):
                try:
                    message_file = termination.create_file(self.files / container["name"])
                except OSError as err:
                    raise RunnerError(f"creating its termination message file: {err}") from err
                mounts = termination.with_message_mount(list(mounts), container, message_file)
            if argv:
                paths = security.image_paths(argv[0], env.get("PATH"))
                reach = security.reach(paths, creds.uid, {creds.gid, *creds.groups})
        cgroup = self._cgroup(container, creds, instance)
        self.instances[container["name"]] = Instance(creds, cgroup, message_file)
        return process.Launch(
            argv=argv,
            env=env,
            cwd=container.get("workingDir"),
            mounts=mounts,
            log=logfile,
            isolate=self.host.isolate,
            security=creds,
            cgroup=cgroup.shim_spec() if cgroup else None,
            pid_ns=pid_ns,
            readonly=readonly_paths(self.host.cgroups, cgroup),
            reach=reach,
        )

    def ended(self, name: str) -> Ended:
        """The instance of `name` is gone: remove its cgroup; whether it was OOM-killed, and its
        message file (the caller reads and removes it)."""
        instance = self.instances.pop(name, None)
        if instance is None:
            return Ended()
        if instance.cgroup is None:
            return Ended(False, instance.message_file)
        oom = cgroups.oom_killed(instance.cgroup)
        cgroups.remove(instance.cgroup)
        return Ended(oom, instance.message_file)

    def close(self) -> None:
        """The pod is done: stop its PID namespace and remove what is left of its cgroups."""
        for name in list(self.instances):
            self.ended(name)
        if self.pause is not None:
            process.signal_group(self.pause.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.pause.wait(5)
            self.pause = None
        if self.host.isolate and self.host.cgroups.usable:
            cgroups.remove_dirs(cgroups.pod_dirs(self.host.cgroups, self.host.node, self.uid))
