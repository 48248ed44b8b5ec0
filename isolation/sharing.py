"""Keeping a sandbox's pages shared with its zygote: a lean fork, and no holes to fill.

Why: a forked sandbox's private memory is every page either side writes after the fork. Two
things CPython does by default write pages for no use of ours, measured on a subprocess sandbox:

* `os.fork()` runs CPython's after-fork machinery in the child: the handlers modules register
  with `os.register_at_fork` (`threading` walks every thread object it ever knew, `logging`
  every handler lock, `random` reseeds) — about 0.45 MB of private pages per child, of which
  only the reseed matters in a zygote that is single-threaded by construction. `lean_fork`
  calls libc's fork directly (holding the GIL) and the child then does the one thing that
  matters (`after_lean_fork`: a fresh `random` state, so no two sandboxes share one), and the
  rest only when the zygote is not single-threaded after all (then `os.fork` is used).
* pymalloc serves a child's first allocations from the holes in the zygote's partly used
  pools, so each small object a child makes copies a page shared with frozen objects.
  `fill_pools` fills those holes in the zygote, once, before it freezes: a child's
  allocations then land in fresh pools of its own, densely.

Neither changes what a sandbox can do: its boundary (uid, Landlock, seccomp, limits) is applied
after the fork exactly as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import sys
import tempfile
import threading
from collections.abc import Callable

_KEPT: list[list[object]] = []  # the objects filling the pools' holes, never freed


def _libc_fork() -> Callable[[], int] | None:
    try:
        # PyDLL, not CDLL: the GIL stays held across the call, so the child starts holding it.
        fork = ctypes.PyDLL(None, use_errno=True).fork
    except (OSError, AttributeError):
        return None
    fork.restype = ctypes.c_int
    fork.argtypes = []
    return fork


_FORK = _libc_fork()


def single_threaded() -> bool:
    """Only this thread, in Python's view and in the kernel's (native threads count too)."""
    if threading.active_count() != 1:
        return False
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def lean_fork() -> tuple[int, bool]:
    """Fork; returns (pid, lean). Lean means the child must call `after_lean_fork` first."""
    if _FORK is None or not single_threaded():
        return os.fork(), False
    pid = _FORK()
    if pid < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return pid, True


def after_lean_fork() -> None:
    """In the child of a lean fork: what of CPython's after-fork work a sandbox needs.

    The `random` module's hidden state would otherwise be the zygote's in every sandbox (one
    tenant could predict another's "random" numbers). Locks need no reset: nothing else ran in
    the zygote, so nothing held one.
    """
    random.seed()


def _available_blocks() -> dict[int, int]:
    """Free blocks in pymalloc's used pools, per size class (`sys._debugmallocstats`)."""
    stats = getattr(sys, "_debugmallocstats", None)
    if stats is None:
        return {}
    with tempfile.TemporaryFile("w+") as sink:
        saved = os.dup(2)
        try:
            sys.stderr.flush()
            os.dup2(sink.fileno(), 2)
            stats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        sink.seek(0)
        return parse_available(sink.read())


def parse_available(text: str) -> dict[int, int]:
    """The size-class table of `sys._debugmallocstats` output: block size -> avail blocks."""
    available: dict[int, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 5 and all(part.isdigit() for part in parts):
            available[int(parts[1])] = int(parts[4])
    return available


def filler(size: int) -> object | None:
    """A new object that takes a pymalloc block of exactly `size` bytes; None if none does."""
    if size == 16:
        return object()
    if size in (24, 32):
        return float(size) + 0.5  # 24 bytes: the 24-byte class, or the 32-byte one
    if size >= 48:
        # A bytes object takes 33 bytes plus its length (past the cached 0- and 1-byte ones).
        return bytes(size - 33)
    return None


def fill_pools(rounds: int = 2) -> int:
    """Fill the free blocks of pymalloc's used pools; returns how many objects that took."""
    total = 0
    with contextlib.suppress(OSError, ValueError):
        for _ in range(rounds):
            available = _available_blocks()
            count = sum(available.values())
            if count == 0:
                break
            kept: list[object] = [None] * count  # allocated first: its own block is not a hole
            index = 0
            for size, free in sorted(available.items(), reverse=True):
                if filler(size) is None:
                    continue
                for _ in range(free):
                    kept[index] = filler(size)
                    index += 1
            _KEPT.append(kept)
            total += count
    return total
