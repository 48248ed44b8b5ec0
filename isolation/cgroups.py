"""Per-sandbox cgroups: memory, process count and CPU limits that hold at every moment.

Why: polling a sandbox's memory lets it overshoot between polls and misses its children; a
fork bomb needs a limit the kernel enforces. A cgroup per sandbox gives all three — the kernel
charges every page and every process of the sandbox's whole tree, kills inside the cgroup when
the memory limit is hit, refuses forks past `pids.max`, and shares CPU in proportion to weights.

Where: the runtime creates sandbox cgroups under its OWN cgroup (delegation): found from
/proc/self/cgroup and /proc/self/mountinfo, so it works whether the container sees the host's
hierarchy, a bind-mounted subtree, or a cgroup namespace. cgroup v1 (one hierarchy per
controller: memory, pids, cpu) and v2 (one unified hierarchy) are both handled. When the own
cgroup is not writable (most real clusters mount /sys/fs/cgroup read-only into containers),
`discover` returns None and the backend falls back to rlimits plus accounting of the process tree.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

CONTROLLERS = ("memory", "pids", "cpu")
# cpu.shares of a 1-core request, as the kubelet converts millicores (1024 per core, min 2).
SHARES_PER_CORE = 1024


@dataclass(frozen=True, slots=True)
class Mount:
    root: str  # the path inside the hierarchy that is mounted (mountinfo field 4)
    point: str  # where it is mounted
    fstype: str  # cgroup | cgroup2
    options: frozenset[str]  # super options: the v1 controllers of this hierarchy


def parse_mountinfo(text: str) -> list[Mount]:
    """The cgroup mounts of /proc/self/mountinfo."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        options = frozenset(tail[2].split(","))
        mounts.append(Mount(_unescape(fields[3]), _unescape(fields[4]), tail[0], options))
    return mounts


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """/proc/self/cgroup as {controller: path}; the v2 entry is under the key ""."""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for name in controllers.split(",") if controllers else [""]:
            paths[name] = path
    return paths


def _locate(path: str, mounts: Iterable[Mount]) -> str | None:
    """The directory of cgroup `path` under the first mount that exposes it."""
    for mount in mounts:
        root = mount.root.rstrip("/")
        if path.rstrip("/") == root:
            return mount.point
        if path.startswith(root + "/"):
            return mount.point + path[len(root) :]
    return None


@dataclass(frozen=True, slots=True)
class Layout:
    """Where this process's own cgroup lives: v1 one directory per controller, v2 one."""

    version: int
    dirs: Mapping[str, str]  # controller -> own cgroup directory (v2: every key, same dir)


def own_layout(proc_cgroup: str, mountinfo: str) -> Layout | None:
    """Pure: this process's cgroup directories, from the two /proc files; None if not found."""
    paths, mounts = parse_proc_cgroup(proc_cgroup), parse_mountinfo(mountinfo)
    v1 = {}
    for name in CONTROLLERS:
        if name not in paths:
            break
        candidates = [m for m in mounts if m.fstype == "cgroup" and name in m.options]
        where = _locate(paths[name], candidates)
        if where is None:
            break
        v1[name] = where
    else:
        return Layout(1, v1)
    if "" in paths:
        where = _locate(paths[""], [m for m in mounts if m.fstype == "cgroup2"])
        if where is not None:
            return Layout(2, {name: where for name in CONTROLLERS})
    return None


@dataclass(frozen=True, slots=True)
class Limits:
    memory_bytes: int | None
    max_processes: int
    cpu_millis: int | None  # the request: sets the sandbox's CPU weight


