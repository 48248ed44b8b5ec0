"""Streamed answers over the runtime's real data plane, in both isolation modes: the caller
reads each chunk as the function makes it, and a stream cut short reads as incomplete."""

from __future__ import annotations

import fcntl
from pathlib import Path

import aiohttp
import pytest

from sandbox.api import CreateSandbox, LimitsModel
from sandbox.client import RuntimeClient
from tests.conformance.support import wait_for
from tests.unit.sandbox.conftest import RuntimeProcess

SOURCE = """
import fcntl, os
from sandbox import Response

GATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gate")


def handler(event, context):
    def events():
        yield "data: one\\n\\n"
        with open(GATE) as f:
            fcntl.flock(f, fcntl.LOCK_SH)
        yield "data: two\\n\\n"
    return Response(200, {"Content-Type": "text/event-stream"}, events())
"""


@pytest.fixture
def code(shared_dir: Path) -> Path:
    (shared_dir / "main.py").write_text(SOURCE)
    (shared_dir / "gate").touch()
    (shared_dir / "gate").chmod(0o644)
    return shared_dir


async def _create(client: RuntimeClient, code: Path, timeout: float = 30) -> None:
    for isolation in ("namespace", "subprocess"):
        limits = LimitsModel(timeout_seconds=timeout)
        spec = CreateSandbox(
            id=isolation, code_dir=str(code), handler="main:handler", isolation=isolation,
            limits=limits,
        )  # fmt: skip
        await client.create(spec)


@pytest.mark.parametrize("isolation", ["namespace", "subprocess"])
async def test_the_caller_reads_the_first_event_before_the_second_is_made(
    runtime: RuntimeProcess,
    client: RuntimeClient,
    http: aiohttp.ClientSession,
    code: Path,
    isolation: str,
) -> None:
    await _create(client, code)
    with open(code / "gate") as gate:
        fcntl.flock(gate, fcntl.LOCK_EX)
        path = f"/v1/sandboxes/{isolation}/http/events"
        async with runtime.request(http, "GET", path) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "text/event-stream"
            assert resp.headers["Transfer-Encoding"] == "chunked"
            assert await resp.content.readuntil(b"\n\n") == b"data: one\n\n"
            fcntl.flock(gate, fcntl.LOCK_UN)
            assert await resp.read() == b"data: two\n\n"

    async def idle() -> bool:
        usage = (await client.get(isolation)).usage
        return usage is not None and usage.in_flight == 0

    await wait_for(idle, what="the stream's slot back")


@pytest.mark.parametrize("isolation", ["namespace", "subprocess"])
async def test_a_stream_cut_at_its_timeout_reads_as_incomplete(
    runtime: RuntimeProcess,
    client: RuntimeClient,
    http: aiohttp.ClientSession,
    code: Path,
    isolation: str,
) -> None:
    await _create(client, code, timeout=0.5)
    with open(code / "gate") as gate:
        fcntl.flock(gate, fcntl.LOCK_EX)
        path = f"/v1/sandboxes/{isolation}/http/events"
        async with runtime.request(http, "GET", path) as resp:
            assert await resp.content.readuntil(b"\n\n") == b"data: one\n\n"
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()  # no last chunk: not a complete answer
        fcntl.flock(gate, fcntl.LOCK_UN)
