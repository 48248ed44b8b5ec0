"""Applies a `Confinement` to the forked sandbox process, in the one order that works (and holds
the one process-lifetime rule zygote and sandboxes share: die with the parent).

Why an order: joining a cgroup and setting rlimits need privileges the sandbox must not keep,
so they come first; then the identity changes (groups, gid, uid — which also clears every
capability); then `no_new_privs` and non-dumpable; then Landlock and seccomp, which the kernel
only accepts from a process that can no longer gain privileges. Every step either succeeds or
raises `ConfinementError` naming the step, so a sandbox never runs half-confined: the child
reports it as a load failure instead.

The seccomp filter is compiled to BPF by libseccomp (through `pyseccomp`, a binding
API-compatible with libseccomp's own) once, in the zygote, before it freezes; each child only
installs that program (one prctl), which is what libseccomp's own load would do after
regenerating the same program in every child. Landlock rules
are per sandbox (its own code and scratch directories), built with the `landlock` binding.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import resource
import signal
from typing import Any

from isolation.boundary import CLONE_NAMESPACE_FLAGS, DENIED_SYSCALLS, OWN_PROCESS, Confinement

PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_GET_CHILD_SUBREAPER = 37
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36

_libc = ctypes.CDLL(None, use_errno=True)


class ConfinementError(Exception):
    """A step of the boundary could not be applied; the sandbox must not run."""


def _prctl(option: int, value: int) -> None:
    if _libc.prctl(option, value, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is unavailable."""
    try:
        import landlock

        return int(landlock.landlock_abi_version())
    except (ImportError, OSError):
        return 0
    except Exception:  # the binding raises its own LandlockError on unsupported kernels
        return 0


# O_PATH descriptors of the directories every sandbox may read, opened once in the zygote and
# inherited: a child then only adds rules for them, with no lookups of its own.
_STATIC: dict[str, tuple[int, bool]] = {}  # path -> (descriptor, is a directory)
_STATIC_RULES: dict[str, Any] = {}  # path -> pointer to its Landlock rule (built by `warm`)


# The seccomp filter as BPF, compiled by `warm` in the zygote; every child installs it.
PROGRAM: bytes | None = None
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent exits."""
    # Not Linux: sandboxes then outlive a crashed runtime, as plain children would.
    with contextlib.suppress(OSError, AttributeError):
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def warm(static_paths: tuple[str, ...] = ()) -> bytes:
    """In the zygote, before it freezes: import and resolve what confining needs (a child that
    dropped its privileges may not be able to read the interpreter's files any more), open the
    paths every sandbox reads, and compile the seccomp filter; returns the BPF program."""
    import landlock.plumbing  # imports `platform` lazily otherwise

    if landlock_abi() > 0:
        _rights()
        landlock.plumbing.get_add_rule()
        landlock.plumbing.get_restrict_self()
        landlock.plumbing.get_prctl()
        for path in static_paths:
            if path == OWN_PROCESS:  # the zygote's own entry, not its children's
                continue
            with contextlib.suppress(OSError):
                _STATIC[path] = (os.open(path, os.O_PATH | os.O_CLOEXEC), os.path.isdir(path))
        rights = _rights()
        for path, (fd, is_dir) in _STATIC.items():
            # Built once here: a child passes the same rule (a pointer to it) to the kernel.
            rule = landlock.plumbing.PathBeneathAttr(
                rights["read_dir" if is_dir else "read_file"], fd
            )
            _STATIC_RULES[path] = ctypes.pointer(rule)
    global PROGRAM
    program = PROGRAM = compile_seccomp()
    _fprog(program)
    return program


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


def compile_seccomp() -> bytes:
    """The filter as the BPF program libseccomp generates for it, compiled once (zygote)."""
    filt = build_seccomp_filter()
    read, write = os.pipe()
    try:
        with os.fdopen(write, "wb", closefd=True) as sink:
            filt.export_bpf(sink)
        with os.fdopen(read, "rb", closefd=False) as source:
            return source.read()
    finally:
        os.close(read)


_FPROGS: dict[bytes, tuple[Any, _SockFprog]] = {}  # built in the zygote, shared by its children


def _fprog(program: bytes) -> _SockFprog:
    if program not in _FPROGS:
        count = len(program) // ctypes.sizeof(_SockFilter)
        filters = (_SockFilter * count).from_buffer_copy(program)
        fprog = _SockFprog(count, ctypes.cast(filters, ctypes.POINTER(_SockFilter)))
        _FPROGS[program] = (filters, fprog)
    return _FPROGS[program][1]


def load_seccomp(program: bytes) -> None:
    """Install a compiled filter on this process (no_new_privs must be set already)."""
    fprog = _fprog(program)
    if _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def build_seccomp_filter() -> Any:
    """The libseccomp filter for every sandbox: allow by default, deny DENIED_SYSCALLS."""
    import pyseccomp as seccomp

    deny = seccomp.ERRNO(errno.EPERM)
    filt = seccomp.SyscallFilter(seccomp.ALLOW)
    for name in DENIED_SYSCALLS:
        try:
            filt.add_rule(deny, name)
        except (OSError, ValueError):
            continue  # not a syscall on this architecture
    flag = 1
    while flag <= CLONE_NAMESPACE_FLAGS:
        if CLONE_NAMESPACE_FLAGS & flag:
            filt.add_rule(deny, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
        flag <<= 1
    # clone3 passes its flags in memory, out of a filter's reach: ENOSYS makes libc use clone.
    filt.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    return filt


_RIGHTS: dict[str, int] = {}  # computed once in the zygote (enum arithmetic is slow per child)


def _rights() -> dict[str, int]:
    if not _RIGHTS:
        from landlock import FSAccess

        read = FSAccess.READ_FILE | FSAccess.READ_DIR | FSAccess.EXECUTE
        _RIGHTS.update(
            read_dir=int(read),
            read_file=int(read & FSAccess.all_file()),
            write_dir=int(FSAccess.all()),
            write_file=int(FSAccess.all_file()),
        )
    return _RIGHTS


def static_paths() -> tuple[str, ...]:
    """The paths `warm` opened for every sandbox (what a child's ruleset mostly consists of)."""
    return tuple(_STATIC)


def rehearse(confinement: Confinement) -> None:
    """In the zygote: compute what `apply` would for `confinement`, changing nothing here.

    The Landlock ruleset is built and thrown away (never restricted to), the seccomp program
    is looked up, and the prctl calls are made with values that keep the zygote as it is: the
    code paths a child takes are then warm before the zygote freezes (`isolation.rehearse`).
    """
    if confinement.landlock and landlock_abi() > 0:
        ruleset = _ruleset(confinement)
        os.close(ruleset._fd)
    if PROGRAM:
        ctypes.byref(_fprog(PROGRAM))
    dumpable = _libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)
    if dumpable in (0, 1):
        _prctl(PR_SET_DUMPABLE, dumpable)
    subreaper = ctypes.c_int(0)
    got = _libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(subreaper), 0, 0, 0)
    if got == 0 and subreaper.value:
        _prctl(PR_SET_CHILD_SUBREAPER, 1)


