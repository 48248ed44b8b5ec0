"""The zygote: a warm, frozen interpreter that forks one process per subprocess sandbox.

Why: starting an interpreter costs tens of milliseconds and megabytes; forking a warm one
costs about a millisecond and shares every page it does not write. The zygote is started once
as a fresh interpreter (`multiprocess.util.spawnv_passfds`: fork+exec, so it never inherits the
runtime's threads or event loop, and — unlike multiprocessing's "spawn" — never re-imports the
runtime's `__main__`), imports the runtime and the preload list, runs
`gc.freeze()` so the collector never touches — and so never copies — the inherited heap, then
waits for fork requests.

Protocol over a unix SOCK_SEQPACKET socketpair, in fixed-size binary messages, so that the
zygote's own loop runs as little Python as possible: every page it writes after a fork is a page
each of its sandboxes then holds a private copy of (`isolation.sharing`).
    runtime -> zygote   u64 key, with the child's end of a socketpair (SCM_RIGHTS)
    zygote  -> runtime  (kind, a, b): READY | FORKED key pid | EXITED pid waitstatus
The sandbox's spec never passes through the zygote: the runtime writes it into the sandbox's
own channel as its first frame (`isolation.child.spec_frame`), and the child reads it there.
The zygote reaps its children (no zombies) and reports each exit status, so the runtime learns
exit codes and signals. If the runtime dies, the zygote dies (PR_SET_PDEATHSIG), and so do the
sandboxes: a restarted runtime really runs nothing. The bytecode cache a dead runtime leaves in
the temporary directory is swept by the next one to start (`make_pycache`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import gc
import importlib
import itertools
import os
import py_compile
import select
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Sequence

from multiprocess.util import spawnv_passfds

from isolation import codecache, rehearse, sharing
from isolation.confine import die_with_parent

_PR_SET_CHILD_SUBREAPER = 36
PYCACHE_PREFIX = "nest-pycache-"
_STAGING_PREFIX = ".nest-pycache-new-"
_OWNER = ".owner"  # flock()ed by the runtime that uses the cache, for as long as it runs
_UNOWNED_AFTER_S = 600.0  # a cache without an owner file (older runtimes) is stale after this


_REQUEST = struct.Struct("=cQ")  # runtime -> zygote: FORK and its key (+ the child's socket)
_MAX_REQUEST = 1 + 4096  # or PREPARE and a code directory's path
PREPARE, FORK = b"P", b"F"
_MESSAGE = struct.Struct("=cqq")  # zygote -> runtime: kind and two numbers
READY, FORKED, EXITED = b"R", b"F", b"X"
_FD_SPACE = socket.CMSG_SPACE(struct.calcsize("i"))


def exec_entry(fd: int, preload: Sequence[str], pycache: str, confined: bool = False) -> None:
    """Entry point of the zygote interpreter; `fd` is its end of the control socket."""
    zygote_main(socket.socket(fileno=fd), preload, pycache, confined)


def received_fd(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    """The one descriptor an SCM_RIGHTS message carried; any others are closed."""
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            fds.extend(struct.unpack(f"={usable // 4}i", data[:usable]))
    for extra in fds[1:]:
        os.close(extra)
    return fds[0] if fds else None


def zygote_main(
    ctl: socket.socket, preload: Sequence[str], pycache: str, confined: bool = False
) -> None:
    die_with_parent()
    # A sandbox's orphaned descendants (once the sandbox itself is gone) come here to be reaped,
    # never to the pod's init.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    # Function code directories are typically read-only (or bytecode writing is off), so every
    # sandbox would compile its function from source: about a millisecond and 0.5 MB of private
    # memory per sandbox. A runtime-private bytecode cache makes that a one-off per function.
    sys.pycache_prefix = pycache
    sys.dont_write_bytecode = False
    from isolation import child  # the code every sandbox runs, warm before the first fork

    for name in preload:
        importlib.import_module(name)
    if confined:
        from isolation import confine
        from isolation.boundary import BoundaryConfig, read_paths_for

        confine.warm(read_paths_for(BoundaryConfig(), ()))
        # Confined sandboxes read the cache (the runtime compiles into it for them).
        os.chmod(pycache, 0o755)
        # Nothing of the runtime's environment (its pod's variables) reaches a confined function;
        # clearing it here, once, spares every child the pages a clear would dirty.
        child.reset_environment()
    child.warm_up()
    rehearse.rehearse(pycache, confined)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    poller = select.poll()
    poller.register(ctl.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    ctl_fd = ctl.fileno()
    children: set[int] = set()
    # CPython's advice for pre-fork servers: never collect in the parent (collections leave
    # holes in its pages, which the children's allocations then fill, copying each page) and
    # freeze what exists so the children's collector never writes to the inherited heap. The
    # holes there are anyway are filled (`sharing.fill_pools`).
    sharing.fill_pools()
    gc.freeze()
    ctl.send(_MESSAGE.pack(READY, 0, 0))
    while True:
        events = poller.poll()
        if any(fd == wake_r for fd, _ in events):
            os.read(wake_r, 4096)
            _reap(ctl, children)
        if not any(fd == ctl_fd for fd, _ in events):
            continue
        try:
            message, ancdata, _, _ = ctl.recvmsg(_MAX_REQUEST, _FD_SPACE)
        except OSError:
            break
        if not message:
            break  # the runtime is gone
        fd = received_fd(ancdata)
        if message[:1] == PREPARE:
            codecache.prepare(os.fsdecode(message[1:]), pycache)
            gc.freeze()  # what it loaded is shared by every child, as the rest is
        if fd is None or len(message) != _REQUEST.size or message[:1] != FORK:
            if fd is not None:
                os.close(fd)
            continue
        pid, lean = sharing.lean_fork()
        if pid == 0:
            code = 70
            try:
                if lean:
                    sharing.after_lean_fork()
                gc.enable()
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                for inherited in (ctl_fd, wake_r, wake_w):
                    os.close(inherited)
                code = child.main(fd)
            finally:
                os._exit(code)
        os.close(fd)
        children.add(pid)
        ctl.send(_MESSAGE.pack(FORKED, _REQUEST.unpack(message)[1], pid))
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    for pid in children:
        os.waitpid(pid, 0)


def cache_path(source: str, prefix: str) -> str:
    """Where an interpreter with `sys.pycache_prefix = prefix` looks for `source`'s bytecode."""
    head, tail = os.path.split(os.path.abspath(source))
    base = tail.rpartition(".")[0] or tail
    name = f"{base}.{sys.implementation.cache_tag}.pyc"
    return os.path.join(prefix, head.lstrip(os.sep), name)


