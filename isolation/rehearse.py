"""Rehearsals: the zygote walks, before it freezes, every code path a sandbox takes after fork.

Why: a forked sandbox shares the zygote's pages only until it writes them, and CPython 3.11
writes to far more than the objects a program changes. Every code object it runs counts its
calls and then rewrites its own bytecode (quickening, specialisation, the inline caches), and
the first run of a code path fills lazy caches (ctypes argument converters, the import
system's finders and path caches, method caches). Measured on a subprocess sandbox, the
after-fork handlers of `threading` and `random` alone dirtied about 0.5 MB per child; loading a
two-file function another 1 MB; confining it (Landlock, seccomp, rlimits) about 1 MB. When the
zygote has already run those paths often enough for their code to settle, a child only pays
for what is really its own.

What is rehearsed, and what never is:
* the after-fork handlers CPython runs in every child (`threading._after_fork`, the `random`
  reseed) — harmless in the single-threaded zygote, where they change nothing that matters;
* a whole sandbox session (`child.main`, unconfined) on a throw-away function in a temporary
  code directory: import from a new `sys.path` entry through the bytecode cache, the handler's
  host, the ready handshake, a few invocations, stop — for a sync and an async handler;
* the parts of confinement that leave the zygote as it is: parsing a `Confinement`, building
  (never applying) a Landlock ruleset over the same kinds of paths, setting each rlimit to its
  current value, preparing the seccomp program for prctl. Identity changes, `no_new_privs`,
  `restrict_self` and the filter itself are never applied here: they are the children's.

Nothing the rehearsals leave behind reaches a sandbox: the throw-away modules leave
`sys.modules`, `sys.path` and the importer cache, the working directory is restored, the
temporary directory and its bytecode are removed.
"""

from __future__ import annotations

import contextlib
import os
import random
import resource
import shutil
import socket
import sys
import tempfile
import threading
from typing import Any

from isolation import child, confine
from isolation.boundary import Confinement

# CPython 3.11 quickens a code object after 8 calls, and an instruction's specialisation can
# back off and retry a few times: a few dozen runs leave each path settled.
ROUNDS = 24
_MODULE = "_nest_rehearsal"
_SIBLING = "_nest_rehearsal_util"
_ENV = "NEST_REHEARSAL"
_SOURCE = f"""\
import json
import os

import {_SIBLING}

STATE = {{"calls": 0}}


def handler(event, context):
    STATE["calls"] += 1
    return {{"ok": True, "value": {_SIBLING}.VALUE, "event": event}}


async def async_handler(event, context):
    return {{"ok": True, "event": event}}
"""
_RLIMITS = ("RLIMIT_NPROC", "RLIMIT_NOFILE", "RLIMIT_CORE", "RLIMIT_DATA")


def after_fork_handlers(rounds: int = ROUNDS) -> None:
    """Run what CPython runs in every forked child (os.register_at_fork) in the zygote itself.

    Only when single-threaded: `threading._after_fork` forgets every other thread, which is
    exactly right in a child and exactly wrong in a process that still has them.
    """
    reset = getattr(threading, "_after_fork", None)
    for _ in range(rounds):
        if reset is not None and threading.active_count() == 1:
            reset()
        random.seed()


def _spec(code_dir: str, handler: str) -> dict[str, Any]:
    return {
        "confine": None,
        "id": "rehearsal",
        "code_dir": code_dir,
        "handler": handler,
        "function_name": "rehearsal",
        "function_version": "$LATEST",
        "memory_limit_in_mb": 128,
        "timeout_s": 30.0,
        "concurrency": 1,
        "env": {_ENV: "1"},  # setting a variable is a path of its own (putenv, encoding)
        "workdir": None,
        "layers": [],
        "interface": "nest",
        "dependency_paths": [],
    }


def _session(code_dir: str, handler: str, invocations: int = 3) -> None:
    """One sandbox's life, in-process: load, ready, a few invocations, stop."""
    ours, theirs = socket.socketpair()
    cwd, path = os.getcwd(), list(sys.path)
    try:
        # Requests and answers all fit in the socket buffers: one thread plays both ends.
        spec = child.spec_frame(_spec(code_dir, handler))
        ours.sendall(spec + child.warm_frames(invocations) + child.STOP)
        child.main(theirs.detach())
    finally:
        os.chdir(cwd)
        sys.path[:] = path
        sys.path_importer_cache.pop(code_dir, None)
        for name in (_MODULE, _SIBLING):
            sys.modules.pop(name, None)
        os.environ.pop(_ENV, None)
        ours.close()
        theirs.close()


def sandbox_sessions(pycache: str | None, rounds: int = ROUNDS) -> None:
    """Rehearse whole sandbox sessions on a throw-away function (see the module docstring)."""
    code_dir = tempfile.mkdtemp(prefix="nest-rehearsal-")
    try:
        with open(os.path.join(code_dir, f"{_MODULE}.py"), "w") as module:
            module.write(_SOURCE)
        with open(os.path.join(code_dir, f"{_SIBLING}.py"), "w") as module:
            module.write("VALUE = 42\n")
        for n in range(rounds):
            _session(code_dir, f"{_MODULE}:handler")
            if n % 4 == 0:  # served on an event loop: fewer rounds settle it (warm_up did most)
                _session(code_dir, f"{_MODULE}:async_handler")
    finally:
        shutil.rmtree(code_dir, ignore_errors=True)
        if pycache is not None:  # its bytecode, compiled into the shared cache on the way
            top = os.path.join(pycache, code_dir.lstrip(os.sep))
            shutil.rmtree(top, ignore_errors=True)


def _confinement(scratch: str) -> dict[str, object]:
    """A confinement as the runtime sends it, over paths of every kind a real one has."""
    static = [path for path in confine.static_paths() if os.path.exists(path)]
    return Confinement(
        uid=os.getuid(),
        gid=os.getgid(),
        scratch=scratch,
        read_paths=(*static, scratch),
        write_paths=(scratch, "/dev/null"),
        cgroup_procs=(),
        max_processes=64,
        max_open_files=256,
        data_limit=None,
        seccomp=True,
        landlock=True,
    ).to_json()


def confinement(rounds: int = ROUNDS) -> None:
    """Rehearse what confining a child computes, without confining the zygote."""
    scratch = tempfile.mkdtemp(prefix="nest-rehearsal-scratch-")
    try:
        raw = _confinement(scratch)
        for _ in range(rounds):
            parsed = Confinement.from_json(raw)
            confine.rehearse(parsed)
            for name in _RLIMITS:
                limit = getattr(resource, name)
                with contextlib.suppress(OSError, ValueError):
                    resource.setrlimit(limit, resource.getrlimit(limit))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def rehearse(pycache: str | None, confined: bool) -> None:
    """Everything above, in the zygote, once its imports are done and before `gc.freeze()`."""
    if confined:
        confinement()
    sandbox_sessions(pycache)
    after_fork_handlers()
