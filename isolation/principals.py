"""The runtime side of the sandbox boundary: each subprocess sandbox's uid, scratch and cgroup.

Why a module: the subprocess backend decides *when* (create, each restart, remove); this one owns
*what* a sandbox is as a principal and cleans up after it. Before a fork it allocates the uid,
makes the scratch directory (0700, owned by that uid) and the cgroup with the sandbox's limits,
and returns the `Confinement` the child applies. After a generation ends it kills whatever is
left of the tree (by cgroup, else by uid: with a uid of its own, "every process of this uid" is
exactly the sandbox's tree), and on removal it removes the cgroup and the scratch directory and
returns the uid — only once no process of it is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass

import psutil

from isolation import cgroups
from isolation.base import SandboxSpec
from isolation.boundary import (
    DEVICES_READ_WRITE,
    BoundaryConfig,
    Confinement,
    UidPool,
    read_paths_for,
)
from isolation.confine import landlock_abi

log = logging.getLogger(__name__)
KILL_DEADLINE_S = 5.0


@dataclass(slots=True)
class Principal:
    """One sandbox's identity and resources on this runtime."""

    uid: int
    scratch: str
    cgroup: cgroups.SandboxCgroup | None
    oom_kills: int = 0  # the cgroup's count when the current generation started


def _uid_processes(uid: int) -> list[psutil.Process]:
    """Live processes of `uid`; zombies (dead, waiting to be reaped) are not counted."""
    found = []
    for proc in psutil.process_iter(["uids", "status"]):
        uids = proc.info.get("uids")
        if proc.info.get("status") == psutil.STATUS_ZOMBIE:
            continue
        if uids is not None and uid in (uids.real, uids.effective, uids.saved):
            found.append(proc)
    return found