def compile_tree(code_dir: str, prefix: str) -> None:
    """Compile every module of `code_dir` into the bytecode cache `prefix` (no code runs).

    Confined sandboxes cannot write the cache, so the runtime fills it for them, once per code
    directory: code directories are content-addressed and never change. A file that does not
    compile is skipped; importing it reports the error with the sandbox's own reason.
    """
    for root, dirs, files in os.walk(code_dir):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for file in files:
            if file.endswith(".py"):
                source = os.path.join(root, file)
                with contextlib.suppress(py_compile.PyCompileError, OSError, ValueError):
                    py_compile.compile(source, cache_path(source, prefix), doraise=True)
    # Readable, never writable, by the sandboxes (whatever umask the runtime runs with): this
    # code directory's part of the cache and the directories above it.
    top = os.path.join(prefix, os.path.abspath(code_dir).lstrip(os.sep))
    for root, _, _ in os.walk(top):
        os.chmod(root, 0o755)
    parent = os.path.dirname(top)
    while len(parent) > len(prefix) and parent.startswith(prefix):
        with contextlib.suppress(FileNotFoundError):  # nothing compiled: nothing was made
            os.chmod(parent, 0o755)
        parent = os.path.dirname(parent)


def make_pycache(root: str | None = None) -> tuple[str, int]:
    """A fresh bytecode cache directory, and the fd of the lock that marks it in use.

    Why the lock: a runtime that crashes never removes its cache, so every start sweeps the
    caches whose owner is gone (`sweep_pycaches`). The directory gets its final name only once
    its lock is held, so a sweep can never take a cache that is being set up.
    """
    root = root or tempfile.gettempdir()
    sweep_pycaches(root)
    staging = tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=root)
    fd = os.open(os.path.join(staging, _OWNER), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    final = os.path.join(root, PYCACHE_PREFIX + os.path.basename(staging)[len(_STAGING_PREFIX) :])
    os.rename(staging, final)
    return final, fd


def sweep_pycaches(root: str) -> list[str]:
    """Remove the bytecode caches in `root` that no running runtime owns; the paths removed."""
    removed: list[str] = []
    now = time.time()
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for entry in entries:
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not entry.is_dir(follow_symlinks=False) or info.st_uid != os.geteuid():
            continue  # never follow a link, never touch another user's directory
        if entry.name.startswith(PYCACHE_PREFIX):
            stale = _unowned(entry.path, now - info.st_mtime)
        elif entry.name.startswith(_STAGING_PREFIX):
            stale = now - info.st_mtime > _UNOWNED_AFTER_S  # died while setting it up
        else:
            continue
        if stale:
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.path)
    return removed


