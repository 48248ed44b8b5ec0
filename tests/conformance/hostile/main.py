"""A hostile function: each operation is one attack on a neighbour, the runtime or the pod.

Used by the boundary tests (isolation backend directly) and the hostile-tenant suite on the real
cluster (the same code deployed as a Sandbox). Every attack answers what happened instead of
raising, so a test can tell "refused" (the boundary held) from "done" (it did not).
"""

import ctypes
import errno
import json
import os
import signal
import socket
import time

libc = ctypes.CDLL(None, use_errno=True)
PR_GET_DUMPABLE = 3
CLONE_NEWUSER = 0x10000000
CLONE_NEWNS = 0x00020000
PTRACE_ATTACH = 16
HELD = []


def _try(action):
    try:
        result = action()
    except OSError as exc:
        return {"ok": False, "errno": errno.errorcode.get(exc.errno or 0, str(exc.errno))}
    except Exception as exc:
        return {"ok": False, "error": type(exc).__name__, "message": str(exc)[:200]}
    return {"ok": True, "result": result}


def _syscall_result(rc):
    if rc == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return rc


def identity(event):
    status = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Uid", "Gid", "Groups", "CapEff", "CapPrm", "CapInh", "CapAmb",
                       "NoNewPrivs", "Seccomp"):  # fmt: skip
                status[key] = value.strip()
    status["dumpable"] = libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)
    status["pid"] = os.getpid()
    status["tmpdir"] = os.environ.get("TMPDIR")
    status["env"] = sorted(os.environ)
    return status


def read_file(event):
    return _try(lambda: open(event["path"], "rb").read(64).decode("latin-1"))


def write_file(event):
    def write():
        with open(event["path"], "w") as f:
            f.write(event.get("data", "pwned"))
        return event["path"]

    return _try(write)


def list_dir(event):
    return _try(lambda: sorted(os.listdir(event["path"]))[:20])


def signal_pid(event):
    return _try(lambda: os.kill(int(event["pid"]), int(event.get("signal", signal.SIGKILL))))


def ptrace_pid(event):
    return _try(lambda: _syscall_result(libc.ptrace(PTRACE_ATTACH, int(event["pid"]), 0, 0)))


def read_memory(event):
    """Read another process's memory the two ways the kernel offers: /proc/<pid>/mem and
    process_vm_readv (through ctypes, as an attacker would)."""

    def proc_mem():
        with open(f"/proc/{int(event['pid'])}/mem", "rb") as f:
            return len(f.read(16))

    class IoVec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

    def vm_readv():
        buf = ctypes.create_string_buffer(16)
        local = IoVec(ctypes.cast(buf, ctypes.c_void_p), 16)
        remote = IoVec(0x400000, 16)
        rc = libc.process_vm_readv(int(event["pid"]), ctypes.byref(local), 1,
                                   ctypes.byref(remote), 1, 0)  # fmt: skip
        return _syscall_result(rc)

    return {"proc_mem": _try(proc_mem), "process_vm_readv": _try(vm_readv)}


def unshare(event):
    flags = CLONE_NEWUSER if event.get("what", "user") == "user" else CLONE_NEWNS
    return _try(lambda: _syscall_result(libc.unshare(flags)))


def mount(event):
    return _try(lambda: _syscall_result(libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)))


def connect_unix(event):
    def connect():
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(event["path"])
        return "connected"

    return _try(connect)


def spike(event):
    """Allocate `mb` MiB and touch it (a spike that must end in OOMKilled or MemoryError)."""
    block = bytearray(int(event["mb"]) * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    HELD.append(block)
    return len(block)


def fork_bomb(event):
    """Fork until the kernel refuses; the children wait forever. Returns how many were made."""
    made = 0
    limit = int(event.get("max", 10_000))
    while made < limit:
        try:
            pid = os.fork()
        except OSError as exc:
            return {"made": made, "stopped_by": errno.errorcode.get(exc.errno or 0)}
        if pid == 0:
            signal.pause()
            os._exit(0)
        made += 1
    return {"made": made, "stopped_by": None}


def orphan_holding_memory(event):
    """Leave a grandchild behind that holds memory after the handler returned."""
    pid = os.fork()
    if pid == 0:
        if os.fork() == 0:
            block = bytearray(int(event["mb"]) * 1024 * 1024)
            for i in range(0, len(block), 4096):
                block[i] = 1
            signal.pause()
        os._exit(0)
    os.waitpid(pid, 0)
    return {"left": "a grandchild"}


def http(event):
    """An unsigned call, e.g. to the pod's runtime data plane (only the gateway may call it)."""
    import urllib.error
    import urllib.request

    method = event.get("method", "POST")
    body = b"{}" if method == "POST" else None
    request = urllib.request.Request(event["url"], data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return {"status": response.status, "body": response.read(200).decode("latin-1")}
    except urllib.error.HTTPError as err:
        return {"status": err.code, "body": err.read(200).decode("latin-1")}
    except OSError as exc:
        return {"status": None, "body": str(exc)}


def burn(event):
    """Spin for `seconds` of wall time; returns how many loop iterations it managed."""
    end = time.monotonic() + float(event["seconds"])
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


OPS = {f.__name__: f for f in (
    identity, read_file, write_file, list_dir, signal_pid, ptrace_pid, read_memory, unshare,
    mount, connect_unix, spike, fork_bomb, orphan_holding_memory, http, burn,
)}  # fmt: skip


def handler(event, context):
    return json.loads(json.dumps(OPS[event["op"]](event)))
