"""The sandbox boundary as data: who a subprocess sandbox runs as and what it may do.

Why: co-located functions belong to different tenants, so each subprocess sandbox is its own
principal — a uid/gid of its own, no supplementary groups, no capabilities, `no_new_privs`, not
dumpable — fenced by a seccomp filter (syscalls functions never need), a Landlock ruleset (read
its own code and the interpreter, write only its own scratch directory) and limits that include
its children (a cgroup, else rlimits). This module decides all of that as plain values the runtime
computes before the fork; `isolation.confine` applies them in the child; `isolation.cgroups`
holds the kernel-side limits. Nothing here touches the process.

The deny list follows Docker's and Kubernetes' RuntimeDefault profiles, narrowed to what a
function in a shared pod must never do: observe or write other processes, change the system, or
leave its namespaces. Denied calls fail with EPERM, except `clone3` (ENOSYS, so libc falls back to
`clone`, whose namespace flags the filter can inspect).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import random
import sys
import sysconfig
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# Syscalls a function never needs, with why. The list is documented in docs/security.md and each
# group is exercised by tests/unit/isolation/test_boundary.py.
DENIED_SYSCALLS: dict[str, str] = {
    # reading or writing other processes
    "ptrace": "debugging other processes", "process_vm_readv": "reading another process",
    "process_vm_writev": "writing another process", "kcmp": "comparing other processes' state",
    "pidfd_getfd": "stealing another process's file descriptors",
    # leaving the sandbox's namespaces or filesystem view
    "unshare": "new namespaces", "setns": "joining namespaces", "mount": "mounting",
    "umount2": "unmounting", "pivot_root": "changing the root", "chroot": "changing the root",
    "open_by_handle_at": "opening files by handle (escapes path checks)",
    "name_to_handle_at": "file handles", "fsopen": "new mount API", "fsmount": "new mount API",
    "fsconfig": "new mount API", "fspick": "new mount API", "move_mount": "new mount API",
    "open_tree": "new mount API", "mount_setattr": "new mount API",
    # kernel attack surface a function has no use for
    "bpf": "eBPF programs", "perf_event_open": "performance counters (side channels)",
    "userfaultfd": "page-fault handling (exploit primitive)", "io_uring_setup": "io_uring",
    "io_uring_enter": "io_uring", "io_uring_register": "io_uring",
    "keyctl": "kernel keyrings", "add_key": "kernel keyrings", "request_key": "kernel keyrings",
    "lookup_dcookie": "profiling", "fanotify_init": "watching other processes' file access",
    "personality": "execution domains (disables ASLR)", "syslog": "the kernel log",
    # changing the machine
    "kexec_load": "loading a kernel", "kexec_file_load": "loading a kernel",
    "init_module": "kernel modules", "finit_module": "kernel modules",
    "delete_module": "kernel modules", "reboot": "rebooting", "swapon": "swap", "swapoff": "swap",
    "settimeofday": "setting the clock", "clock_settime": "setting the clock",
    "clock_adjtime": "setting the clock", "adjtimex": "setting the clock",
    "acct": "process accounting", "quotactl": "disk quotas", "iopl": "I/O ports",
    "ioperm": "I/O ports", "vhangup": "terminals", "uselib": "legacy loader",
    "sethostname": "the host name", "setdomainname": "the domain name",
    "mbind": "memory placement", "migrate_pages": "moving other processes' memory",
    "move_pages": "moving other processes' memory", "set_mempolicy": "memory placement",
}  # fmt: skip

# clone(2) flags that create namespaces: refused, so a sandbox cannot build its own user namespace
# (where it would be root again) or hide from the runtime's process accounting.
CLONE_NAMESPACE_FLAGS = (
    0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
)

# Readable (never writable) by every sandbox: the system's libraries and configuration. /proc,
# /sys, /var, /tmp, /run, /home and /root are not here: nothing of another sandbox, the runtime or
# the sidecar is reachable by path.
SYSTEM_READ_PATHS = ("/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc")
# Its own /proc entry only (opened in the child, "/proc/self" resolves to the child's pid).
OWN_PROCESS = "/proc/self"
DEVICES_READ_WRITE = ("/dev/null", "/dev/zero", "/dev/full")
DEVICES_READ = ("/dev/urandom", "/dev/random")

DEFAULT_UIDS = range(200_000, 300_000)
DEFAULT_MAX_PROCESSES = 64
DEFAULT_MAX_OPEN_FILES = 1024


def interpreter_paths(packages: Sequence[str] = ("isolation", "sandbox")) -> tuple[str, ...]:
    """The interpreter's own files and installed packages, and the directories of `packages`
    (what the zygote preloads: a sandbox may import more of them later). Not `sys.path` as a
    whole: it may hold a checkout or a working directory full of other people's code."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    paths.update(p for p in sysconfig.get_paths().values() if p)
    for name in packages:
        with contextlib.suppress(ImportError, ValueError):
            spec = importlib.util.find_spec(name)
            if spec is not None and spec.submodule_search_locations:
                paths.update(spec.submodule_search_locations)
            elif spec is not None and spec.origin:
                paths.add(os.path.dirname(spec.origin))
    return tuple(sorted(p for p in paths if os.path.isabs(p) and os.path.exists(p)))


