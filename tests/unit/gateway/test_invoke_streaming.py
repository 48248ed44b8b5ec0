"""The gateway relays a streamed answer chunk by chunk, and a cut-short one as incomplete.

A fake runtime on 127.0.0.1 streams (chunked, as sandbox.runtime does) and waits on an event
the test sets between two chunks; the gateway's invoke path runs in a real aiohttp server, so
what the test reads is what a caller of the HTTP trigger reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from gateway.invoke import Invoker, Metrics, trigger_call
from gateway.kube import Kube
from nest_kube.fake import FakeApi

KEY = ("team-a", "events")


@dataclass
class Upstream:
    release: asyncio.Event = field(default_factory=asyncio.Event)
    cut: bool = False
    endless: bool = False
    closed: asyncio.Event = field(default_factory=asyncio.Event)


def fake_runtime(upstream: Upstream) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        response.headers.add("Set-Cookie", "a=1")
        response.headers.add("Set-Cookie", "b=2")
        await response.prepare(request)
        await response.write(b"data: one\n\n")
        try:
            await upstream.release.wait()
            if upstream.cut:
                assert request.transport is not None
                request.transport.close()  # as the runtime does when a stream is cut short
                return response
            await response.write(b"data: two\n\n")
            while upstream.endless:  # an event source that never ends by itself
                await response.write(b"data: more\n\n")
        except (ConnectionError, asyncio.CancelledError):
            # A write to a closed connection fails; a test server also cancels the handler.
            upstream.closed.set()
            raise
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_route("*", "/v1/sandboxes/{id}/http/{path:.*}", handle)
    return app


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[str, Upstream]]:
    upstream = Upstream()
    runtime = TestServer(fake_runtime(upstream), host="127.0.0.1")
    await runtime.start_server()
    inv = Invoker(Kube(FakeApi()), Metrics(CollectorRegistry()), 10, 1.0)
    await inv.open()
    meta = {"namespace": KEY[0], "name": KEY[1], "resourceVersion": "1"}
    inv.on_deployment("ADDED", {"metadata": meta, "spec": {"replicas": 1}})
    ready = [{"podIP": "127.0.0.1", "port": runtime.port, "uid": "u", "sandbox": "s"}]
    inv.on_endpoints("ADDED", {"metadata": meta, "status": {"ready": ready}})

    async def trigger(request: web.Request) -> web.StreamResponse:
        call = trigger_call("GET", "events", "", request.headers, b"", True)
        return await inv.invoke(KEY, call, request)

    app = web.Application()
    app.router.add_get("/events", trigger)
    # As gateway.main serves it (web.run_app): a TestServer would cancel the handler of a
    # caller that leaves (handler_cancellation=True), which the gateway does not rely on.
    front = web.AppRunner(app, handler_cancellation=False)
    await front.setup()
    site = web.TCPSite(front, "127.0.0.1", 0)
    await site.start()
    port = front.addresses[0][1]
    yield f"http://127.0.0.1:{port}/events", upstream
    await front.cleanup()
    await inv.close()
    await runtime.close()


async def test_each_chunk_is_relayed_as_it_comes(gateway: tuple[str, Upstream]) -> None:
    url, upstream = gateway
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.headers.getall("Set-Cookie") == ["a=1", "b=2"]
        assert await resp.content.readuntil(b"\n\n") == b"data: one\n\n"
        upstream.release.set()  # only now does the "function" make its second event
        assert await resp.read() == b"data: two\n\n"


async def test_a_stream_cut_upstream_reads_as_incomplete(gateway: tuple[str, Upstream]) -> None:
    url, upstream = gateway
    upstream.cut = True
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert await resp.content.readuntil(b"\n\n") == b"data: one\n\n"
        upstream.release.set()
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_a_caller_that_leaves_closes_the_upstream_stream(
    gateway: tuple[str, Upstream],
) -> None:
    url, upstream = gateway
    upstream.endless = True
    async with aiohttp.ClientSession() as http:
        resp = await http.get(url)
        assert await resp.content.readuntil(b"\n\n") == b"data: one\n\n"
        resp.close()  # the caller goes away mid-stream
    upstream.release.set()
    async with asyncio.timeout(10):
        await upstream.closed.wait()  # the runtime's writes find the connection gone


async def test_a_caller_that_leaves_between_chunks_closes_the_upstream_at_once(
    gateway: tuple[str, Upstream],
) -> None:
    url, upstream = gateway
    async with aiohttp.ClientSession() as http:
        resp = await http.get(url)
        assert await resp.content.readuntil(b"\n\n") == b"data: one\n\n"
        resp.close()  # gone while the "function" waits, and nothing more ever comes
    async with asyncio.timeout(10):
        await upstream.closed.wait()  # the upstream request was dropped: the runtime sees it
