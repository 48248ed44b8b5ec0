"""A container's credentials, resolved from the pod's and the container's `securityContext`.

The tenancy boundary of Nest rests on what a real kubelet + containerd + runc give a container:
who it runs as (runAsUser, runAsGroup, supplementalGroups, fsGroup), which capabilities it keeps
(containerd's default set, `capabilities.add/drop`, `privileged`), whether it may gain privileges
(`allowPrivilegeEscalation: false` sets no_new_privs) and whether its root filesystem is
read-only. This module decides all of that as plain functions of the pod spec, with the kubelet's
own rules and messages, so the shim that applies it (shim_linux.py, as root, before exec) only
executes a finished `Security` and the rules are unit-tested without a kernel.

The container's "image" is this host: a runAsUser without runAsGroup takes the primary group of
that uid in the host's /etc/passwd (gid 0 if none), as containerd reads the image's passwd file.
An image keeps its installation where any user reaches it; this host's may sit below a directory
like /root (0701) that every uid may search EXCEPT members of its group, whose empty group bits
win - and gid 0 is what containerd gives a uid the image does not know, so `runAsUser: 65532`
alone could not run the image's python. `reach` names such directories on the way to the
installation; the shim shows the container a copy of each (tmpfs, the host's mode plus group
search) holding only the entries on that way, bound from the host: the container reaches the
image as every other uid already does, and sees nothing else of that directory.
"""

from __future__ import annotations

import os
import pwd
import shutil
import sys
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nest_cluster.errors import RunnerError

Obj = Mapping[str, Any]

_NAMES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)  # fmt: skip
_DEFAULTS = (
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
    "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
)  # fmt: skip

#: Linux capability numbers (linux/capability.h), by the name Kubernetes uses (no CAP_ prefix).
CAPABILITIES: dict[str, int] = {name: number for number, name in enumerate(_NAMES)}
NAMES = {number: name for name, number in CAPABILITIES.items()}
#: containerd's default capabilities for a non-privileged container (what Docker gives, too).
DEFAULT_CAPABILITIES = frozenset(CAPABILITIES[n] for n in _DEFAULTS)

#: Reason of a container the kubelet refuses to create from its spec (runAsNonRoot, ...).
CONFIG_ERROR = "CreateContainerConfigError"


class ConfigError(RunnerError):
    """The container's spec forbids starting it (the kubelet's CreateContainerConfigError)."""


@dataclass(frozen=True)
class Security:
    """Everything the shim applies between fork and exec, already resolved.

    `capabilities` become the bounding set and the effective/permitted sets (inheritable and
    ambient stay empty, as containerd sets them since CVE-2022-24769); execve then leaves a
    non-root user with no effective capabilities, and root with exactly the bounding set.
    """

    uid: int = 0
    gid: int = 0
    groups: tuple[int, ...] = ()
    capabilities: frozenset[int] = DEFAULT_CAPABILITIES
    no_new_privs: bool = False
    read_only_root: bool = False
    privileged: bool = False

    def to_spec(self) -> dict[str, Any]:
        """The JSON the shim reads."""
        return {
            "uid": self.uid,
            "gid": self.gid,
            "groups": list(self.groups),
            "capabilities": sorted(self.capabilities),
            "no_new_privs": self.no_new_privs,
            "read_only_root": self.read_only_root,
            "privileged": self.privileged,
        }


def mask(capabilities: Iterable[int]) -> int:
    """The kernel's bit mask of a set of capabilities (/proc/<pid>/status CapEff etc.)."""
    bits = 0
    for number in capabilities:
        bits |= 1 << number
    return bits


def _cap_number(name: str) -> int:
    number = CAPABILITIES.get(str(name).upper())
    if number is None:
        raise ConfigError(f"unknown capability {name!r}")
    return number


def capability_set(caps: Obj | None, privileged: bool, last_cap: int) -> frozenset[int]:
    """The container's capabilities, in containerd's order of application.

    privileged: every capability. Otherwise: `add: [ALL]` grants all, `drop: [ALL]` removes all,
    then the named adds, then the named drops (so a cap both added and dropped is dropped, and
    `drop: [ALL], add: [X]` is exactly {X}).
    """
    every = frozenset(range(last_cap + 1))
    if privileged:
        return every
    add = [str(c).upper() for c in (caps or {}).get("add") or []]
    drop = [str(c).upper() for c in (caps or {}).get("drop") or []]
    result = set(DEFAULT_CAPABILITIES)
    if "ALL" in add:
        result = set(every)
    if "ALL" in drop:
        result = set()
    result |= {_cap_number(c) for c in add if c != "ALL"}
    result -= {_cap_number(c) for c in drop if c != "ALL"}
    return frozenset(c for c in result if c <= last_cap)


def effective(pod_sc: Obj, container_sc: Obj, key: str) -> Any:
    """A field both contexts have: the container's value wins over the pod's."""
    value = container_sc.get(key)
    return pod_sc.get(key) if value is None else value


def host_primary_gid(uid: int) -> int:
    """The primary group of `uid` in this host's passwd file ("the image"), else 0."""
    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        return 0