@dataclass(frozen=True, slots=True)
class BoundaryConfig:
    """How the runtime confines subprocess sandboxes; `enforced=False` turns it all off."""

    uids: range = DEFAULT_UIDS
    scratch_root: str = "/tmp/nest-scratch"
    max_processes: int = DEFAULT_MAX_PROCESSES
    max_open_files: int = DEFAULT_MAX_OPEN_FILES
    seccomp: bool = True
    landlock: bool = True
    cgroups: bool = True  # use a delegated cgroup when one is writable
    read_paths: tuple[str, ...] = field(default_factory=interpreter_paths)


@dataclass(frozen=True, slots=True)
class Confinement:
    """What the child applies to itself between fork and loading the function (JSON-able)."""

    uid: int
    gid: int
    scratch: str
    read_paths: tuple[str, ...]
    write_paths: tuple[str, ...]
    cgroup_procs: tuple[str, ...]  # join these before dropping privileges
    max_processes: int
    max_open_files: int
    data_limit: int | None  # RLIMIT_DATA in bytes; only without a memory cgroup
    seccomp: bool
    landlock: bool

    def to_json(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_json(cls, raw: dict[str, object]) -> Confinement:
        fields = dict(raw)
        for name in ("read_paths", "write_paths", "cgroup_procs"):
            fields[name] = tuple(fields[name])  # type: ignore[arg-type]
        return cls(**fields)  # type: ignore[arg-type]


def read_paths_for(
    config: BoundaryConfig, code_dirs: Iterable[str], extra: Sequence[str] = ()
) -> tuple[str, ...]:
    """Pure: every directory the sandbox may read, deduplicated, order kept."""
    wanted = [
        *config.read_paths, *SYSTEM_READ_PATHS, OWN_PROCESS, *DEVICES_READ, *code_dirs, *extra
    ]  # fmt: skip
    return covering(wanted)


def covering(paths: Iterable[str]) -> tuple[str, ...]:
    """Pure: `paths` without those beneath another one (a rule on a directory covers its tree),
    first occurrence kept: fewer Landlock rules, the same access."""
    unique = list(dict.fromkeys(os.path.normpath(p) for p in paths))
    kept = []
    for path in unique:
        if not any(path != other and path.startswith(other.rstrip("/") + "/") for other in unique):
            kept.append(path)
    return tuple(kept)


class UidPool:
    """Hands out one uid per sandbox from a range; a uid returns only once its processes are gone.

    Why never reuse early: a process left behind by a sandbox (one that escaped a kill, a zombie)
    would be the next sandbox's process — same uid, same rights over its files and signals.
    `release` is called only after the runtime saw the uid own no process.

    Why a random free uid rather than the lowest: every pool pod is configured with the same
    range, and pods that share a process table (the local node runs pods without PID
    namespaces) would otherwise all hand out 200000 first, to different tenants. A random pick
    makes two pods' live sandboxes meet on a uid rarely instead of always; it is a mitigation,
    not a partition (per-pod ranges would be: docs/security.md).
    """

    def __init__(self, uids: range, pick: random.Random | None = None) -> None:
        self._free = list(uids)
        self._used: dict[str, int] = {}
        self._pick = pick or random.SystemRandom()

    def allocate(self, owner: str) -> int:
        if owner in self._used:
            return self._used[owner]
        if not self._free:
            raise RuntimeError("no free sandbox uid left in the configured range")
        index = self._pick.randrange(len(self._free))
        self._free[index], self._free[-1] = self._free[-1], self._free[index]
        uid = self._used[owner] = self._free.pop()
        return uid

    def release(self, owner: str) -> None:
        uid = self._used.pop(owner, None)
        if uid is not None:
            self._free.append(uid)

    def retire(self, owner: str) -> None:
        """Never hand `owner`'s uid out again (a process of it may still exist)."""
        self._used.pop(owner, None)

    @property
    def in_use(self) -> int:
        return len(self._used)


def parse_uid_range(text: str) -> range:
    """`200000-299999` (inclusive) as a range; raises ValueError naming the problem."""
    start, sep, end = text.partition("-")
    if not sep:
        raise ValueError(f"uid range {text!r}: expected FIRST-LAST")
    first, last = int(start), int(end)
    if first < 1 or last < first:
        raise ValueError(f"uid range {text!r}: need 0 < FIRST <= LAST")
    return range(first, last + 1)