def _vm_data(pid: int) -> int:
    """VmData of a process in bytes (its private data mappings), 0 if unknown."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


_ROOT_OWNER = ".owner"  # flock()ed by the runtime whose sandboxes' scratch dirs live here


def sweep_scratch(root: str) -> int:
    """Take the scratch root for this runtime and remove what an earlier one left behind.

    A runtime that crashed never removed its sandboxes' scratch directories; a new runtime runs
    no sandbox yet, so everything under a root it holds is a leftover. The lock keeps two live
    runtimes pointed at one root (a misconfiguration) from sweeping each other: the second one
    sweeps nothing and says so. Returns the lock's fd (held for the runtime's life), or -1.
    """
    fd = os.open(os.path.join(root, _ROOT_OWNER), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        log.warning("scratch root %s is in use by another runtime: not swept", root)
        return -1
    with os.scandir(root) as entries:
        leftovers = [e.path for e in entries if e.name != _ROOT_OWNER]
    for path in leftovers:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)
    if leftovers:
        log.info(
            "removed %d scratch directories an earlier runtime left in %s", len(leftovers), root
        )
    return fd


class Principals:
    """Allocates and reclaims sandbox principals for one subprocess backend."""

    def __init__(self, config: BoundaryConfig) -> None:
        self.config = config
        self._uids = UidPool(config.uids)
        self._principals: dict[str, Principal] = {}
        self.cgroup_root = cgroups.discover() if config.cgroups else None
        self.landlock_abi = landlock_abi()  # asked once: every status event reports it
        self.landlock = config.landlock and self.landlock_abi > 0
        os.makedirs(config.scratch_root, exist_ok=True)
        os.chmod(config.scratch_root, 0o711)  # sandboxes reach their own directory, list none
        self._root_lock = sweep_scratch(config.scratch_root)

    def close(self) -> None:
        """Let the next runtime sweep this root (every sandbox is removed by now)."""
        if self._root_lock >= 0:
            os.close(self._root_lock)
            self._root_lock = -1

    def describe(self) -> dict[str, str]:
        """What is enforced here, for the runtime's info and the sandbox's status."""
        limits = self.cgroup_root.describe() if self.cgroup_root else "rlimits (no writable cgroup)"
        abi = self.landlock_abi
        first, last = self.config.uids.start, self.config.uids.stop - 1
        return {
            "identity": f"a uid per sandbox from {first}-{last}",
            "seccomp": "on" if self.config.seccomp else "off",
            "landlock": f"ABI {abi}" if self.landlock else "unavailable",
            "limits": limits,
        }

    @property
    def reduced(self) -> list[str]:
        """The parts of the boundary this pod cannot enforce (empty: the full boundary)."""
        missing = []
        if not self.landlock:
            missing.append("Landlock unavailable: file access is limited by permissions only")
        if self.cgroup_root is None:
            missing.append("no writable cgroup: memory is limited per process (RLIMIT_DATA)")
        return missing

    def summary(self, sandbox_id: str) -> tuple[bool, str]:
        """(every part of the boundary holds, what it is or what is missing) for one sandbox."""
        principal = self._principals.get(sandbox_id)
        if self.reduced:
            return False, "; ".join(self.reduced)
        parts = [f"uid {principal.uid}" if principal else "own uid", "no capabilities"]
        parts += [
            "seccomp" if self.config.seccomp else "no seccomp",
            f"Landlock ABI {self.landlock_abi}",
        ]
        parts.append(f"cgroup v{self.cgroup_root.version}" if self.cgroup_root else "rlimits")
        return self.config.seccomp, ", ".join(parts)

    def prepare(
        self, spec: SandboxSpec, pycache: str | None, zygote_pid: int | None
    ) -> Confinement:
        """Make (or reuse, on a restart) the sandbox's principal; its Confinement for the fork."""
        principal = self._principals.get(spec.id)
        if principal is None:
            uid = self._uids.allocate(spec.id)
            scratch = os.path.join(self.config.scratch_root, spec.id)
            shutil.rmtree(scratch, ignore_errors=True)  # a leftover of an earlier runtime
            os.mkdir(scratch, 0o700)
            os.chown(scratch, uid, uid)
            cgroup = None
            if self.cgroup_root is not None:
                memory = spec.limits.memory_mb * 1024 * 1024 if spec.limits.memory_mb else None
                limits = cgroups.Limits(memory, self.config.max_processes, spec.limits.cpu_millis)
                cgroup = self.cgroup_root.create(f"sbx-{spec.id}", limits)
            principal = self._principals[spec.id] = Principal(uid, scratch, cgroup)
        if principal.cgroup is not None:
            principal.oom_kills = principal.cgroup.oom_kills()
        data_limit = None
        if (principal.cgroup is None) and spec.limits.memory_mb:
            # Without a memory cgroup: bound each process's private data at what it inherits
            # from the zygote plus the limit, so a spike fails with MemoryError at once.
            inherited = _vm_data(zygote_pid) if zygote_pid else 0
            data_limit = inherited + spec.limits.memory_mb * 1024 * 1024
        code_dirs = [os.path.abspath(spec.code_dir)]
        code_dirs += [os.path.abspath(path) for path in spec.dependency_paths]  # read-only
        if pycache:
            code_dirs.append(pycache)
        if spec.workdir:
            code_dirs.append(os.path.abspath(spec.workdir))
        return Confinement(
            uid=principal.uid,
            gid=principal.uid,
            scratch=principal.scratch,
            read_paths=read_paths_for(self.config, code_dirs),
            write_paths=(principal.scratch, *DEVICES_READ_WRITE),
            cgroup_procs=tuple(principal.cgroup.procs_files) if principal.cgroup else (),
            max_processes=self.config.max_processes,
            max_open_files=self.config.max_open_files,
            data_limit=data_limit,
            seccomp=self.config.seccomp,
            landlock=self.landlock,
        )

    def oom_killed(self, sandbox_id: str) -> bool:
        """Did the kernel's OOM killer act in this sandbox's cgroup during this generation?"""
        principal = self._principals.get(sandbox_id)
        if principal is None or principal.cgroup is None:
            return False
        return principal.cgroup.oom_kills() > principal.oom_kills

    def memory_bytes(self, sandbox_id: str) -> int | None:
        principal = self._principals.get(sandbox_id)
        return principal.cgroup.memory_bytes() if principal and principal.cgroup else None

    def tree_memory(self, sandbox_id: str) -> int:
        """Summed USS of every process of the sandbox (the rlimit fallback's tree accounting)."""
        principal = self._principals.get(sandbox_id)
        if principal is None:
            return 0
        total = 0
        for proc in _uid_processes(principal.uid):
            with contextlib.suppress(psutil.Error):
                total += proc.memory_full_info().uss
        return total

    def _kill_tree(self, principal: Principal) -> bool:
        """SIGKILL everything of the sandbox, until nothing is left; False past the deadline."""
        deadline = time.monotonic() + KILL_DEADLINE_S
        while time.monotonic() < deadline:
            if principal.cgroup is not None:
                left = principal.cgroup.kill_all()
            else:
                procs = _uid_processes(principal.uid)
                for proc in procs:
                    with contextlib.suppress(psutil.Error):
                        proc.send_signal(signal.SIGKILL)
                left = len([p for p in procs if _alive(p)])
            if not left and not _uid_processes(principal.uid):
                return True
            time.sleep(0.01)  # a killed process takes a moment to exit; bounded by the deadline
        return False

    async def end_generation(self, sandbox_id: str) -> None:
        """The sandbox's main process exited: nothing of its tree may outlive it."""
        principal = self._principals.get(sandbox_id)
        if principal is not None:
            await asyncio.to_thread(self._kill_tree, principal)

    async def release(self, sandbox_id: str) -> None:
        """The sandbox is removed: free its cgroup, scratch and (once provably unused) its uid."""
        principal = self._principals.pop(sandbox_id, None)
        if principal is None:
            return
        clean = await asyncio.to_thread(self._kill_tree, principal)
        if principal.cgroup is not None:
            deadline = time.monotonic() + KILL_DEADLINE_S
            while not principal.cgroup.remove() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)  # zombies leave the cgroup once reaped
        await asyncio.to_thread(shutil.rmtree, principal.scratch, True)
        if clean:
            self._uids.release(sandbox_id)
        else:
            self._uids.retire(sandbox_id)
            log.error(
                "sandbox %s: processes of uid %d survived; uid retired", sandbox_id, principal.uid
            )


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
