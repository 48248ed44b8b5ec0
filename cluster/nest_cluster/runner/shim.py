"""Between the runner and a container's program: namespaces, mounts, cgroups, credentials, exec.

Python 3.11 has no os.unshare, and doing mounts in a `preexec_fn` is unsafe in the threaded
runner, so each container starts as `python -I -S shim.py SPEC_FD ERROR_FD`. This file is run by
path, not imported, and uses only the standard library (plus shim_linux.py next to it) so it
starts fast. It reads its spec from SPEC_FD; if anything fails before the program is exec'd it
writes `{"code", "message"}` to ERROR_FD and exits. ERROR_FD is close-on-exec, so the runner
reading EOF there knows the program itself is running.

Why a fork: after unshare(CLONE_NEWPID) only the NEXT child is PID 1 of the new namespace. So this
process stays as the container's monitor (conmon's job): it forks the child that becomes PID 1 and
execs the program, forwards SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 to it, and exits
the way the child did (same code, or killed by the same signal), so the runner's wait status is
the program's. The child dies with the monitor (PR_SET_PDEATHSIG), so SIGKILL to the monitor, or
to the process group, ends the container. Kubernetes semantics are kept on purpose: the program,
being PID 1, receives only the signals it installed a handler for (SIGKILL always), and reaping
orphans inside its namespace is its own job.

Modes: `run` (a container: a new PID namespace, or the pod's with shareProcessNamespace), `pause`
(the pod's shared PID namespace: its PID 1 only reaps, like the pause container) and `join` (an
exec probe: enter a running container's namespaces and cgroups, as `runc exec` does).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING or __name__ != "__main__":
    from nest_cluster.runner import shim_linux as linux
else:  # run by path with -I: the directory is not on sys.path, and nothing of ours may shadow
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))
    import shim_linux as linux

FORWARDED = (
    signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
)  # fmt: skip
SETUP_FAILED = 128


def _fail(err_fd: int, code: int, message: str) -> NoReturn:
    os.write(err_fd, json.dumps({"code": code, "message": message}).encode())
    os._exit(code)


def _setup_failed(err_fd: int, err: OSError) -> NoReturn:
    _fail(err_fd, SETUP_FAILED, f"setting up the container: {err.strerror or err}")


def _exec(argv: list[str], env: dict[str, str], err_fd: int) -> NoReturn:
    # Python ignores SIGPIPE and SIGXFSZ, and ignored signals survive exec: undo, like Popen does.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    try:
        os.execvpe(argv[0], argv, env)
    except FileNotFoundError:
        where = "in $PATH" if "/" not in argv[0] else "(no such file or directory)"
        _fail(err_fd, 127, f'exec: "{argv[0]}": executable file not found {where}')
    except PermissionError:
        _fail(err_fd, 126, f'exec: "{argv[0]}": permission denied')
    except OSError as err:
        _fail(err_fd, 126, f'exec: "{argv[0]}": {err.strerror or err}')


def _exit_like(status: int) -> NoReturn:
    """End this process the way the child ended, so the runner's wait status is the child's."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the child may have dumped; we do not
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # those have no handler to reset
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.waitstatus_to_exitcode(status))


def _monitor(child: int, err_fd: int) -> NoReturn:
    os.close(err_fd)  # the child's copy alone tells the runner when the program runs

    def forward(sig: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, sig)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
    try:
        _, status = os.waitpid(child, 0)  # retried after each forwarded signal (PEP 475)
    except ChildProcessError:
        os._exit(SETUP_FAILED)
    _exit_like(status)


def _fork(err_fd: int) -> int:
    signal.pthread_sigmask(signal.SIG_BLOCK, [*FORWARDED, signal.SIGCHLD])
    try:
        return os.fork()
    except OSError as err:
        _setup_failed(err_fd, err)


def _container(spec: Mapping[str, Any], err_fd: int, last_cap: int) -> NoReturn:
    """The child, PID 1 (or a member of the pod's PID namespace): finish the view, drop, exec."""
    security, cgroup, cwd = spec["security"], spec.get("cgroup"), spec.get("cwd")
    privileged = bool(security["privileged"])
    try:
        if cgroup:
            linux.join_cgroups(cgroup["procs"])
            linux.unshare(linux.CLONE_NEWCGROUP)  # rooted at the container's own cgroup
        sources = linux.open_sources(spec["mounts"])
        linux.mount_proc()
        if not privileged:
            linux.minimal_dev()
        if cgroup:
            linux.own_cgroup(cgroup)
        if not privileged:
            linux.readonly_mounts(spec["readonly"])
            linux.mask_paths()
        linux.reach_image(spec.get("reach") or [])
        linux.bind_volumes(spec["mounts"], sources)
        if cwd:
            os.makedirs(cwd, exist_ok=True)
        if security["read_only_root"]:
            linux.remount_readonly("/")
        if cwd:
            os.chdir(cwd)
        linux.drop_privileges(security, last_cap)
    except OSError as err:
        _setup_failed(err_fd, err)
    _exec(spec["argv"], spec["env"], err_fd)