def _unowned(path: str, age_s: float) -> bool:
    try:
        fd = os.open(os.path.join(path, _OWNER), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return age_s > _UNOWNED_AFTER_S
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # its runtime holds the lock: in use
    finally:
        os.close(fd)  # (a lock we got goes with the fd)
    return True


def _reap(ctl: socket.socket, children: set[int]) -> None:
    """Reap every exited process: our sandboxes (reported) and adopted orphans (not)."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid in children:
            children.discard(pid)
            ctl.send(_MESSAGE.pack(EXITED, pid, status))


class Zygote:
    """The runtime's handle on the zygote process: fork requests and exit notifications."""

    def __init__(self, preload: Sequence[str] = (), confined: bool = False) -> None:
        self._preload = list(preload)
        self._confined = confined
        self._compiled: set[str] = set()  # code directories already in the bytecode cache
        self._prepared: set[str] = set()  # code directories the zygote has loaded
        self._pycache: str | None = None
        self._pycache_lock = -1
        self._keys = itertools.count(1)
        self._forks: dict[int, asyncio.Future[int]] = {}
        self._exits: dict[int, asyncio.Future[int]] = {}
        self._ready: asyncio.Future[None] | None = None
        self._lost = False
        self._sock: socket.socket | None = None
        self.pid: int | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._pycache, self._pycache_lock = make_pycache()
        code = (
            "import gc; gc.disable(); "  # no collections in the zygote: see zygote_main
            f"import sys; sys.path[:] = {sys.path!r}; from isolation.zygote import exec_entry; "
            f"exec_entry({theirs.fileno()}, {self._preload!r}, {self._pycache!r}, "
            f"{self._confined!r})"
        )
        self.pid = spawnv_passfds(
            os.fsencode(sys.executable), [sys.executable, "-c", code], [theirs.fileno()]
        )
        theirs.close()
        self._ready = loop.create_future()
        loop.add_reader(self._sock.fileno(), self._on_message)
        await self._ready

    def _on_message(self) -> None:
        assert self._sock is not None
        while True:
            try:
                message = self._sock.recv(_MESSAGE.size, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError:
                message = b""
            if len(message) != _MESSAGE.size:  # EOF (or garbage): the zygote is gone
                self._on_zygote_lost()
                return
            kind, a, b = _MESSAGE.unpack(message)
            if kind == FORKED:
                fut = self._forks.pop(a, None)
                if fut is not None and not fut.done():
                    fut.set_result(b)
            elif kind == EXITED:
                exited = self.exit_future(a)
                if not exited.done():
                    exited.set_result(b)
            elif kind == READY and self._ready is not None and not self._ready.done():
                self._ready.set_result(None)

    def _on_zygote_lost(self) -> None:
        assert self._sock is not None
        self._lost = True
        asyncio.get_running_loop().remove_reader(self._sock.fileno())
        lost = RuntimeError("the zygote process exited")
        for fork in self._forks.values():
            if not fork.done():
                fork.set_exception(lost)
        for exit_status in self._exits.values():
            if not exit_status.done():
                exit_status.set_result(signal.SIGKILL)  # its children died with it (PDEATHSIG)
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(lost)

    async def precompile(self, code_dir: str) -> None:
        """Fill the bytecode cache for `code_dir` before its first confined sandbox forks."""
        if self._pycache is None or code_dir in self._compiled:
            return
        await asyncio.to_thread(compile_tree, code_dir, self._pycache)
        self._compiled.add(code_dir)

    async def prepare(self, code_dir: str) -> None:
        """Compile `code_dir` and have the zygote load its modules for every sandbox of it
        (`isolation.codecache`); once per code directory."""
        if self._sock is None or code_dir in self._prepared:
            return
        await self.precompile(code_dir)
        path = os.fsencode(code_dir)
        if len(path) < _MAX_REQUEST and self._sock is not None:
            self._sock.send(PREPARE + path)
        self._prepared.add(code_dir)

    @property
    def pycache(self) -> str | None:
        """The bytecode cache its sandboxes share (read-only to confined ones)."""
        return self._pycache

    @property
    def lost(self) -> bool:
        """The zygote process exited (and its sandboxes with it); it will fork no more."""
        return self._lost

    def exit_future(self, pid: int) -> asyncio.Future[int]:
        """Resolves to the child's wait status (os.waitpid format) once it has exited."""
        fut = self._exits.get(pid)
        if fut is None:
            fut = self._exits[pid] = asyncio.get_running_loop().create_future()
        return fut

    def forget(self, pid: int) -> None:
        self._exits.pop(pid, None)

    async def fork(self) -> tuple[int, socket.socket]:
        """Fork a sandbox process; returns its pid and the runtime's end of its channel, on
        which the caller writes `isolation.child.spec_frame(...)` first."""
        if self._sock is None or self.pid is None:
            raise RuntimeError("zygote not started")
        ours, theirs = socket.socketpair()
        key = next(self._keys)
        fut = self._forks[key] = asyncio.get_running_loop().create_future()
        try:
            socket.send_fds(self._sock, [_REQUEST.pack(FORK, key)], [theirs.fileno()])
        except OSError:
            self._forks.pop(key, None)
            ours.close()
            raise
        finally:
            theirs.close()
        return await fut, ours

    async def close(self) -> None:
        if self._sock is None or self.pid is None:
            return
        if not self._lost:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
        self._sock.close()  # EOF: the zygote kills and reaps its children, then exits
        self._sock = None
        pid, self.pid = self.pid, None
        try:
            await asyncio.wait_for(asyncio.to_thread(os.waitpid, pid, 0), 5.0)
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            await asyncio.to_thread(os.waitpid, pid, 0)
        if self._pycache is not None:
            shutil.rmtree(self._pycache, ignore_errors=True)
            self._pycache = None
        if self._pycache_lock >= 0:
            os.close(self._pycache_lock)
            self._pycache_lock = -1
