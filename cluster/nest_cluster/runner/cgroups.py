"""A cgroup per container, as runc makes one, delegated to the container like a writable cgroupns.

Layout, like the kubelet's /kubepods: `<hierarchy>/nest/<node key>/pod<uid>/<container>-<n>` in each
cgroup v1 hierarchy of memory, cpu and pids, or in the unified v2 hierarchy when that one has the
controllers. Values follow the kubelet: memory.limit_in_bytes (v2 memory.max) from
`limits.memory`, cpu.shares (v2 cpu.weight) from `requests.cpu` (2 without a request), the CFS
quota from `limits.cpu`; pids is created for accounting and delegation, unlimited. The pod's own
cgroup carries no limits (a difference from the kubelet, which sums the containers').

Delegation is where the local node deliberately differs from a real kubelet. A kubelet mounts
the cgroup fs read-only into non-privileged containers; delegating a subtree on a real cluster
takes cgroup v2 and a writable mount. Here the shim bind-mounts the container's OWN cgroup
directories at /sys/fs/cgroup/<controller> (v1) or /sys/fs/cgroup (v2), writable, inside a cgroup
namespace rooted there, and chowns the directory and its cgroup.procs to the container's user:
this is the contract the sandbox runtime relies on to create per-sandbox child cgroups. The limit
files the runner wrote are bind-mounted read-only over themselves, so the container cannot raise
its own limits; every other cgroup mount is read-only unless the container is privileged.

If the cgroup fs is not writable the runner still runs pods, without limits, and says so in every
pod's status message (`Support.problem`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes.utils import parse_quantity

Obj = Mapping[str, Any]
log = logging.getLogger(__name__)
CONTROLLERS = ("memory", "cpu", "pids")
CFS_PERIOD_US = 100_000
MIN_QUOTA_US = 1_000
MIN_SHARES = 2
SHARES_PER_CPU = 1024


@dataclass(frozen=True)
class MountEntry:
    """One cgroup mount of /proc/self/mountinfo."""

    point: str
    root: str  # the part of the hierarchy that is mounted there
    fstype: str  # cgroup | cgroup2
    controllers: tuple[str, ...]  # v1: the hierarchy's controllers; v2: ()


def _unescape(text: str) -> str:
    return text.replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")


def parse_mountinfo(text: str) -> list[MountEntry]:
    """The cgroup mounts of a mountinfo file (pure)."""
    out = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        names = tuple(o for o in tail[2].split(",") if o not in ("rw", "ro"))
        controllers = () if tail[0] == "cgroup2" else names
        out.append(MountEntry(_unescape(fields[4]), _unescape(fields[3]), tail[0], controllers))
    return out


@dataclass(frozen=True)
class Support:
    """Where container cgroups go on this machine, or why there are none."""

    version: int = 0  # 1, 2, or 0 (none)
    dirs: Mapping[str, str] = field(default_factory=dict)  # controller -> hierarchy root dir
    mount_points: Mapping[str, str] = field(default_factory=dict)  # controller -> mount point
    points: tuple[str, ...] = ()  # every cgroup mount point (those not bound: read-only)
    problem: str = ""  # non-empty: no cgroups, and the message pods carry

    @property
    def usable(self) -> bool:
        return self.version != 0 and not self.problem


def choose(entries: list[MountEntry], v2_controllers: Callable[[str], str]) -> Support:
    """Pure: v1 if every controller has a v1 hierarchy, else v2 if the unified one has them."""
    v1 = {c: e for c in CONTROLLERS for e in entries if e.fstype == "cgroup" and c in e.controllers}
    points = tuple(e.point for e in entries)
    if set(v1) == set(CONTROLLERS):
        where = {c: e.point for c, e in v1.items()}
        return Support(version=1, dirs=where, mount_points=where, points=points)
    for e in entries:
        if e.fstype == "cgroup2" and set(CONTROLLERS) <= set(v2_controllers(e.point).split()):
            where = dict.fromkeys(CONTROLLERS, e.point)
            return Support(version=2, dirs=where, mount_points=where, points=points)
    found = sorted({c for e in entries for c in e.controllers} & set(CONTROLLERS))
    problem = f"no cgroup hierarchy with {', '.join(CONTROLLERS)} (found: {found})"
    return Support(points=points, problem=problem)


# -- values (pure) ------------------------------------------------------------------------------


def _millicpu(value: Any) -> int:
    return 0 if value is None else math.ceil(parse_quantity(str(value)) * 1000)


def cpu_shares(milli: int) -> int:
    """The kubelet's milliCPUToShares: 1024 per CPU, at least 2 (also for no request)."""
    return max(MIN_SHARES, milli * SHARES_PER_CPU // 1000) if milli else MIN_SHARES


def cpu_quota(milli: int, period: int = CFS_PERIOD_US) -> int:
    """The kubelet's milliCPUToQuota: -1 (none) without a limit, else at least 1 ms."""
    return max(MIN_QUOTA_US, milli * period // 1000) if milli else -1


def memory_bytes(container: Obj) -> int | None:
    limit = ((container.get("resources") or {}).get("limits") or {}).get("memory")
    return None if limit is None else math.ceil(parse_quantity(str(limit)))


def v1_values(container: Obj) -> dict[str, dict[str, str]]:
    """Files to write per v1 controller, in order (memsw after the limit it must not undercut)."""
    resources = container.get("resources") or {}
    request = _millicpu((resources.get("requests") or {}).get("cpu"))
    limit = _millicpu((resources.get("limits") or {}).get("cpu"))
    memory = memory_bytes(container)
    out: dict[str, dict[str, str]] = {c: {} for c in CONTROLLERS}
    if memory is not None:
        out["memory"]["memory.limit_in_bytes"] = str(memory)
        # No swap beyond the limit, as containerd sets swap = limit (written only if present).
        out["memory"]["memory.memsw.limit_in_bytes"] = str(memory)
    out["cpu"]["cpu.shares"] = str(cpu_shares(request))
    if limit:
        out["cpu"]["cpu.cfs_period_us"] = str(CFS_PERIOD_US)
        out["cpu"]["cpu.cfs_quota_us"] = str(cpu_quota(limit))
    return out


def v2_values(container: Obj) -> dict[str, str]:
    """The v2 files: memory.max, cpu.weight (runc's conversion from shares), cpu.max."""
    resources = container.get("resources") or {}
    request = _millicpu((resources.get("requests") or {}).get("cpu"))
    limit = _millicpu((resources.get("limits") or {}).get("cpu"))
    memory = memory_bytes(container)
    out: dict[str, str] = {}
    if memory is not None:
        out["memory.max"] = str(memory)
        out["memory.swap.max"] = "0"
    out["cpu.weight"] = str(1 + ((cpu_shares(request) - 2) * 9999) // 262142)
    if limit:
        out["cpu.max"] = f"{cpu_quota(limit)} {CFS_PERIOD_US}"
    return out


def node_key(node_name: str, state_dir: str) -> str:
    """The node's cgroup directory name: two local clusters (two state dirs) may both run a
    node `nest-local`, and one's cleanup must never touch the other's containers."""
    digest = hashlib.sha256(os.path.realpath(state_dir).encode()).hexdigest()[:10]
    return f"{node_name}-{digest}"


def pod_path(node: str, pod_uid: str) -> str:
    """`node` is the node's key (`node_key`)."""
    return f"nest/{node}/pod{pod_uid}"


# -- one container's cgroup -------------------------------------------------------------------


@dataclass(frozen=True)
class ContainerCgroup:
    """The directories of one container instance's cgroup and the limit files written there."""

    version: int
    dirs: Mapping[str, str]  # controller -> directory
    mount_points: Mapping[str, str]  # controller -> where its hierarchy is mounted
    written: Mapping[str, tuple[str, ...]]  # directory -> files the container may not write

    @property
    def unique_dirs(self) -> list[str]:
        return list(dict.fromkeys(self.dirs.values()))

    @property
    def inside(self) -> list[str]:
        """Where the container sees its cgroup: the hierarchies' mount points."""
        return list(dict.fromkeys(self.mount_points[c] for c in self.dirs))

    def shim_spec(self) -> dict[str, Any]:
        """What the shim does with it: join, bind at the mount points, protect the limits."""
        binds = {}
        for controller, directory in self.dirs.items():
            binds[self.mount_points[controller]] = {
                "source": directory,
                "target": self.mount_points[controller],
                "protect": list(self.written.get(directory, ())),
            }
        return {
            "procs": [os.path.join(d, "cgroup.procs") for d in self.unique_dirs],
            "binds": list(binds.values()),
        }


def _write(directory: str, name: str, value: str) -> bool:
    path = os.path.join(directory, name)
    if not os.path.exists(path):
        return False
    with open(path, "w") as f:
        f.write(value)
    return True


def _enable_v2(root: str, relative: str) -> None:
    """Enable the controllers for children along `relative` (v2 top-down delegation)."""
    current = root.rstrip("/")
    wanted = " ".join(f"+{c}" for c in CONTROLLERS)
    for part in relative.split("/"):
        with contextlib.suppress(FileExistsError):
            os.mkdir(os.path.join(current, part))
        _write(current, "cgroup.subtree_control", wanted)
        current = os.path.join(current, part)


def create(
    support: Support, node: str, pod_uid: str, name: str, container: Obj, owner: tuple[int, int]
) -> ContainerCgroup:
    """Make the container's cgroup with its limits and hand it to `owner` (uid, gid)."""
    relative = f"{pod_path(node, pod_uid)}/{name}"
    dirs: dict[str, str] = {}
    written: dict[str, tuple[str, ...]] = {}
    if support.version == 2:
        root = support.dirs["memory"]
        _enable_v2(root, pod_path(node, pod_uid))
        directory = os.path.join(root, relative)
        os.makedirs(directory, exist_ok=True)
        dirs = dict.fromkeys(CONTROLLERS, directory)
        written[directory] = tuple(k for k, v in v2_values(container).items()
                                   if _write(directory, k, v))  # fmt: skip
        delegated: tuple[str, ...] = ("cgroup.procs", "cgroup.subtree_control", "cgroup.threads")
    else:
        values = v1_values(container)
        for controller in CONTROLLERS:
            directory = os.path.join(support.dirs[controller], relative)
            os.makedirs(directory, exist_ok=True)
            dirs[controller] = directory
            done = [k for k, v in values[controller].items() if _write(directory, k, v)]
            written[directory] = (*written.get(directory, ()), *done)
        delegated = ("cgroup.procs", "tasks")
    if owner != (0, 0):
        for directory in dict.fromkeys(dirs.values()):
            os.chown(directory, *owner)
            for name_ in delegated:
                with contextlib.suppress(FileNotFoundError):
                    os.chown(os.path.join(directory, name_), *owner)
    return ContainerCgroup(support.version, dirs, support.mount_points, written)


def oom_killed(cgroup: ContainerCgroup) -> bool:
    """Whether the kernel OOM-killed a process of this cgroup (v1 oom_control, v2 events)."""
    name = "memory.events" if cgroup.version == 2 else "memory.oom_control"
    try:
        with open(os.path.join(cgroup.dirs["memory"], name)) as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value) > 0
    except (OSError, ValueError):
        pass
    return False


# -- removal ------------------------------------------------------------------------------------


def _tree(directory: str) -> list[str]:
    """`directory` and every cgroup below it, deepest first (the order rmdir needs)."""
    found = [root for root, _, _ in os.walk(directory)]
    return sorted(found, key=lambda d: d.count("/"), reverse=True)


def _procs(directory: str) -> list[int]:
    try:
        with open(os.path.join(directory, "cgroup.procs")) as f:
            return [int(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return []


def remove_tree(directory: str, timeout: float = 10.0) -> bool:
    """SIGKILL everything in the subtree, then rmdir it bottom-up; False if something stays."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        pending = False
        for d in _tree(directory):
            for pid in _procs(d):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                pending = True
            if not pending:
                with contextlib.suppress(FileNotFoundError):
                    try:
                        os.rmdir(d)
                    except OSError:  # EBUSY: a task is still exiting
                        pending = True
        if not pending or not os.path.exists(directory):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)  # a killed task leaves its cgroup only once it has exited
        delay = min(delay * 2, 0.2)


def remove_dirs(directories: list[str]) -> None:
    """Remove cgroup subtrees: at once if they are empty (the usual case once a container's PID 1
    is gone, since its namespace dies with it), else from a thread that kills and retries."""
    busy = [d for d in directories if not remove_tree(d, timeout=0.0)]
    if not busy:
        return

    def run() -> None:
        for directory in busy:
            if not remove_tree(directory):
                log.warning("cgroup %s: processes remain; left in place", directory)

    threading.Thread(target=run, daemon=True, name="cgroup-remove").start()


def remove(cgroup: ContainerCgroup) -> None:
    """Remove the container's cgroup, child cgroups the container made included."""
    remove_dirs(cgroup.unique_dirs)


def pod_dirs(support: Support, node: str, pod_uid: str) -> list[str]:
    roots = dict.fromkeys(support.dirs.values())
    return [os.path.join(r, pod_path(node, pod_uid)) for r in roots]


def node_dirs(support: Support, node: str) -> Iterator[str]:
    for root in dict.fromkeys(support.dirs.values()):
        yield os.path.join(root, "nest", node)


def clean_node(support: Support, node: str) -> None:
    """Remove every cgroup a previous runner of `node` left (its processes are swept first)."""
    for directory in node_dirs(support, node):
        if os.path.isdir(directory) and not remove_tree(directory, timeout=5.0):
            log.warning("could not remove leftover cgroup %s", directory)


def discover(mountinfo: Path = Path("/proc/self/mountinfo")) -> Support:
    """This machine's cgroup `Support` as found, nothing created."""
    try:
        entries = parse_mountinfo(mountinfo.read_text())
    except OSError as err:
        return Support(problem=f"cannot read {mountinfo}: {err}")

    def v2_controllers(point: str) -> str:
        try:
            return Path(point, "cgroup.controllers").read_text()
        except OSError:
            return ""

    return choose(entries, v2_controllers)


def prepare(support: Support, node: str) -> Support:
    """The node's cgroup roots created; a `Support` with the problem if the fs is not writable."""
    if support.problem:
        return support
    try:
        for directory in node_dirs(support, node):
            if support.version == 2:
                _enable_v2(support.dirs["memory"], f"nest/{node}")
            os.makedirs(directory, exist_ok=True)
    except OSError as err:
        problem = f"the cgroup fs is not writable ({err.strerror or err})"
        return Support(points=support.points, problem=problem)
    return support


def message(support: Support) -> str:
    """The pod-level status message when containers run without cgroups; "" otherwise."""
    if support.usable:
        return ""
    return (
        f"the local node runs containers without cgroups: {support.problem}; memory, cpu and"
        " pids limits are not enforced"
    )
