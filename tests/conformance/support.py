"""Helpers shared by the isolation and runtime tests: condition waits, example paths, cleanup.

Why: tests must never sleep to synchronise; they wait for a condition with a deadline, and they
must prove they left no process behind.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "functions"
HELLO = str(EXAMPLES / "hello")
OTHER = str(EXAMPLES / "other")
HOOKS = str(EXAMPLES / "hooks")


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 30.0, what: str = ""
) -> None:
    """Poll `predicate` (yielding to the loop between polls) until true or the deadline. The
    deadline is generous: `make test` runs these beside the cluster's tests on two cores."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {what or predicate}")
        # Yield between polls (the deadline above is what bounds us); not so often that a
        # predicate asking a runtime over HTTP takes the CPU the runtime needs to answer.
        await asyncio.sleep(0.02)


def child_processes() -> list[psutil.Process]:
    """This test process's descendants in its own session.

    A run that had to start the local cluster is the parent of its daemons too, but those run in
    sessions of their own (`nest cluster up` detaches them); what a test leaks stays in ours.
    """
    session = os.getsid(0)
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if os.getsid(proc.pid) == session:
                found.append(proc)
        except OSError:  # exited meanwhile
            continue
    return found


def reachable_by_sandboxes(path: Path) -> None:
    """Confined sandboxes run as uids of their own: let them traverse to test code (pytest makes
    its temporary directories 0700). Traverse and list only; nothing becomes writable."""
    for parent in (path, *path.parents):
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH | stat.S_IROTH)


def write_function(directory: Path, source: str, name: str = "main.py") -> str:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(source)
    return str(directory)