def _pod_ref(pod: Obj) -> str:
    meta = pod.get("metadata") or {}
    # The kubelet's format.Pod: name_namespace(uid).
    return f"{meta.get('name', '')}_{meta.get('namespace', '')}({meta.get('uid', '')})"


def verify_non_root(pod: Obj, container: Obj, uid: int | None) -> None:
    """The kubelet's verifyRunAsNonRoot, for an image that runs as root (the host has no USER)."""
    pod_sc = (pod.get("spec") or {}).get("securityContext") or {}
    sc = container.get("securityContext") or {}
    if not effective(pod_sc, sc, "runAsNonRoot"):
        return
    name = container.get("name", "")
    if uid is not None:
        if uid == 0:
            raise ConfigError(
                f'container\'s runAsUser breaks non-root policy (pod: "{_pod_ref(pod)}",'
                f" container: {name})"
            )
        return
    raise ConfigError(
        f'container has runAsNonRoot and image will run as root (pod: "{_pod_ref(pod)}",'
        f" container: {name})"
    )


def resolve(
    pod: Obj,
    container: Obj,
    last_cap: int,
    primary_gid: Callable[[int], int] = host_primary_gid,
) -> Security:
    """The container's `Security`, or `ConfigError` if the kubelet would refuse to create it."""
    spec = pod.get("spec") or {}
    pod_sc: Obj = spec.get("securityContext") or {}
    sc: Obj = container.get("securityContext") or {}
    run_as_user = effective(pod_sc, sc, "runAsUser")
    verify_non_root(pod, container, None if run_as_user is None else int(run_as_user))
    uid = int(run_as_user or 0)
    run_as_group = effective(pod_sc, sc, "runAsGroup")
    gid = int(run_as_group) if run_as_group is not None else primary_gid(uid)
    # The kubelet passes fsGroup first, then supplementalGroups, as the supplementary groups.
    groups: list[int] = []
    for g in [pod_sc.get("fsGroup"), *(pod_sc.get("supplementalGroups") or [])]:
        if g is not None and int(g) not in groups:
            groups.append(int(g))
    privileged = bool(sc.get("privileged"))
    escalation = sc.get("allowPrivilegeEscalation")
    return Security(
        uid=uid,
        gid=gid,
        groups=tuple(groups),
        capabilities=capability_set(sc.get("capabilities"), privileged, last_cap),
        # Kubernetes sets no_new_privs exactly when allowPrivilegeEscalation is false.
        no_new_privs=escalation is not None and not escalation,
        read_only_root=bool(sc.get("readOnlyRootFilesystem")),
        privileged=privileged,
    )


def read_last_cap(path: str = "/proc/sys/kernel/cap_last_cap") -> int:
    """The highest capability this kernel knows."""
    try:
        with open(path) as f:
            return int(f.read())
    except (OSError, ValueError):
        return max(NAMES)


def describe(capabilities: Iterable[int]) -> list[str]:
    """Capability names, for messages and tests."""
    return [NAMES.get(c, str(c)) for c in sorted(capabilities)]


# -- reaching the image ------------------------------------------------------------------------


@dataclass(frozen=True)
class Reach:
    """A directory on the way to the image that the container's group would bar it from."""

    path: str
    mode: int  # what the container sees: the host's mode plus group search
    children: tuple[str, ...]  # the only entries it shows: those on the way to the image

    def to_spec(self) -> dict[str, Any]:
        return {"path": self.path, "mode": self.mode, "children": list(self.children)}


def barred(mode: int, owner: int, group: int, uid: int, groups: Collection[int]) -> bool:
    """Search permission denied by the group bits of a directory that every other user may
    search (the kernel checks owner, then group, then other bits: the first that applies)."""
    return uid != owner and group in groups and not mode & 0o010 and bool(mode & 0o001)


def image_paths(program: str, search_path: str | None) -> list[str]:
    """Where "the image" lives on this host: this installation's interpreter and prefixes (the
    commands of deploy/ resolve there), and the program the container runs."""
    paths = [sys.prefix, sys.executable, os.path.realpath(sys.executable), sys.base_prefix]
    found = shutil.which(program, path=search_path) if "/" not in program else program
    if found:
        paths += [found, os.path.realpath(found)]
    return list(dict.fromkeys(paths))


def reach(
    paths: Iterable[str],
    uid: int,
    groups: Collection[int],
    stat: Callable[[str], os.stat_result] = os.stat,
) -> list[Reach]:
    """The directories the shim must re-show for a container of `uid` in `groups` to reach
    `paths`, parents first; empty for nearly every container (root, or not in such a group)."""
    needed: dict[str, set[str]] = {}
    modes: dict[str, int] = {}
    for path in paths:
        parts = Path(path).parts
        for depth in range(2, len(parts)):  # "/" itself cannot be re-shown
            directory = str(Path(*parts[:depth]))
            try:
                st = stat(directory)
            except OSError:
                break
            if barred(st.st_mode, st.st_uid, st.st_gid, uid, groups):
                needed.setdefault(directory, set()).add(parts[depth])
                modes[directory] = (st.st_mode & 0o7777) | 0o010
    order = sorted(needed, key=lambda d: len(Path(d).parts))
    return [Reach(d, modes[d], tuple(sorted(needed[d]))) for d in order]