def _landlock(confinement: Confinement) -> None:
    _ruleset(confinement).apply()


def _ruleset(confinement: Confinement) -> Any:
    """The sandbox's Landlock ruleset, with every rule added (not yet restricted to)."""
    import landlock
    from landlock.plumbing import get_add_rule

    rights = _rights()
    ruleset = landlock.Ruleset(restrict_rules=rights["write_dir"])  # every right is handled
    add_rule = get_add_rule()
    for paths, kind in ((confinement.read_paths, "read"), (confinement.write_paths, "write")):
        for path in paths:
            static = _STATIC_RULES.get(path) if kind == "read" else None
            if static is not None:
                add_rule(ruleset._fd, 1, static, 0)  # 1: LANDLOCK_RULE_PATH_BENEATH
                continue
            try:
                is_dir = os.path.isdir(path)
                allowed = rights[f"{kind}_dir" if is_dir else f"{kind}_file"]
                ruleset.allow(path, rules=allowed)
            except FileNotFoundError:
                continue  # e.g. /lib64 on a system without it
    return ruleset


def join_cgroup(confinement: Confinement) -> None:
    # Plain os calls rather than pathlib: this runs in every child, and each code path a child
    # runs for the first time costs it private pages (see `isolation.rehearse`).
    pid = str(os.getpid()).encode()
    for procs in confinement.cgroup_procs:
        fd = os.open(procs, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, pid)
        finally:
            os.close(fd)


def set_limits(confinement: Confinement) -> None:
    # RLIMIT_NPROC counts processes per real uid: with a uid of its own, that is the sandbox's
    # whole tree — a fork bomb stops at the limit even without a pids cgroup.
    nproc = confinement.max_processes
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    files = confinement.max_open_files
    resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core dumps of a tenant's memory
    if confinement.data_limit is not None:
        resource.setrlimit(resource.RLIMIT_DATA, (confinement.data_limit, confinement.data_limit))


def drop_identity(confinement: Confinement) -> None:
    """Become the sandbox's own user; a change from root to non-root clears every capability."""
    os.setgroups([])
    os.setresgid(confinement.gid, confinement.gid, confinement.gid)
    os.setresuid(confinement.uid, confinement.uid, confinement.uid)
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _prctl(PR_SET_DUMPABLE, 0)  # after setresuid, which may reset it


def apply(confinement: Confinement, seccomp_program: bytes | None) -> None:
    """Everything after the privileged setup (cgroup, rlimits): identity, Landlock, seccomp."""
    step = "dropping privileges"
    try:
        drop_identity(confinement)
        if confinement.landlock:
            step = "applying the Landlock ruleset"
            _landlock(confinement)
        if confinement.seccomp:
            step = "loading the seccomp filter"
            if not seccomp_program:
                raise ConfinementError("no compiled filter in the zygote")
            load_seccomp(seccomp_program)
    except Exception as exc:
        raise ConfinementError(f"{step}: {type(exc).__name__}: {exc}") from None


def become_subreaper() -> None:
    """Orphaned descendants reparent to the sandbox, so they stay inside its accounting."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
