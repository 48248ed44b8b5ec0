"""A caller that leaves mid-stream stops the function at once, not at its next chunk.

Before, the runtime noticed a caller had gone only when it wrote the next chunk (or at the
function's timeout), so a generator waiting between two chunks ran on and held its sandbox's
slot. Each function here yields once and then waits on something only the test ends (a file
lock it holds, or a sleep longer than the test); the caller disconnects after the first chunk.
Even a confined subprocess sandbox can show what its `finally` did: it takes an exclusive
lock on a marker file it may read, which this process then finds taken.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import aiohttp
import pytest

from sandbox.api import CreateSandbox
from sandbox.client import RuntimeClient
from tests.conformance.support import wait_for
from tests.unit.sandbox.conftest import RuntimeProcess

SOURCE = """
import asyncio, fcntl, os
from sandbox import Response

HERE = os.path.dirname(os.path.abspath(__file__))
_held = []


def mark(name):
    # Lock, never write: a confined sandbox may only read its code directory.
    f = open(os.path.join(HERE, name))
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    _held.append(f)


def wait_gate(name):
    with open(os.path.join(HERE, name)) as f:
        fcntl.flock(f, fcntl.LOCK_SH)


def slow(event, context):
    try:
        yield "first\\n"
        wait_gate("gate")
        yield "second\\n"
        wait_gate("gate2")  # never released: a stream still running gets stuck here
        yield "third\\n"
    except GeneratorExit:
        mark("exit")
        raise


async def aslow(event, context):
    async def chunks():
        try:
            yield "first\\n"
            await asyncio.sleep(3600)
            yield "second\\n"
        finally:
            mark(event.get("mark", "exit"))
    return Response(200, {"Content-Type": "text/plain"}, chunks())
"""
FILES = ("gate", "gate2", "exit", "probe")


@pytest.fixture
def code(shared_dir: Path) -> Path:
    (shared_dir / "main.py").write_text(SOURCE)
    for name in FILES:
        (shared_dir / name).touch()
        (shared_dir / name).chmod(0o644)
    return shared_dir


@contextmanager
def held(path: Path) -> Iterator[IO[str]]:
    with open(path) as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield f


def taken(path: Path) -> bool:
    """Whether another process holds an exclusive lock on `path` (the function's mark)."""
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


async def start(
    client: RuntimeClient, code: Path, isolation: str, handler: str, sandbox_id: str = ""
) -> str:
    spec = CreateSandbox.model_validate({
        "id": sandbox_id or isolation, "code_dir": str(code), "handler": f"main:{handler}",
        "isolation": isolation, "limits": {"timeout_seconds": 120, "max_duration_seconds": 600},
    })  # fmt: skip
    await client.create(spec)
    return f"/v1/sandboxes/{spec.id}/invoke"


async def read_first_and_leave(
    runtime: RuntimeProcess, http: aiohttp.ClientSession, path: str, event: object = None
) -> None:
    async with runtime.request(http, "POST", path, json=event or {}) as resp:
        assert resp.status == 200
        assert await resp.content.readuntil(b"\n") == b"first\n"
        resp.close()  # the caller leaves: its connection is closed


def free(client: RuntimeClient, sandbox_id: str) -> object:
    async def check() -> bool:
        usage = (await client.get(sandbox_id)).usage
        return usage is not None and usage.in_flight == 0

    return check


@pytest.mark.parametrize("isolation", ["namespace", "subprocess"])
async def test_an_async_stream_is_closed_when_its_caller_leaves(
    runtime: RuntimeProcess,
    client: RuntimeClient,
    http: aiohttp.ClientSession,
    code: Path,
    isolation: str,
) -> None:
    path = await start(client, code, isolation, "aslow")
    await read_first_and_leave(runtime, http, path)
    # Its sleep (an hour; the timeout is two minutes) is interrupted: nothing else would be.
    await wait_for(lambda: taken(code / "exit"), what="the generator's finally")
    await wait_for(free(client, isolation), what="the stream's slot back")  # type: ignore[arg-type]


@pytest.mark.parametrize("isolation", ["namespace", "subprocess"])
async def test_a_sync_stream_is_closed_once_its_blocked_step_returns(
    runtime: RuntimeProcess,
    client: RuntimeClient,
    http: aiohttp.ClientSession,
    code: Path,
    isolation: str,
) -> None:
    path = await start(client, code, isolation, "slow")
    probe = await start(client, code, "namespace", "aslow", "probe")
    with held(code / "gate2"), held(code / "gate") as gate:
        await read_first_and_leave(runtime, http, path)
        if isolation == "namespace":
            # A thread cannot be interrupted, but the slot is not the thread's: free now.
            await wait_for(free(client, isolation), what="the slot back")  # type: ignore[arg-type]
        # A subprocess's slot is its process's until the step returns. The runtime checks the
        # callers of all its streams at once, so once a stream whose caller left later was
        # stopped, this one was told too (its process has the cancel waiting).
        await read_first_and_leave(runtime, http, probe, {"mark": "probe"})
        await wait_for(lambda: taken(code / "probe"), what="the later stream stopped")
        assert not taken(code / "exit")
        fcntl.flock(gate, fcntl.LOCK_UN)
        # The step returns with "second": the generator is closed there (GeneratorExit),
        # never asked for "third" (it would block on gate2, which is still held).
        await wait_for(lambda: taken(code / "exit"), what="GeneratorExit in the generator")
        await wait_for(free(client, isolation), what="the stream's slot back")  # type: ignore[arg-type]
