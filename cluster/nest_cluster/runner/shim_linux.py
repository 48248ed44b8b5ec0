"""The kernel side of the process shim: namespaces, mounts, cgroups and credentials, via libc.

Python 3.11 has no os.unshare, setns, mount, prctl or capset, and the shim must stay stdlib-only
(it runs as `python -I -S`, before the container's program exists), so these are thin ctypes
calls. Each setup step is one function, applied by shim.py in runc's order:

  mount namespace (private) -> [fork into the PID namespace] -> join cgroups -> cgroup
  namespace -> /proc (this PID namespace's) -> minimal /dev -> own cgroup at /sys/fs/cgroup ->
  read-only system paths, masked /proc paths -> the image's barred directories re-shown
  (security.reach) -> volume binds -> termination message file -> read-only root ->
  bounding set, groups, gid, uid, capabilities, no_new_privs -> exec

This file is loaded by path from shim.py (or imported as nest_cluster.runner.shim_linux by tests)
and imports nothing but the standard library.
"""

from __future__ import annotations

import ctypes
import os
import signal
import stat
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWPID = 0x20000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1
PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAP_VERSION_3 = 0x20080522

#: What runc hides from a non-privileged container (containerd's defaults): kernel memory and
#: keys, timers and debug files that leak other processes' activity, hardware and firmware.
MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
)  # fmt: skip
#: ... and what it makes read-only: kernel tunables, sysrq (a reboot), interrupts.
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
#: The device nodes of runc's minimal /dev, bind-mounted from the host's.
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = {
    "fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx",
}  # fmt: skip

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_void_p]  # fmt: skip


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), f"unshare({flags:#x})")


def setns(fd: int, nstype: int, what: str) -> None:
    _check(_libc.setns(fd, nstype), f"setns({what})")


def prctl(option: int, arg: int = 0, arg3: int = 0) -> None:
    # prctl is variadic: pass every argument as a full unsigned long, the unused ones as 0.
    args = [ctypes.c_ulong(a) for a in (arg, arg3, 0, 0)]
    _check(_libc.prctl(ctypes.c_int(option), *args), f"prctl({option})")


def mount(source: str | None, target: str, fstype: str | None, flags: int,
          data: str | None = None) -> None:  # fmt: skip
    err = _libc.mount(
        source.encode() if source else b"none",
        target.encode(),
        fstype.encode() if fstype else None,
        flags,
        data.encode() if data else None,
    )
    _check(err, f"mount {source or fstype or ''} on {target}")


def capabilities() -> tuple[int, int]:
    """This process's (effective, permitted) capability masks."""
    header = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capget(ctypes.byref(header), data), "capget")
    effective = data[0].effective | (data[1].effective << 32)
    return effective, data[0].permitted | (data[1].permitted << 32)


def capset(effective: int, permitted: int, inheritable: int) -> None:
    header = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_libc.capset(ctypes.byref(header), data), "capset")


# -- mounts -------------------------------------------------------------------------------------


def remount_readonly(path: str) -> None:
    """Make one mount read-only in this mount namespace, keeping its nosuid/nodev/noexec."""
    kept = os.statvfs(path).f_flag & (MS_NOSUID | MS_NODEV | MS_NOEXEC)  # ST_* == MS_* here
    mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | kept)


def _bind(source: str, target: str, read_only: bool) -> None:
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target):
            open(target, "a").close()
    mount(source, target, None, MS_BIND | MS_REC)
    if read_only:
        remount_readonly(target)


def unshare_mounts() -> None:
    """A mount namespace of our own; nothing we mount propagates back to the host."""
    unshare(CLONE_NEWNS)
    mount(None, "/", None, MS_REC | MS_PRIVATE)


def private_mounts(volumes: Iterable[Mapping[str, Any]]) -> None:
    """A private mount namespace with the volumes bind-mounted (the spec of older runners)."""
    unshare_mounts()
    for m in volumes:
        _bind(str(m["source"]), str(m["target"]), bool(m["read_only"]))


def open_sources(volumes: Sequence[Mapping[str, Any]]) -> list[int]:
    """O_PATH descriptors of the volumes' host paths, taken before /dev, /proc and /sys are
    replaced: a hostPath under them must still mean the host's."""
    return [os.open(str(m["source"]), os.O_PATH | os.O_CLOEXEC) for m in volumes]


def bind_volumes(volumes: Sequence[Mapping[str, Any]], sources: Sequence[int]) -> None:
    """The volumes at their mountPaths, after the system mounts so that a volume may cover them
    (an emptyDir at /dev/shm, say), parents first as listed."""
    for m, fd in zip(volumes, sources, strict=True):
        _bind(f"/proc/self/fd/{fd}", str(m["target"]), bool(m["read_only"]))
        os.close(fd)


