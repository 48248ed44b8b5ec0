"""Streamed answers on every backend: chunks reach the reader as the function makes them.

Each stream's second chunk waits behind a gate (a file lock in the function's own directory,
which even a confined sandbox may read): the test reads the first chunk while it holds the
gate, which is only possible if nothing buffers the stream, and then releases it.
"""

from __future__ import annotations

import asyncio
import fcntl
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from isolation.base import Backend, Limits, SandboxSpec
from isolation.contract import Request, Response
from isolation.streams import StreamTimeout
from tests.conformance.support import wait_for, write_function

SOURCE = """
import asyncio, fcntl, os
from sandbox import Response

GATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gate")


def wait_gate():
    with open(GATE) as f:
        fcntl.flock(f, fcntl.LOCK_SH)


def gated(event, context):
    yield "first\\n"
    wait_gate()
    yield b"second\\n"
    yield {"third": 3}


async def agated(event, context):
    yield "first\\n"
    await asyncio.to_thread(wait_gate)
    yield "second\\n"


def sse(event, context):
    def events():
        yield "data: one\\n\\n"
        wait_gate()
        yield "data: two\\n\\n"
    return Response(200, {"Content-Type": "text/event-stream", "Content-Length": "9"}, events())


def endless(event, context):
    while True:
        yield b"x" * 1024


def failing(event, context):
    yield "first\\n"
    raise ValueError("broken stream")


async def asgi(scope, receive, send):
    await receive()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream")]})
    await send({"type": "http.response.body", "body": b"data: one\\n\\n", "more_body": True})
    await asyncio.to_thread(wait_gate)
    await send({"type": "http.response.body", "body": b"data: two\\n\\n", "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def wsgi(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"first\\n"
    wait_gate()
    yield b"second\\n"
"""


@contextmanager
def held(gate: Path) -> Iterator[Any]:
    """The gate, shut: the function's next chunk waits until it is released."""
    with open(gate) as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield f


def release(gate: Any) -> None:
    fcntl.flock(gate, fcntl.LOCK_UN)


async def streamed(backend: Backend, tmp_path: Path, handler: str, **spec: Any) -> Path:
    code = write_function(tmp_path / "fn", SOURCE)
    gate = Path(code) / "gate"
    gate.touch()
    gate.chmod(0o644)
    await backend.create(SandboxSpec("s1", code, handler, **spec))
    return gate


def chunks(response: Response) -> AsyncIterator[bytes]:
    assert not isinstance(response.body, bytes), "a streamed answer"
    body: AsyncIterator[bytes] = response.body
    return body


def content_type(response: Response) -> str:
    headers = response.headers
    pairs = headers.items() if isinstance(headers, dict) else headers
    found = [v for k, v in pairs if k.lower() == "content-type"]
    assert len(found) == 1, pairs
    return found[0]


@pytest.mark.parametrize(
    ("handler", "interface", "first", "rest", "kind"),
    [
        ("main:gated", "nest", b"first\n", [b"second\n", b'{"third":3}\n'],
         "application/octet-stream"),
        ("main:agated", "nest", b"first\n", [b"second\n"], "application/octet-stream"),
        ("main:sse", "nest", b"data: one\n\n", [b"data: two\n\n"], "text/event-stream"),
        ("main:asgi", "asgi", b"data: one\n\n", [b"data: two\n\n"], "text/event-stream"),
        ("main:wsgi", "wsgi", b"first\n", [b"second\n"], "text/plain"),
    ],
)  # fmt: skip
async def test_the_first_chunk_arrives_before_the_function_makes_the_second(
    backend: Backend,
    tmp_path: Path,
    handler: str,
    interface: str,
    first: bytes,
    rest: list[bytes],
    kind: str,
) -> None:
    gate = await streamed(backend, tmp_path, handler, interface=interface)
    with held(gate) as lock:
        response = await backend.invoke("s1", Request("GET", "/"))
        assert response.status == 200
        assert content_type(response) == kind
        body = chunks(response)
        assert await body.__anext__() == first  # while the function waits at the gate
        assert backend.usage("s1").in_flight == 1  # the stream holds its slot
        release(lock)
        assert [chunk async for chunk in body] == rest
    await wait_for(lambda: backend.usage("s1").in_flight == 0, what="the slot back")


async def test_a_reader_that_leaves_stops_the_stream_and_frees_the_sandbox(
    backend: Backend, tmp_path: Path
) -> None:
    gate = await streamed(backend, tmp_path, "main:gated")
    with held(gate) as lock:
        body = chunks(await backend.invoke("s1", Request()))
        assert await body.__anext__() == b"first\n"
        close = asyncio.ensure_future(body.aclose())  # type: ignore[attr-defined]
        release(lock)  # a blocked step may have to finish before the stream can end
        await close
    await wait_for(lambda: backend.usage("s1").in_flight == 0, what="the slot back")
    again = chunks(await backend.invoke("s1", Request()))
    assert await again.__anext__() == b"first\n"  # the sandbox serves on
    await again.aclose()  # type: ignore[attr-defined]


async def test_a_function_error_mid_stream_ends_it_with_an_error(
    backend: Backend, tmp_path: Path
) -> None:
    await streamed(backend, tmp_path, "main:failing")
    body = chunks(await backend.invoke("s1", Request()))
    assert await body.__anext__() == b"first\n"
    with pytest.raises(Exception, match="broken stream"):
        await body.__anext__()
    await wait_for(lambda: backend.usage("s1").in_flight == 0, what="the slot back")


async def test_a_quiet_stream_is_cut_at_the_timeout(backend: Backend, tmp_path: Path) -> None:
    limits = Limits(timeout_s=0.5, max_duration_s=300)
    gate = await streamed(backend, tmp_path, "main:gated", limits=limits)
    with held(gate) as lock:
        body = chunks(await backend.invoke("s1", Request()))
        assert await body.__anext__() == b"first\n"
        with pytest.raises(StreamTimeout, match=r"no chunk within the 0\.5s timeout"):
            await body.__anext__()
        release(lock)
    await wait_for(lambda: backend.usage("s1").in_flight == 0, timeout=30, what="the slot back")


async def test_a_stream_that_never_ends_is_cut_at_its_maximum_duration(
    backend: Backend, tmp_path: Path
) -> None:
    limits = Limits(timeout_s=1.0, max_duration_s=1.5)
    await streamed(backend, tmp_path, "main:endless", limits=limits)
    body = chunks(await backend.invoke("s1", Request()))
    read = 0
    with pytest.raises(StreamTimeout, match=r"maximum duration of 1\.5s"):
        async for chunk in body:
            read += len(chunk)
    assert read > 1024  # it was flowing all along: the duration, not a gap, ended it
    await wait_for(lambda: backend.usage("s1").in_flight == 0, timeout=30, what="the slot back")
