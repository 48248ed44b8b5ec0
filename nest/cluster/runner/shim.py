"""Between fork and the container's program: private mount namespace, bind mounts, exec.

Python 3.11 has no os.unshare, and doing mounts in a `preexec_fn` is unsafe in the threaded
runner, so each container starts as `python -I -S shim.py SPEC_FD ERROR_FD`. This file is run by
path, not imported, and uses only the standard library so it starts fast. It reads its spec (argv,
env, cwd, mounts) from SPEC_FD, sets up the mounts, and execs; if anything fails before the exec it
writes `{"code", "message"}` to ERROR_FD and exits. ERROR_FD is close-on-exec, so the runner
reading EOF there knows the program itself is running.
"""

import ctypes
import json
import os
import sys

CLONE_NEWNS = 0x00020000
MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18


def _fail(err_fd: int, code: int, message: str) -> None:
    os.write(err_fd, json.dumps({"code": code, "message": message}).encode())
    os._exit(code)


def _mount(libc: ctypes.CDLL, source: str | None, target: str, flags: int) -> None:
    src = source.encode() if source else b"none"
    if libc.mount(src, target.encode(), None, flags, None) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"mount {source or ''} on {target}: {os.strerror(errno)}")


def _isolate(mounts: list[dict[str, object]]) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"unshare(CLONE_NEWNS): {os.strerror(errno)}")
    # Without this, our bind mounts would propagate back to the host's shared mounts.
    _mount(libc, None, "/", MS_REC | MS_PRIVATE)
    for m in mounts:
        source, target = str(m["source"]), str(m["target"])
        if os.path.isdir(source):
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if not os.path.exists(target):
                open(target, "a").close()
        _mount(libc, source, target, MS_BIND | MS_REC)
        if m["read_only"]:
            _mount(libc, None, target, MS_REMOUNT | MS_BIND | MS_RDONLY)


def main() -> None:
    spec_fd, err_fd = int(sys.argv[1]), int(sys.argv[2])
    with os.fdopen(spec_fd) as f:
        spec = json.load(f)
    os.set_inheritable(err_fd, False)
    argv, env = spec["argv"], spec["env"]
    try:
        if spec["isolate"]:
            _isolate(spec["mounts"])
        if spec["cwd"]:
            os.makedirs(spec["cwd"], exist_ok=True)
            os.chdir(spec["cwd"])
    except OSError as err:
        _fail(err_fd, 128, f"setting up the container: {err.strerror or err}")
    try:
        os.execvpe(argv[0], argv, env)
    except FileNotFoundError:
        where = "in $PATH" if "/" not in argv[0] else "(no such file or directory)"
        _fail(err_fd, 127, f'exec: "{argv[0]}": executable file not found {where}')
    except PermissionError:
        _fail(err_fd, 126, f'exec: "{argv[0]}": permission denied')
    except OSError as err:
        _fail(err_fd, 126, f'exec: "{argv[0]}": {err.strerror or err}')


if __name__ == "__main__":
    main()