def reach_image(entries: Sequence[Mapping[str, Any]]) -> None:
    """Cover each directory with a tmpfs of its mode plus group search, holding binds of only
    the host's entries named (parents first, so a nested one covers a bind of the previous)."""
    for entry in entries:
        path = str(entry["path"])
        fds = []
        for child in map(str, entry["children"]):
            try:
                fds.append((child, os.open(os.path.join(path, child), os.O_PATH | os.O_CLOEXEC)))
            except FileNotFoundError:
                continue
        try:
            options = f"mode={int(entry['mode']):o},size=1m"
            mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, options)
            for child, fd in fds:
                target = os.path.join(path, child)
                if stat.S_ISDIR(os.fstat(fd).st_mode):
                    os.mkdir(target)
                else:
                    open(target, "a").close()
                mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
        finally:
            for _, fd in fds:
                os.close(fd)


def mount_proc() -> None:
    """A procfs of the current PID namespace over /proc: only its processes are visible."""
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def minimal_dev() -> None:
    """runc's /dev: a tmpfs with the harmless devices, a pts and a shm; no disks, no host devices.

    The host's device nodes are bind-mounted through an O_PATH descriptor of the host's /dev,
    which stays reachable after the tmpfs covers the path.
    """
    host = os.open("/dev", os.O_PATH | os.O_DIRECTORY)
    try:
        mount("tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=65536k")
        for name in DEVICES:
            source = f"/proc/self/fd/{host}/{name}"
            if os.path.exists(source):
                open(f"/dev/{name}", "a").close()
                mount(source, f"/dev/{name}", None, MS_BIND)
        os.mkdir("/dev/pts")
        os.mkdir("/dev/shm")
        if os.path.isdir(f"/proc/self/fd/{host}/pts"):
            mount(f"/proc/self/fd/{host}/pts", "/dev/pts", None, MS_BIND)
        # Per container, not per pod as a kubelet's sandbox gives: a difference worth knowing.
        mount("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=65536k")
        for name, target in DEV_LINKS.items():
            os.symlink(target, f"/dev/{name}")
    finally:
        os.close(host)


def mask_paths() -> None:
    """Hide MASKED_PATHS and make READONLY_PATHS read-only (non-privileged containers)."""
    for path in MASKED_PATHS:
        if os.path.isdir(path):
            mount("tmpfs", path, "tmpfs", MS_RDONLY)
        elif os.path.exists(path):
            mount("/dev/null", path, None, MS_BIND)
    for path in READONLY_PATHS:
        if os.path.exists(path):
            mount(path, path, None, MS_BIND | MS_REC)
            remount_readonly(path)


def own_cgroup(spec: Mapping[str, Any]) -> None:
    """The container's own cgroup directories at the hierarchies' mount points, writable, with
    the limit files read-only so the container cannot raise its own limits."""
    for bind in spec["binds"]:
        mount(str(bind["source"]), str(bind["target"]), None, MS_BIND)
        for name in bind["protect"]:
            path = os.path.join(str(bind["target"]), str(name))
            mount(path, path, None, MS_BIND)
            remount_readonly(path)


def readonly_mounts(paths: Sequence[str]) -> None:
    for path in paths:
        if os.path.ismount(path):
            remount_readonly(path)


def join_cgroups(procs_files: Iterable[str]) -> None:
    """Move this process into the container's cgroups ("0" is the writer itself)."""
    for path in procs_files:
        with open(path, "w") as f:
            f.write("0")


# -- credentials -------------------------------------------------------------------------------


def drop_privileges(security: Mapping[str, Any], last_cap: int) -> None:
    """Become the container's user with its capabilities, as runc does before exec.

    Bounding set first (dropping needs CAP_SETPCAP), then groups, gid, uid with KEEPCAPS so the
    permitted set survives the uid change, then effective = permitted = the container's set,
    inheritable and ambient empty. execve recomputes from there: root keeps the bounding set,
    any other uid ends with no effective or permitted capabilities.
    """
    wanted = 0
    for cap in security["capabilities"]:
        wanted |= 1 << int(cap)
    wanted &= capabilities()[1]  # a privileged container gets what the runner itself has
    for cap in range(last_cap + 1):
        if not wanted & (1 << cap):
            prctl(PR_CAPBSET_DROP, cap)
    prctl(PR_SET_KEEPCAPS, 1)
    os.setgroups([int(g) for g in security["groups"]])
    gid, uid = int(security["gid"]), int(security["uid"])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    capset(wanted, wanted, 0)
    prctl(PR_SET_KEEPCAPS, 0)
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    if security["no_new_privs"]:
        prctl(PR_SET_NO_NEW_PRIVS, 1)
    # Set last: a change of credentials clears it. The monitor's death then kills the program.
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def read_last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 40