def _run(spec: Mapping[str, Any], err_fd: int) -> NoReturn:
    argv, env, cwd = spec["argv"], spec["env"], spec.get("cwd")
    if not spec["isolate"]:  # not root: no namespaces, the program replaces the shim
        try:
            if cwd:
                os.makedirs(cwd, exist_ok=True)
                os.chdir(cwd)
        except OSError as err:
            _setup_failed(err_fd, err)
        _exec(argv, env, err_fd)
    last_cap = linux.read_last_cap()
    try:
        linux.unshare_mounts()
        if spec.get("pid_ns"):
            fd = os.open(spec["pid_ns"], os.O_RDONLY | os.O_CLOEXEC)
            linux.setns(fd, linux.CLONE_NEWPID, "the pod's PID namespace")
            os.close(fd)
        else:
            linux.unshare(linux.CLONE_NEWPID)
    except OSError as err:
        _setup_failed(err_fd, err)
    child = _fork(err_fd)
    if child == 0:
        _container(spec, err_fd, last_cap)
    _monitor(child, err_fd)


def _join(spec: Mapping[str, Any], err_fd: int) -> NoReturn:
    """Enter the running container of monitor `target`: its cgroup, PID and mount namespaces."""
    last_cap = linux.read_last_cap()
    try:
        with open(f"/proc/{int(spec['target'])}/task/{int(spec['target'])}/children") as f:
            init = int(f.read().split()[0])
        kinds = (("cgroup", linux.CLONE_NEWCGROUP), ("pid", linux.CLONE_NEWPID),
                 ("mnt", linux.CLONE_NEWNS))  # fmt: skip
        fds = [(os.open(f"/proc/{init}/ns/{k}", os.O_RDONLY | os.O_CLOEXEC), t, k)
               for k, t in kinds]  # fmt: skip
        for fd, nstype, kind in fds:  # mnt last: the /proc paths above are the host's
            linux.setns(fd, nstype, kind)
            os.close(fd)
    except (OSError, ValueError, IndexError) as err:
        message = err.strerror if isinstance(err, OSError) else "no such container process"
        _fail(err_fd, SETUP_FAILED, f"entering the container: {message or err}")
    child = _fork(err_fd)
    if child == 0:
        try:
            linux.join_cgroups(spec["procs"])
            os.chdir(spec.get("cwd") or "/")
            linux.drop_privileges(spec["security"], last_cap)
        except OSError as err:
            _setup_failed(err_fd, err)
        _exec(spec["argv"], spec["env"], err_fd)
    _monitor(child, err_fd)


def _pause(spec: Mapping[str, Any], err_fd: int) -> NoReturn:
    """The pod's shared PID namespace, held by a PID 1 that reaps orphans until SIGTERM."""
    try:
        linux.unshare(linux.CLONE_NEWPID)
    except OSError as err:
        _setup_failed(err_fd, err)
    child = _fork(err_fd)
    if child != 0:
        _monitor(child, err_fd)
    try:
        linux.join_cgroups(spec.get("procs") or [])
    except OSError as err:
        _setup_failed(err_fd, err)
    os.close(err_fd)
    waited = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    while True:
        if signal.sigwaitinfo(waited).si_signo != signal.SIGCHLD:
            os._exit(0)
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break


def _legacy(spec: Mapping[str, Any], err_fd: int) -> NoReturn:
    """The spec of a runner started before PID namespaces and credentials existed: a runner
    process keeps its code until it restarts, but runs this file anew for every container."""
    try:
        if spec["isolate"]:
            linux.private_mounts(spec["mounts"])
        if spec.get("cwd"):
            os.makedirs(spec["cwd"], exist_ok=True)
            os.chdir(spec["cwd"])
    except OSError as err:
        _setup_failed(err_fd, err)
    _exec(spec["argv"], spec["env"], err_fd)


def main() -> None:
    spec_fd, err_fd = int(sys.argv[1]), int(sys.argv[2])
    with os.fdopen(spec_fd) as f:
        spec = json.load(f)
    os.set_inheritable(err_fd, False)
    if "mode" not in spec:
        _legacy(spec, err_fd)
    mode = spec["mode"]
    if mode == "join":
        _join(spec, err_fd)
    if mode == "pause":
        _pause(spec, err_fd)
    _run(spec, err_fd)


if __name__ == "__main__":
    main()