def v1_values(limits: Limits) -> dict[str, dict[str, str]]:
    """Pure: the files to write per v1 controller."""
    values: dict[str, dict[str, str]] = {"memory": {}, "pids": {}, "cpu": {}}
    if limits.memory_bytes is not None:
        values["memory"]["memory.limit_in_bytes"] = str(limits.memory_bytes)
    values["pids"]["pids.max"] = str(limits.max_processes)
    if limits.cpu_millis is not None:
        shares = max(2, limits.cpu_millis * SHARES_PER_CORE // 1000)
        values["cpu"]["cpu.shares"] = str(shares)
    return values


def v2_values(limits: Limits) -> dict[str, str]:
    """Pure: the files to write in a v2 cgroup (cpu.weight from shares, as runc converts)."""
    values = {"pids.max": str(limits.max_processes)}
    if limits.memory_bytes is not None:
        values["memory.max"] = str(limits.memory_bytes)
        values["memory.swap.max"] = "0"
    if limits.cpu_millis is not None:
        shares = max(2, limits.cpu_millis * SHARES_PER_CORE // 1000)
        values["cpu.weight"] = str(1 + ((shares - 2) * 9999) // 262142)
    return values


class SandboxCgroup:
    """One sandbox's cgroup (a directory per v1 controller, or one v2 directory)."""

    def __init__(self, dirs: Mapping[str, str], version: int) -> None:
        self.dirs = dict(dirs)
        self.version = version

    @property
    def procs_files(self) -> list[str]:
        """The files a process writes its pid to, to join (the child does, before it drops)."""
        unique = dict.fromkeys(self.dirs.values())
        return [os.path.join(d, "cgroup.procs") for d in unique]

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in self.procs_files:
            with contextlib.suppress(OSError):
                found.update(int(x) for x in Path(path).read_text().split())
        return found

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer ended in this cgroup."""
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        with contextlib.suppress(OSError):
            for line in Path(self.dirs["memory"], name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return 0

    def memory_bytes(self) -> int | None:
        name = "memory.usage_in_bytes" if self.version == 1 else "memory.current"
        try:
            return int(Path(self.dirs["memory"], name).read_text())
        except (OSError, ValueError):
            return None

    def kill_all(self) -> int:
        """SIGKILL every process in the cgroup; returns how many were signalled."""
        if self.version == 2:
            with contextlib.suppress(OSError):
                Path(self.dirs["pids"], "cgroup.kill").write_text("1")
        pids = self.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        return len(pids)

    def remove(self) -> bool:
        """rmdir every directory; False while processes (or zombies) still hold it."""
        done = True
        for path in dict.fromkeys(self.dirs.values()):
            try:
                os.rmdir(path)
            except FileNotFoundError:
                continue
            except OSError:
                done = False
        return done


class CgroupRoot:
    """The runtime's delegated cgroup: makes one child cgroup per sandbox."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    @property
    def version(self) -> int:
        return self.layout.version

    def describe(self) -> str:
        dirs = sorted(set(self.layout.dirs.values()))
        return f"cgroup v{self.version} at {', '.join(dirs)}"

    def create(self, name: str, limits: Limits) -> SandboxCgroup:
        if self.version == 1:
            dirs = {c: os.path.join(d, name) for c, d in self.layout.dirs.items()}
            for controller, directory in dirs.items():
                os.makedirs(directory, exist_ok=True)
                for file, value in v1_values(limits)[controller].items():
                    Path(directory, file).write_text(value)
            with contextlib.suppress(OSError):  # swap would let a sandbox exceed its limit
                memsw = Path(dirs["memory"], "memory.memsw.limit_in_bytes")
                if limits.memory_bytes is not None and memsw.exists():
                    memsw.write_text(str(limits.memory_bytes))
            return SandboxCgroup(dirs, 1)
        directory = os.path.join(self.layout.dirs["memory"], name)
        os.makedirs(directory, exist_ok=True)
        for file, value in v2_values(limits).items():
            with contextlib.suppress(FileNotFoundError):  # memory.swap.max needs swap accounting
                Path(directory, file).write_text(value)
        return SandboxCgroup(dict.fromkeys(CONTROLLERS, directory), 2)


def _writable(directory: str) -> bool:
    probe = os.path.join(directory, f"nest-probe-{os.getpid()}")
    try:
        os.mkdir(probe)
    except OSError:
        return False
    os.rmdir(probe)
    return True


def _prepare_v2(own: str) -> bool:
    """v2 forbids processes in a cgroup that delegates controllers: move ours to a leaf."""
    try:
        available = Path(own, "cgroup.controllers").read_text().split()
        if not set(CONTROLLERS) <= set(available):
            return False
        leaf = os.path.join(own, "runtime")
        os.makedirs(leaf, exist_ok=True)
        for pid in Path(own, "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                Path(leaf, "cgroup.procs").write_text(pid)
        Path(own, "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in CONTROLLERS))
    except OSError:
        return False
    return True


def discover(base: str = "nest-sandboxes") -> CgroupRoot | None:
    """This process's delegated cgroup with a `base` child for sandboxes, or None."""
    try:
        layout = own_layout(
            Path("/proc/self/cgroup").read_text(), Path("/proc/self/mountinfo").read_text()
        )
    except OSError:
        return None
    if layout is None or not all(_writable(d) for d in set(layout.dirs.values())):
        return None
    if layout.version == 2:
        own = layout.dirs["memory"]
        if not _prepare_v2(own):
            return None
        return CgroupRoot(layout)
    dirs = {c: os.path.join(d, base) for c, d in layout.dirs.items()}
    for directory in dirs.values():
        os.makedirs(directory, exist_ok=True)
    # v1 cpu needs no setup; memory hierarchy must be on so a sandbox's usage counts upwards.
    with contextlib.suppress(OSError):
        Path(dirs["memory"], "memory.use_hierarchy").write_text("1")
    return CgroupRoot(Layout(1, dirs))
